"""The intervention vocabulary is one table: a knob added there is seen by validation, the CLI, the trainer
and the dashboard, and every config key the table names is a real TrainConfig field."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from midflight import logbook
from midflight.app import data as app_data
from midflight.app import forms as _forms  # noqa: F401  (imported before any test adds a knob: nothing may copy the table at import)
from midflight.logbook import cli
from midflight.logbook.record import interventions as iv
from midflight.logbook.record.interventions import Knob, Param
from midflight.trainer import cli as trainer_cli
from midflight.trainer.config import TrainConfig, set_value
from midflight.trainer.trainer import Trainer, set_knob

DROPOUT = Knob(
    "Set the dropout",
    (Param("p", float, ("a number in (0, 1)", lambda v: isinstance(v, float) and 0 < v < 1), "dropout p", 0.1, 0.0),),
    "model.dropout",
    "--dropout",
    "P",
    "new residual and attention dropout",
    rewind_change=True,
)


@pytest.fixture
def dropout(monkeypatch):
    """The one edit a new knob takes: an entry in the table."""
    monkeypatch.setitem(iv.VOCABULARY, "dropout", DROPOUT)


@pytest.fixture
def run_dir(tmp_path):
    with logbook.init(tmp_path / "run") as run:
        run.log({"loss": 1.0}, step=1)
    return tmp_path / "run"


def _requests(run_dir) -> list[dict]:
    path = run_dir / "interventions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ----------------------------------------------------------------- today's wire format, unchanged
def test_the_wire_vocabulary_is_unchanged():
    assert {a: [p.name for p in k.params] for a, k in iv.actions().items()} == {
        "lr_multiplier": ["factor"],
        "lr_peak": ["lr"],
        "clip": ["max_norm"],
        "skip_batches": ["n"],
        "loss_scale_floor": ["floor"],
        "checkpoint_now": [],
        "rewind": ["checkpoint_step", "changes"],
        "stop": [],
    }
    assert set(iv.rewind_changes()) == {
        "lr_multiplier",
        "lr_peak",
        "clip",
        "loss_scale_floor",
        "skip_batches",
        "beta2",
        "weight_decay",
    }
    with pytest.raises(ValueError, match="unknown intervention 'beta2'"):
        iv.validate("beta2", {"beta2": 0.9})  # rewind-only, as before
    with pytest.raises(ValueError, match="beta2 must be a number in"):
        iv.validate("rewind", {"checkpoint_step": 0, "changes": {"beta2": 1.5}})
    assert iv.validate("rewind", {"checkpoint_step": 0}) == {"checkpoint_step": 0}  # changes stay optional


def test_every_config_key_is_a_real_trainconfig_field():
    """A typo in the table (optim.clipp) or a type that does not match the field fails here."""
    for name, knob in iv.VOCABULARY.items():
        if knob.config_key is None:
            continue
        *section, leaf = knob.config_key.split(".")
        owner = TrainConfig()
        for part in section:
            owner = getattr(owner, part, None)
        assert dataclasses.is_dataclass(owner), f"{name}: no config section {'.'.join(section)!r}"
        fields = {f.name: f for f in dataclasses.fields(owner)}
        assert leaf in fields, f"{name}: {knob.config_key!r} is not a TrainConfig field"
        assert type(getattr(owner, leaf)) is knob.params[0].type, f"{name}: {knob.config_key} is typed otherwise"
        cfg = TrainConfig()
        set_value(cfg, knob.config_key, knob.params[0].default)  # the dashboard's default is a settable value


def test_every_entry_is_complete_and_flags_are_distinct():
    flags = [k.flag for k in iv.VOCABULARY.values()]
    assert len(set(flags)) == len(flags) and all(f.startswith("--") for f in flags)
    for name, knob in iv.VOCABULARY.items():
        assert knob.label, name
        for p in knob.params:
            assert p.type in (int, float, dict), (name, p.name)
            if p.type is not dict and (knob.action or knob.rewind_change) and name != iv.REWIND:
                assert p.ok(p.default), f"{name}: the dashboard's default {p.default!r} fails its own check"
        if knob.rewind_change:
            assert knob.params and knob.params[0].type in (int, float), name


# ----------------------------------------------------------------- one edit, seen everywhere
def test_a_new_knob_is_validated(dropout):
    assert iv.validate("dropout", {"p": 0.2}) == {"p": 0.2}
    with pytest.raises(ValueError, match=r"dropout: p must be a number in \(0, 1\)"):
        iv.validate("dropout", {"p": 1.5})
    with pytest.raises(ValueError, match="dropout needs p"):
        iv.validate("dropout", {})
    assert iv.validate("rewind", {"checkpoint_step": 3, "changes": {"dropout": 0.05}})["changes"] == {"dropout": 0.05}


def test_a_new_knob_is_a_cli_flag(dropout, run_dir, capsys):
    assert cli.main(["intervene", str(run_dir), "--dropout", "0.1", "--note", "regularize"]) == 0
    (req,) = _requests(run_dir)
    assert (req["op"], req["action"], req["params"], req["note"]) == ("request", "dropout", {"p": 0.1}, "regularize")
    assert cli.main(["intervene", str(run_dir), "--rewind", "1", "--dropout", "0.2", "--note", "back"]) == 0
    assert _requests(run_dir)[-1]["params"] == {"checkpoint_step": 1, "changes": {"dropout": 0.2}}
    capsys.readouterr()
    assert cli.main(["intervene", str(run_dir), "--dropout", "2", "--note", "x"]) == 2
    assert "error: dropout: p must be a number in (0, 1)" in capsys.readouterr().err
    assert len(_requests(run_dir)) == 2


def test_rewind_only_flags_need_rewind(run_dir, capsys):
    assert cli.main(["intervene", str(run_dir), "--weight-decay", "0", "--note", "x"]) == 2
    assert capsys.readouterr().err.strip() == "error: --weight-decay only applies with --rewind STEP"
    args = ["--rewind", "1", "--beta2", "0.98", "--weight-decay", "0.05", "--note", "OPT restart"]
    assert cli.main(["intervene", str(run_dir), *args]) == 0
    assert _requests(run_dir)[0]["params"] == {
        "checkpoint_step": 1,
        "changes": {"beta2": 0.98, "weight_decay": 0.05},
    }


def test_a_new_knob_is_applied_by_the_trainer(dropout):
    cfg = TrainConfig()
    assert set_knob(cfg, "dropout", 0.25) == "model.dropout" and cfg.model.dropout == 0.25
    with pytest.raises(ValueError, match="sets no config key"):
        set_knob(cfg, "skip_batches", 3)
    # the live path: a request for the new action, through Trainer._control and ._set_knob
    answers = []
    t = SimpleNamespace(
        cfg=cfg,
        changed={},
        step=5,
        poll_every=1,
        main=False,
        channel=None,
        p=SimpleNamespace(optimizer=SimpleNamespace(param_groups=[]), precision=None),
    )
    t._set_knob = lambda name, value: Trainer._set_knob(t, name, value)
    t._answer = lambda req, **kw: answers.append(kw)
    t._decide = lambda _: [({"id": "a", "action": "dropout", "params": {"p": 0.05}}, None)]
    assert Trainer._control(t, 5) is None
    assert cfg.model.dropout == 0.05 and t.changed == {"model.dropout": 0.05}
    assert answers == [{"applied": True, "step": 5, "detail": "model.dropout = 0.05"}]
    # and on the way back from a rewind (`python -m midflight.trainer --resume --change dropout=0.3`)
    assert trainer_cli.parse(["--resume", "--change", "dropout=0.3"]).changes == {"dropout": 0.3}


def _form():
    from types import SimpleNamespace

    from midflight.app import forms

    forms.intervention_form(SimpleNamespace(live=True, src=None, k=None, run="r"), "t")


def test_a_new_knob_is_offered_by_the_dashboard(dropout, monkeypatch):
    monkeypatch.setattr(app_data, "events", lambda *a, **k: pd.DataFrame({"step": [20, 40]}))
    at = AppTest.from_function(_form, default_timeout=30).run()
    assert not at.exception
    assert "Set the dropout" in at.selectbox(key="t:action").options
    at.selectbox(key="t:action").set_value("dropout").run()
    assert not at.exception
    (box,) = [w for w in at.number_input if w.key == "t:dropout"]
    assert (box.label, box.value) == ("dropout p", 0.1)
    box.set_value(0.2)
    at.button(key="t:review_btn").click().run()
    assert at.session_state["t:review"] == {"action": "dropout", "params": {"p": 0.2}, "note": None}
    assert "Set the dropout" in at.warning[0].value

    at = AppTest.from_function(_form, default_timeout=30).run()
    at.selectbox(key="t:action").set_value("rewind").run()
    assert not at.exception
    then = {w.key: w.label for w in at.number_input}
    assert then["t:then:dropout"] == "then dropout p"
    assert {f"t:then:{name}" for name in iv.rewind_changes()} == set(then)  # every rewind change, from the table
    at.number_input(key="t:then:dropout").set_value(0.3)
    at.number_input(key="t:then:skip_batches").set_value(7)
    at.button(key="t:review_btn").click().run()
    assert at.session_state["t:review"]["params"] == {
        "checkpoint_step": 40,
        "changes": {"skip_batches": 7, "dropout": 0.3},
    }


@pytest.mark.parametrize(
    "action, params",
    [  # the dashboard's defaults, as tests/app/test_pages.py and the browser e2e test expect them
        ("lr_multiplier", {"factor": 0.5}),
        ("lr_peak", {"lr": 3e-4}),
        ("clip", {"max_norm": 0.3}),
        ("skip_batches", {"n": 10}),
        ("loss_scale_floor", {"floor": 0.25}),
        ("checkpoint_now", {}),
        ("stop", {}),
    ],
)
def test_the_dashboard_form_keeps_its_defaults(action, params):
    at = AppTest.from_function(_form, default_timeout=30).run()
    at.selectbox(key="t:action").set_value(action).run()
    assert [w.key for w in at.number_input] == ([f"t:{action}"] if params else [])
    at.button(key="t:review_btn").click().run()
    assert not at.exception
    review = at.session_state["t:review"]
    assert review["params"] == params and type(review["params"].get("n", 0)) is int
    assert iv.VOCABULARY[action].label in at.warning[0].value

"""The autopilot (issue 18, part 2): the policy file, the pure decision, the audit trail, replay and the CLI.

The decision function is pure, so most cases build incidents by hand and check what it decides. The audit
tests use real run directories (a sample run copied to tmp_path) and the real intervention channel.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from midflight.logbook.analysis.incident import Incident
from midflight.logbook.cli import main
from midflight.logbook.oncall import autopilot as ap
from midflight.logbook.record import interventions

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_runs" / "opt-tiny-faults"

ROLLBACK = """
version = 1
[[policy]]
name = "rollback"
mode = "{mode}"
max_per_hour = {per_hour}
cooldown_s = {cooldown}
[policy.when]
kind = ["loss_spike", "grad_norm_spike"]
classification = "divergent"
severity = "medium"
[policy.then]
action = "rollback"
before = 10
lr_factor = 0.5
changes = {{ clip = 0.3 }}
"""


def policies(mode="auto", per_hour=2, cooldown=0):
    return ap.parse_policies(ROLLBACK.format(mode=mode, per_hour=per_hour, cooldown=cooldown))


def spike(start=300, end=305, kind="loss_spike", cls="divergent", sev="high", superseded=False):
    return Incident(kind, start, end, 9.0, start + 1, sev, cls, metric=kind.split("_spike")[0], superseded=superseded)


# ------------------------------------------------------------------------------------------- the policy file
def test_policy_file_parses_every_field():
    (pol,) = policies("ask", 3, 120)
    assert (pol.name, pol.mode, pol.max_per_hour, pol.cooldown_s, pol.author) == (
        "rollback",
        "ask",
        3,
        120.0,
        "autopilot:rollback",
    )
    assert pol.when.kinds == {"loss_spike", "grad_norm_spike"} and pol.when.classifications == {"divergent"}
    assert (pol.then.action, pol.then.before, pol.then.skip, pol.then.lr_factor) == ("rollback", 10, "window", 0.5)
    assert pol.then.changes == {"clip": 0.3}


@pytest.mark.parametrize("action", list(interventions.actions()))
def test_every_intervention_of_the_vocabulary_is_an_action(action):
    knob = interventions.VOCABULARY[action]
    params = {p.name: (p.default if p.default is not None else 100) for p in knob.params if not p.optional}
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in params.items())
    (pol,) = ap.parse_policies(f'[[policy]]\nname = "p"\nmode = "suggest"\n[policy.then]\naction = "{action}"\n{lines}')
    assert pol.then.action == action and pol.then.params == params


A = "[[policy]]\nname = 'a'\nmode='auto'\n"  # the start of a policy, for the cases below
T = "[policy.then]\naction="
HOSTILE = [
    ("not toml at all [[[", "not valid TOML"),
    ("", "no policies"),
    ("version = 2\n[[policy]]\nname='a'\nmode='auto'\n[policy.then]\naction='stop'", "version must be 1"),
    ("surprise = 1", "unknown top-level key"),
    ("policy = 3", "no policies"),
    ("[[policy]]\nname = 'a b'\nmode='auto'", "name must be"),
    ("[[policy]]\nname = 7\nmode='auto'", "name must be"),
    ("[[policy]]\nname = 'a'\nmode='yolo'\n" + T + "'stop'", "mode must be one of"),
    ("[[policy]]\nname = 'a'\nmode='auto'", "needs a [policy.then]"),
    (A + "" + T + "'rm -rf'", "action must be one of"),
    (A + "" + T + "'lr_multiplier'\nfactor=1e308", "factor must be"),
    (A + "" + T + "'lr_multiplier'\nfactor=nan", "factor must be"),
    (A + "" + T + "'clip'", "needs max_norm"),
    (A + "" + T + "'rollback'\nlr_factor=inf", "lr_factor must be"),
    (A + "" + T + "'rollback'\nbefore=-1", "before must be"),
    (A + "" + T + "'rollback'\nbefore=true", "before must be"),
    (A + "" + T + "'rollback'\nskip='all'", "skip must be"),
    (
        A + "[policy.then]\naction='rollback'\nchanges={lr_multiplier=2}",
        "set by rollback",
    ),
    (A + "" + T + "'rollback'\nchanges={stop=1}", "cannot change"),
    (A + "" + T + "'rollback'\nchanges={clip=-1}", "clip must be"),
    (A + "" + T + "'rollback'\nsudo=1", "does not take"),
    (A + "max_per_hour=0\n" + T + "'stop'", "max_per_hour must be"),
    (A + "cooldown_s=inf\n" + T + "'stop'", "cooldown_s must be"),
    (
        A + "[policy.when]\nseverity='apocalyptic'\n[policy.then]\naction='stop'",
        "severity",
    ),
    (
        A + "[policy.when]\nkind='loss_spik'\n[policy.then]\naction='stop'",
        "unknown 'loss_spik'",
    ),
    (A + "[policy.when]\nkind=[]\n" + T + "'stop'", "non-empty list"),
    (
        A + "[policy.when]\nsteps=[10, 5]\n[policy.then]\naction='stop'",
        "is before FIRST",
    ),
    (A + "[policy.when]\nsteps=[-5]\n" + T + "'stop'", "steps"),
    (
        A + "[policy.when]\nsteps=[99999999999999999999]\n[policy.then]\naction='stop'",
        "outside [0, 2**63)",
    ),
    (A + "[policy.when]\nwhere=1\n" + T + "'stop'", "unknown key"),
    (
        "[[policy]]\nname='a'\nmode='auto'\n[policy.then]\naction='stop'\n[[policy]]\nname='a'\nmode='auto'\n[policy.then]\naction='stop'",
        "used twice",
    ),
    ("x = " + "[" * 5000 + "]" * 5000, "TOML"),
    ("# " + "x" * (ap.MAX_FILE_BYTES + 10), "larger than"),
    (
        "\n".join(
            f"[[policy]]\nname='p{i}'\nmode='auto'\n[policy.then]\naction='stop'" for i in range(ap.MAX_POLICIES + 1)
        ),
        "at most",
    ),
]


@pytest.mark.parametrize("text, message", HOSTILE)
def test_a_bad_policy_file_is_one_line_naming_the_fault(text, message):
    with pytest.raises(ValueError) as err:
        ap.parse_policies(text, "p.toml")
    text = str(err.value)
    assert text.startswith("p.toml: ") and message in text and "\n" not in text and len(text) < 400


def test_a_policy_file_that_is_not_utf8_or_missing(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_bytes(b"\xff\xfe[[policy]]")
    with pytest.raises(ValueError, match="not UTF-8"):
        ap.load_policies(bad)
    with pytest.raises(ValueError, match="cannot read"):
        ap.load_policies(tmp_path / "absent.toml")


# ------------------------------------------------------------------------------------------------ the decision
def test_rollback_rewinds_before_the_onset_skips_the_window_and_scales_the_lr():
    state = ap.State(now=1000.0, step=306, lr_multiplier=0.8)
    (d,) = ap.decide(policies(), [spike(300, 305)], state, [100, 200, 250, 295, 300])
    assert d.held is None and d.action == "rewind" and d.mode == "auto"
    # 295 and 300 are within 10 steps of the onset; 250 is the last at least 10 before it
    assert d.params == {"checkpoint_step": 250, "changes": {"clip": 0.3, "skip_batches": 55, "lr_multiplier": 0.4}}
    assert "loss_spike:loss@300" in d.note and "autopilot policy rollback" in d.note


@pytest.mark.parametrize(
    "inc, matches",
    [
        (spike(), True),
        (spike(kind="grad_norm_spike"), True),
        (spike(kind="nonfinite"), False),
        (spike(cls="transient"), False),
        (spike(sev="low"), False),
        (spike(sev="medium"), True),
        (spike(superseded=True), False),  # an abandoned branch's incident is history
    ],
)
def test_when_matches_kind_classification_severity(inc, matches):
    got = ap.decide(policies(), [inc], ap.State(now=0.0, step=310), [100])
    assert bool(got) == matches


def test_step_range():
    text = ROLLBACK.format(mode="auto", per_hour=2, cooldown=0).replace('severity = "medium"', "steps = [200, 299]")
    pols = ap.parse_policies(text)
    assert ap.decide(pols, [spike(250, 255)], ap.State(step=260), [100])
    assert not ap.decide(pols, [spike(300, 305)], ap.State(step=310), [100])
    assert not ap.decide(pols, [spike(199, 205)], ap.State(step=210), [100])


@pytest.mark.parametrize(
    "skip, expected",
    [("skip = 0", None), ("skip = 7", 7), ("", 55)],
)
def test_skip_modes(skip, expected):
    text = ROLLBACK.format(mode="auto", per_hour=2, cooldown=0).replace("before = 10", f"before = 10\n{skip}")
    (d,) = ap.decide(ap.parse_policies(text), [spike(300, 305)], ap.State(step=306), [250])
    assert d.params["changes"].get("skip_batches") == expected


def test_no_checkpoint_far_enough_back_holds_and_a_newer_run_state_does_not_see_future_checkpoints():
    (d,) = ap.decide(policies(), [spike(300, 305)], ap.State(step=306), [295, 300])
    assert d.action is None and "no complete checkpoint at or before step 290" in d.held
    (d,) = ap.decide(policies(), [spike(30, 35)], ap.State(step=36), [20, 300])  # 300 is not there yet
    assert d.params["checkpoint_step"] == 20


def test_lr_scaled_out_of_the_channel_range_is_held():
    surge = ap.parse_policies(ROLLBACK.format(mode="auto", per_hour=2, cooldown=0).replace("0.5", "2.0"))
    (d,) = ap.decide(surge, [spike()], ap.State(step=306, lr_multiplier=80.0), [100])  # 160 > the channel's 100
    assert d.action is None and "would be refused" in d.held


def test_never_twice_for_the_same_incident_nor_for_one_event_seen_by_two_detectors():
    incs = [spike(kind="loss_spike"), spike(kind="grad_norm_spike")]
    got = ap.decide(policies(), incs, ap.State(now=0.0, step=306), [100])
    assert [d.held is None for d in got] == [True]  # one action for both (same onset)
    taken = [ap.Taken("rollback", got[0].incident, "auto", 0.0, 306, True)]
    later = ap.State(now=10_000.0, step=400, taken=taken)
    assert ap.decide(policies(), incs, later, [100]) == []


def test_max_per_hour_and_cooldowns():
    taken = [ap.Taken("rollback", f"loss_spike:loss@{s}", "auto", 1000.0 + s, s, True) for s in (100, 200)]
    # two actions within the hour: the third is held
    (d,) = ap.decide(policies(per_hour=2), [spike()], ap.State(now=2000.0, step=306, taken=taken), [250])
    assert d.action is None and d.held.startswith("max_per_hour")
    # after the hour, it goes
    (d,) = ap.decide(policies(per_hour=2), [spike()], ap.State(now=1200.0 + 3600, step=306, taken=taken), [250])
    assert d.held is None
    (d,) = ap.decide(policies(per_hour=5, cooldown=600), [spike()], ap.State(now=1500.0, step=306, taken=taken), [250])
    assert d.held.startswith("cooldown_s")
    # without a clock (a replay of a run with no wall times) the time limits are not judged
    (d,) = ap.decide(policies(per_hour=1, cooldown=600), [spike()], ap.State(now=None, step=306, taken=taken), [250])
    assert d.held is None
    text = ROLLBACK.format(mode="auto", per_hour=5, cooldown=0).replace(
        'name = "rollback"', 'name = "rollback"\ncooldown_steps = 150'
    )
    (d,) = ap.decide(ap.parse_policies(text), [spike()], ap.State(now=None, step=306, taken=taken), [250])
    assert d.held.startswith("cooldown_steps")


def test_a_pending_autopilot_request_holds_actions_not_suggestions():
    text = (
        ROLLBACK.format(mode="auto", per_hour=2, cooldown=0)
        + '\n[[policy]]\nname="tell"\nmode="suggest"\n[policy.then]\naction="clip"\nmax_norm=0.5\n'
    )
    got = ap.decide(ap.parse_policies(text), [spike()], ap.State(step=306, busy=True), [250])
    assert [(d.policy, d.held is None) for d in got] == [("rollback", False), ("tell", True)]


def test_first_acting_policy_wins_and_suggestions_do_not_block_it():
    text = (
        '[[policy]]\nname="tell"\nmode="suggest"\n[policy.then]\naction="clip"\nmax_norm=0.5\n'
        '[[policy]]\nname="ask-first"\nmode="ask"\n[policy.then]\naction="lr_multiplier"\nfactor=0.5\n'
        '[[policy]]\nname="auto-second"\nmode="auto"\n[policy.then]\naction="stop"\n'
    )
    got = ap.decide(ap.parse_policies(text), [spike()], ap.State(step=306), [])
    assert [(d.policy, d.mode, d.action) for d in got] == [
        ("tell", "suggest", "clip"),
        ("ask-first", "ask", "lr_multiplier"),
    ]
    # a suggestion is made once per incident
    taken = [ap.Taken(d.policy, d.incident, d.mode, None, 306, d.mode != "suggest") for d in got]
    assert ap.decide(ap.parse_policies(text), [spike()], ap.State(step=400, taken=taken), []) == []


def test_decide_does_not_change_its_arguments():
    state = ap.State(now=0.0, step=306)
    incs = [spike(), spike(400, 405)]
    ap.decide(policies(per_hour=5), incs, state, [250, 390])
    assert state.taken == [] and not state.busy


# ------------------------------------------------------------------------------------------------- the audit
@pytest.fixture
def run_dir(tmp_path):
    dst = tmp_path / "opt-tiny-faults"
    shutil.copytree(SAMPLE, dst)
    return dst


def test_auto_goes_through_the_channel_authored_by_the_policy(run_dir):
    (d,) = ap.decide(policies(), [spike()], ap.State(step=306), [250])
    rec = ap.act(run_dir, d)
    (req,) = [r for r in interventions.pending(run_dir) if r["id"] == rec["request"]]
    assert req["author"] == "autopilot:rollback" and req["action"] == "rewind"
    assert "loss_spike:loss@300" in req["note"] and req["params"]["checkpoint_step"] == 250
    assert ap.pending_autopilot(run_dir)
    (entry,) = ap.Ledger(run_dir).entries()
    assert entry["mode"] == "auto" and entry["request"] == rec["request"]
    assert ap.proposal_for(run_dir, spike())["id"] == rec["id"]
    assert ap.proposal_for(run_dir, spike(500, 505)) is None


def test_ask_waits_for_one_cli_approval(run_dir, capsys):
    before = len(interventions.pending(run_dir))
    (d,) = ap.decide(policies("ask"), [spike()], ap.State(step=306), [250])
    rec = ap.act(run_dir, d)
    assert len(interventions.pending(run_dir)) == before  # nothing reaches the run before approval
    assert main(["autopilot", "list", str(run_dir)]) == 0 and "pending" in capsys.readouterr().out
    assert main(["autopilot", "approve", str(run_dir), rec["id"], "--author", "susan"]) == 0
    out = capsys.readouterr().out
    (req,) = [r for r in interventions.pending(run_dir) if r["id"] in out]
    assert req["author"] == "autopilot:rollback" and "approved by susan" in req["note"]
    # once only
    assert main(["autopilot", "approve", str(run_dir), rec["id"], "--author", "naman"]) == 2
    assert "already approved by susan" in capsys.readouterr().err
    # the approval counts against the limits and "never twice"
    assert ap.decide(policies("ask"), [spike()], ap.State(step=306, taken=ap.Ledger(run_dir).taken()), [250]) == []


def test_decline_and_unknown_ids(run_dir, capsys):
    (d,) = ap.decide(policies("ask"), [spike()], ap.State(step=306), [250])
    rec = ap.act(run_dir, d)
    before = len(interventions.pending(run_dir))
    assert main(["autopilot", "approve", str(run_dir), rec["id"], "--author", "s", "--decline"]) == 0
    assert len(interventions.pending(run_dir)) == before
    assert main(["autopilot", "approve", str(run_dir), "nope", "--author", "s"]) == 2
    assert "no autopilot proposal 'nope'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--author"):
        ap.approve(run_dir, rec["id"], author=" ")


def test_a_hostile_ledger_is_read_without_raising(run_dir):
    (run_dir / ap.LEDGER).write_text(
        '{"k": "autopilot", "op": "proposal", "id": [1], "mode": "sudo", "params": 3, "t": "x"}\nnot json\n'
        '{"k": "autopilot", "op": "approved", "id": "ghost"}\n'
    )
    (e,) = ap.Ledger(run_dir).entries()
    assert e["id"] == "line-1" and e["mode"] == "suggest" and e["params"] == {} and e["t"] is None


# ---------------------------------------------------------------------------------------- replay and the CLI
def test_replay_on_the_sample_run_says_what_and_when(run_dir, tmp_path, capsys):
    pol = tmp_path / "p.toml"
    pol.write_text(ROLLBACK.format(mode="auto", per_hour=2, cooldown=0).replace('classification = "divergent"\n', ""))
    assert main(["autopilot", "replay", str(run_dir), "--policy", str(pol), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    acted = [d for d in got if d["held"] is None]
    # the sample run's injected spike at step 300: rewind to the checkpoint of step 250, skip through the window
    assert [(d["detected_step"], d["action"], d["params"]["checkpoint_step"]) for d in acted] == [(300, "rewind", 250)]
    assert acted[0]["params"]["changes"]["lr_multiplier"] == 0.5
    assert not (run_dir / ap.LEDGER).exists()  # a replay writes nothing
    assert main(["autopilot", "replay", str(run_dir), "--policy", str(tmp_path / "absent.toml")]) == 2


def test_pilot_tick_acts_once_on_a_run(run_dir, tmp_path):
    pols = ap.parse_policies(
        ROLLBACK.format(mode="auto", per_hour=2, cooldown=0).replace('classification = "divergent"\n', "")
    )
    said = []
    pilot = ap.Pilot(run_dir, pols, log=said.append)
    first = [d for d in pilot.tick() if d.held is None]
    assert [d.action for d in first] == ["rewind"]
    assert [d for d in pilot.tick() if d.held is None] == []  # never twice, also across ticks (the ledger)
    again = ap.Pilot(run_dir, pols, store=pilot.store, log=said.append)  # a restarted autopilot remembers
    assert [d for d in again.tick() if d.held is None] == []
    assert any("autopilot:rollback" == r["author"] for r in interventions.pending(run_dir))


def test_autopilot_run_cli_acts_and_stops_on_a_finished_run(run_dir, tmp_path, capsys):
    pol = tmp_path / "p.toml"
    pol.write_text(
        ROLLBACK.format(mode="suggest", per_hour=2, cooldown=0).replace('classification = "divergent"\n', "")
    )
    assert main(["autopilot", "run", str(run_dir), "--policy", str(pol), "--every", "0.1", "--until-finished"]) == 0
    out = capsys.readouterr().out
    assert "suggest rollback on loss_spike:loss@300" in out and "the run is finished: autopilot stops" in out
    (entry,) = [e for e in ap.Ledger(run_dir).entries() if e["incident"] == "loss_spike:loss@300"]
    assert entry["mode"] == "suggest" and entry["request"] is None
    assert main(["autopilot", "run", str(tmp_path / "nowhere"), "--policy", str(pol), "--wait", "0.3"]) == 2
    assert "is not a midflight run directory" in capsys.readouterr().err


def test_proposals_for_an_alert_without_a_running_autopilot():
    text = ROLLBACK.format(mode="auto", per_hour=2, cooldown=0) + (
        '[[policy]]\nname="tell"\nmode="suggest"\n[policy.then]\naction="clip"\nmax_norm=0.5\n'
    )
    got = ap.proposals(ap.parse_policies(text), spike(300, 305), [250], lr_multiplier=0.5)
    assert [(d.policy, d.action) for d in got] == [("rollback", "rewind"), ("tell", "clip")]
    assert got[0].params["changes"]["lr_multiplier"] == 0.25
    assert ap.proposals(ap.parse_policies(text), spike(cls="transient"), [250])[0].policy == "tell"

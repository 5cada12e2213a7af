"""`import midflight.wandb as wandb`: W&B-style training scripts run unchanged and are recorded by midflight.

The scripts below are written the way W&B's quickstart and its PyTorch examples are (init with project, name
and config; `wandb.log` each step with W&B's auto-incrementing step; `wandb.config` read back; summary, tags,
define_metric, alert, watch; finish). They run as real subprocesses (one process, then two under torchrun with
only rank 0 calling init, the W&B habit), and what they recorded is read back through a real ingest into DuckDB
and the `midflight summary` report. The same quickstart also runs, unchanged but for its import, on the
real wandb package (offline mode), and the module's public names and parameters are checked against the
real ones: midflight.wandb must accept what W&B code writes, and invent nothing W&B code cannot call.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import midflight.wandb as wandb
from midflight.logbook.record import histograms
from midflight.logbook.report import summary
from midflight.logbook.store import memory, queries
from midflight.logbook.store.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]

QUICKSTART = textwrap.dedent("""
    import random
    import sys

    import torch

    import midflight.wandb as wandb

    wandb.login()
    run = wandb.init(
        project="quickstart <demo>",
        name="sgd/baseline",
        config={"learning_rate": 0.05, "epochs": 6, "arch": {"hidden": 16}},
        tags=["quickstart", "cpu"],
        notes="a W&B quickstart, recorded by midflight",
        group="sweep-1",
        job_type="train",
        entity="someone",  # W&B's account: ignored, with a warning
    )
    torch.manual_seed(0)
    random.seed(0)
    hidden = wandb.config.arch["hidden"]
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    wandb.watch(model, log="all")
    opt = torch.optim.SGD(model.parameters(), lr=wandb.config["learning_rate"])
    wandb.define_metric("val_loss", summary="min")
    wandb.define_metric("train/*", summary="last")
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    best = float("inf")
    for epoch in range(wandb.config.epochs):
        for batch in range(4):
            loss = torch.nn.functional.mse_loss(model(x[batch::4]), y[batch::4])
            opt.zero_grad()
            loss.backward()
            opt.step()
            wandb.log({"train/loss": loss.detach()}, commit=False)  # joins the next committed row
            wandb.log({"train/lr": opt.param_groups[0]["lr"]})
        if epoch == 2:
            wandb.config.update({"learning_rate": 0.01}, allow_val_change=True)
            for group in opt.param_groups:
                group["lr"] = wandb.config.learning_rate
            wandb.log({"sample": "epoch 2: <i>lowered</i> the lr"}, commit=False)
            wandb.alert(title="lr lowered", text="validation loss flat", level=wandb.AlertLevel.WARN)
        val = torch.nn.functional.mse_loss(model(x), y).item()
        best = min(best, val)
        wandb.log({"val_loss": val, "weights": wandb.Histogram(model[0].weight.detach()), "epoch": epoch})
    wandb.run.summary["best_val_loss"] = best
    wandb.summary.update({"epochs_done": wandb.config.epochs})
    run.tags = run.tags + ("done",)
    try:
        wandb.log({"examples": wandb.Image(torch.zeros(3, 8, 8))})
    except TypeError as exc:
        print("refused:", exc)
    print("dir:", run.dir, "step:", run.step)
    wandb.finish()
""")


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + sys.path), **extra}
    env.pop("MIDFLIGHT_DIR", None)
    env.pop("WANDB_MODE", None)
    return env


def _store(run_dir):
    store = memory()
    report = ingest(store, [run_dir])
    assert report.errors == [] and report.malformed == 0
    return store


def _values(store, run, name):
    return queries.series(store, run, name)["value"].tolist()


def test_a_wandb_quickstart_script_runs_unchanged_and_is_recorded(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(QUICKSTART)
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ignores wandb.init(entity=...)" in out.stderr and "wandb.watch() does nothing" in out.stderr
    refused = next(line for line in out.stdout.splitlines() if line.startswith("refused:"))
    assert "wandb.Image is not recorded: midflight records numbers, histograms and text" in refused
    # ./midflight-runs/<project>/<name>, both made safe folder names; the display name stays as given
    run_dir = tmp_path / "midflight-runs" / "quickstart-demo" / "sgd-baseline"
    assert f"dir: {run_dir.relative_to(tmp_path)} step: 30" in out.stdout
    store = _store(run_dir)
    run = "sgd-baseline"
    assert queries.runs(store)["name"].tolist() == ["sgd/baseline"]
    # W&B's steps: each committed row is the next step; commit=False joined train/loss to train/lr's row
    steps = queries.series(store, run, "train/lr")["step"].tolist()
    assert steps == [s for e in range(6) for s in range(e * 5, e * 5 + 4)]
    assert queries.series(store, run, "train/loss")["step"].tolist() == steps
    assert queries.series(store, run, "val_loss")["step"].tolist() == [4, 9, 14, 19, 24, 29]
    assert _values(store, run, "train/lr")[:12] == [0.05] * 12 and _values(store, run, "train/lr")[12:] == [0.01] * 12
    assert _values(store, run, "weights/count") == [64.0] * 6
    assert set(queries.metric_names(store, run)) >= {
        histograms.quantile_name("weights", q) for q in histograms.QUANTILES
    }
    texts = queries.events(store, run, ["text"])
    assert texts["step"].tolist() == [14]
    assert json.loads(texts["fields"].iloc[0]) == {"name": "sample", "text": "epoch 2: <i>lowered</i> the lr"}
    s = summary.summarize(store, run)
    assert s["tags"] == ["quickstart", "cpu", "done"]
    assert (s["notes"], s["group"], s["job_type"]) == ("a W&B quickstart, recorded by midflight", "sweep-1", "train")
    assert [(c["step"], c["diff"]) for c in s["config_changes"]] == [(14, {"learning_rate": [0.05, 0.01]})]
    assert s["summary_values"]["epochs_done"] == 6
    assert s["summary_values"]["best_val_loss"] == pytest.approx(min(_values(store, run, "val_loss")))
    assert s["metric_summaries"]["val_loss"] == {"min": pytest.approx(min(_values(store, run, "val_loss")))}
    assert s["metric_summaries"]["train/loss"] == {"last": pytest.approx(_values(store, run, "train/loss")[-1])}
    assert [(a["title"], a["level"], a["step"]) for a in s["alerts"]] == [("lr lowered", "WARN", 14)]
    segs = queries.segments(store, run)
    assert segs["end_reason"].tolist() == ["completed"]
    assert json.loads(segs["config"].iloc[0])["arch"] == {"hidden": 16}


TORCHRUN = textwrap.dedent("""
    import sys
    import torch, torch.distributed as dist
    import midflight.wandb as wandb

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == 0:  # the W&B habit: only the main process starts a run
        wandb.init(project="ddp", name="two-ranks", dir=sys.argv[1], config={"world": dist.get_world_size()})
    for step in range(5):
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)  # a collective right after init: it hangs if init needed every rank
        if rank == 0:
            wandb.log({"loss": 1.0 / (step + 1), "sum_ranks": t})
    if rank == 0:
        wandb.run.summary["final_loss"] = 0.2
        wandb.finish()
    dist.barrier()
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_two_process_torchrun_with_wandb_init_on_rank_0_only_finishes(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(TORCHRUN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    out = subprocess.run([*cmd, str(tmp_path / "runs")], env=_env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    store = _store(tmp_path / "runs" / "ddp" / "two-ranks")
    segs = queries.segments(store, "two-ranks")
    assert segs["end_reason"].tolist() == ["completed"] and segs["ranks"].tolist() == [1]
    assert _values(store, "two-ranks", "sum_ranks") == [3.0] * 5
    assert _values(store, "two-ranks", "loss") == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert summary.run_notes(store, "two-ranks")["summary_values"] == {"final_loss": 0.2}


def test_where_runs_go_and_resume_continues_the_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDFLIGHT_DIR", str(tmp_path / "env-root"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    r = wandb.init(project="p", config={"a": 1})  # no name: the generated id names the folder
    assert Path(r.dir) == tmp_path / "env-root" / "p" / r.id and len(r.id) == 8
    r.log({"x": 1.0})
    r.finish()
    assert wandb.run is None
    with pytest.raises(wandb.Error, match="call wandb.init"):
        wandb.log({"x": 1.0})
    first = wandb.init(project="p", name="resumable", dir=tmp_path / "explicit")
    assert Path(first.dir) == tmp_path / "explicit" / "p" / "resumable"
    for i in range(3):
        wandb.log({"x": float(i)})
    wandb.finish()
    again = wandb.init(project="p", name="resumable", dir=tmp_path / "explicit", resume="allow")
    assert again.step == 3  # W&B's history continues
    wandb.log({"x": 3.0})
    with pytest.warns(wandb.MidflightWandbWarning, match="steps must increase, so this data is ignored"):
        wandb.log({"x": 99.0}, step=1)  # lower than the current step: ignored with a warning, as in W&B
    wandb.finish()
    store = _store(tmp_path / "explicit" / "p" / "resumable")
    assert queries.series(store, "resumable", "x")["step"].tolist() == [0, 1, 2, 3]
    segs = queries.segments(store, "resumable")
    assert segs["parent_id"].tolist()[1] == segs["segment_id"].tolist()[0] and segs["resume_step"].tolist()[1] == 2
    with pytest.raises(wandb.Error, match="resume='must'"):
        wandb.init(project="p", name="nothing-here", dir=tmp_path / "explicit", resume="must")


def test_disabled_mode_records_nothing_and_misuse_raises_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = wandb.init(project="p", mode="disabled", config={"lr": 0.1})
    r.log({"loss": 1.0})
    r.config.lr = 0.2
    assert (r.config.lr, r.dir, r.step) == (0.2, None, 1)
    r.finish()
    assert not (tmp_path / "midflight-runs").exists()
    r = wandb.init(project="p", name="misuse", dir=tmp_path)
    cases = [
        ({"t": wandb.Table(columns=["a"])}, TypeError, "wandb.Table is not recorded"),
        ({"h": wandb.Html("<b>x</b>")}, TypeError, "wandb.Html is not recorded"),
        ({"v": [1.0, 2.0, 3.0]}, TypeError, "wrap it in midflight.Histogram(...)"),
        ({"d": {"img": wandb.Image(None)}}, TypeError, "'d.img': wandb.Image is not recorded"),
        ({"": 1.0}, ValueError, "must not be empty"),
    ]
    for data, exc, words in cases:
        with pytest.raises(exc) as info:
            wandb.log(data, commit=False)
        assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="level must be one of"):
        wandb.alert("t", "x", level="LOUD")
    with pytest.raises(ValueError, match="step"):
        wandb.log({"x": 1.0}, step=-1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wandb.save("*.pt")
        wandb.save("*.pt")
    assert len([w for w in caught if "wandb.save() does nothing" in str(w.message)]) == 1
    wandb.log({"ok": math.pi})
    wandb.finish()
    store = _store(tmp_path / "p" / "misuse")
    assert queries.metric_names(store, "misuse") == ["ok"]  # nothing of the refused calls was recorded


# ----------------------------------------------------------------- against the real wandb package
REAL_SETTINGS = ("WANDB_MODE", "WANDB_SILENT", "WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")


def test_the_same_quickstart_runs_on_the_real_wandb(tmp_path):
    """The script is real W&B code: with `import wandb` it runs on wandb itself (offline, nothing sent)."""
    pytest.importorskip("wandb")
    script = tmp_path / "real.py"
    script.write_text(QUICKSTART.replace("import midflight.wandb as wandb", "import wandb"))
    env = {**_env(), **dict.fromkeys(REAL_SETTINGS[2:], str(tmp_path)), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "refused:" not in out.stdout and "step: 31" in out.stdout  # W&B logs the image we refuse: one more row
    assert list((tmp_path / "wandb").glob("offline-run-*"))


COMMON = {  # W&B's names that W&B code calls, and the parameters our versions must take by name
    "init": (
        "project",
        "name",
        "config",
        "dir",
        "tags",
        "notes",
        "group",
        "job_type",
        "mode",
        "reinit",
        "id",
        "resume",
    ),
    "log": ("data", "step", "commit"),
    "finish": ("exit_code",),
    "define_metric": ("name", "step_metric", "step_sync", "hidden", "summary", "overwrite"),
    "alert": ("title", "text", "level", "wait_duration"),
    "watch": (),
    "save": (),
    "login": (),
}


@pytest.mark.parametrize("name", sorted(COMMON))
def test_the_functions_take_what_wandbs_take(name):
    real = pytest.importorskip("wandb")
    ours, theirs = inspect.signature(getattr(wandb, name)), inspect.signature(getattr(real, name))
    for param in COMMON[name]:
        assert param in theirs.parameters, f"wandb.{name} has no {param!r}: the table above is wrong"
        assert param in ours.parameters, f"midflight.wandb.{name} does not take {param!r} by name"
    takes_any = any(p.kind is p.VAR_KEYWORD for p in ours.parameters.values())
    theirs_named = {p for p, v in theirs.parameters.items() if p != "self" and v.kind.name not in ("VAR_KEYWORD",)}
    assert takes_any or theirs_named <= set(ours.parameters), theirs_named - set(ours.parameters)
    # (ours may take more: older W&B releases' parameters, such as log(sync=) and finish(quiet=), still in scripts)


def test_the_public_names_exist_in_wandb():
    real = pytest.importorskip("wandb")
    names = ["Histogram", "Image", "Table", "Html", "Video", "Audio", "Object3D", "Plotly", "AlertLevel", "Settings",
             "Error", "config", "summary", "run", *COMMON]  # fmt: skip
    missing = [n for n in names if not hasattr(real, n)]
    assert not missing, missing
    assert {lv.name for lv in real.AlertLevel} <= {n for n in vars(wandb.AlertLevel) if n.isupper()}

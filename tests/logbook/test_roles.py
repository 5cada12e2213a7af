"""Any metric name works: the role vocabulary (logbook.roles), declared roles, and detection, the summary and
the ETA on runs that call their loss `train/loss`, `loss` with `learning_rate`, or something of their own.

The alias cases are names real trainers log (Hugging Face Trainer and its W&B callback, Lightning and its
LearningRateMonitor, Megatron-LM's TensorBoard tags, torchtitan, nanoGPT, NeMo, fairseq); the runs are real
Recorder runs, ingested into a real store, summarised by the real CLI.
"""

import json

import numpy as np
import pytest

from midflight import logbook
from midflight.logbook import roles
from midflight.logbook.report import incidents as incidents_report
from midflight.logbook.report import progress as progress_report
from midflight.logbook.report.summary import summarize
from midflight.logbook.store import queries

from .proc_helpers import cli


@pytest.mark.parametrize(
    "name, role",
    [
        # Hugging Face Trainer's on_log keys, and its W&B / TensorBoard callbacks' rewritten ones
        ("loss", "loss"),
        ("learning_rate", "lr"),
        ("grad_norm", "grad_norm"),
        ("eval_loss", "eval_loss"),
        ("train/loss", "loss"),
        ("train/learning_rate", "lr"),
        ("train/grad_norm", "grad_norm"),
        ("eval/loss", "eval_loss"),
        ("train_loss", "loss"),
        # Lightning: self.log names and LearningRateMonitor's lr-<Optimizer>[/pg<N>], grad_norm utility
        ("train_loss_step", "loss"),
        ("val_loss", "eval_loss"),
        ("lr-AdamW", "lr"),
        ("lr-SGD", "lr"),
        ("lr-Adam/pg0", "lr"),
        ("grad_2.0_norm_total", "grad_norm"),
        # Megatron-LM TensorBoard tags
        ("lm loss", "loss"),
        ("learning-rate", "lr"),
        ("grad-norm", "grad_norm"),
        ("loss-scale", "loss_scale"),
        ("iteration-time", "step_time"),
        ("params-norm", "param_norm"),
        ("lm loss validation", "eval_loss"),
        # torchtitan's metric logger
        ("loss_metrics/global_avg_loss", "loss"),
        ("throughput(tps)", "throughput"),
        ("time_metrics/end_to_end(s)", "step_time"),
        ("lr/AdamW", "lr"),
        # nanoGPT (W&B), NeMo, fairseq, torch.amp, hand-written loops
        ("val/loss", "eval_loss"),
        ("reduced_train_loss", "loss"),
        ("train_step_timing", "step_time"),
        ("gnorm", "grad_norm"),
        ("wps", "throughput"),
        ("scaler/scale", "loss_scale"),
        ("loss/train", "loss"),
        ("total_norm", "grad_norm"),
        ("tokens_per_sec", "throughput"),
        ("throughput", "throughput"),
        ("step_time_ms", "step_time"),
        ("iter_time_ms", "step_time"),
        ("Train/Loss", "loss"),
    ],
)
def test_alias_table_knows_real_names(name, role):
    assert roles.claim(name)[0] == role


@pytest.mark.parametrize(
    "name",
    ["epoch", "mfu(%)", "loss_metrics/global_max_loss", "lr-Adam-momentum", "lr-Adam/pg1", "accuracy", "nll_loss"],
)
def test_names_that_play_no_role(name):
    assert roles.claim(name) is None


def test_milliseconds_carry_their_scale():
    (hit,) = roles.resolve(["step_time_ms"]).values()
    assert (hit.role, hit.metric, hit.scale, hit.unit) == ("step_time", "step_time_ms", 1e-3, "ms")
    assert roles.resolve(["step_time_s", "step_time_ms"])["step_time"].metric == "step_time_s"


def test_resolution_prefers_the_better_claim():
    # Hugging Face logs `loss` every logging step and `train_loss` once, the whole run's average, at the end
    assert roles.resolve(["train_loss", "loss", "epoch"])["loss"].metric == "loss"
    assert roles.resolve(["Loss", "loss"])["loss"].metric == "loss"  # the exact name before a spelling variant
    assert roles.resolve(["train/loss", "lm loss"])["loss"].metric == "train/loss"
    assert roles.resolve(["lr-AdamW", "learning_rate"])["lr"].metric == "learning_rate"  # an alias before a pattern
    got = roles.resolve(["my_loss", "loss"], {"loss": "my_loss"})["loss"]
    assert (got.metric, got.declared) == ("my_loss", True)
    # declared but not (yet) logged: the alias stands in, so a typo never blanks the loss chart
    assert roles.resolve(["loss"], {"loss": "my_los"})["loss"].metric == "loss"
    # declared by midflight's metric name for the role
    assert roles.resolve(["tps_now"], roles.validate({"tokens_per_s": "tps_now"}))["throughput"].metric == "tps_now"


@pytest.mark.parametrize(
    "bad, error",
    [
        ([("loss", "x")], TypeError),
        ({"los": "x"}, ValueError),
        ({"loss": 3}, TypeError),
        ({"loss": ""}, ValueError),
        ({"loss": "step"}, ValueError),
        ({"loss": "a\nb"}, ValueError),
        ({"loss": "x", "lr": "x"}, ValueError),
        ({"throughput": "a", "tokens_per_s": "b"}, ValueError),
    ],
)
def test_init_refuses_bad_roles_before_writing_anything(tmp_path, bad, error):
    with pytest.raises(error):
        logbook.init(tmp_path / "run", roles=bad)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------- real runs
SPIKE = 450


def _curve(n=600, seed=0):
    rng = np.random.default_rng(seed)
    s = np.arange(1, n + 1)
    loss = (2.0 + 3.0 * (1 + s / 500) ** -0.5) * np.exp(0.01 * rng.standard_normal(n))
    loss[s == SPIKE] *= 2.5
    grad = 0.8 * np.exp(0.1 * rng.standard_normal(n))
    return s, loss, grad


def _record(run_dir, names: dict, *, roles_=None, extra=None):
    """A Recorder run whose loss (planted spike at SPIKE), grad norm and LR are logged under `names`."""
    s, loss, grad = _curve()
    with logbook.init(run_dir, **({"roles": roles_} if roles_ else {})) as run:
        for i, step in enumerate(s):
            row = {names["loss"]: float(loss[i]), names["grad_norm"]: float(grad[i]), names["lr"]: 3e-4}
            row.update({k: f(i) for k, f in (extra or {}).items()})
            run.log(row, step=int(step))
    return float(loss[-1])


def _spikes(incs):
    return [i for i in incs if i.kind == "loss_spike"]


def test_hugging_face_names_feed_detection_and_the_summary(tmp_path):
    run_dir = tmp_path / "hf"
    last = _record(run_dir, {"loss": "loss", "grad_norm": "grad_norm", "lr": "learning_rate"})
    out = cli("summary", run_dir, "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["last_loss"] == pytest.approx(last)
    spike = [i for i in s["incidents"] if i["kind"] == "loss_spike"]
    assert [i["start_step"] for i in spike] == [SPIKE]
    assert spike[0]["context"]["lr"] == 3e-4  # the LR came from `learning_rate`
    assert s["roles"]["lr"]["metric"] == "learning_rate"


def test_slash_names_and_milliseconds(tmp_path):
    run_dir = tmp_path / "slash"
    last = _record(
        run_dir,
        {"loss": "train/loss", "grad_norm": "train/grad_norm", "lr": "train/learning_rate"},
        extra={"step_time_ms": lambda i: 250.0},
    )
    store, *_ = logbook.open_run(run_dir)
    s = summarize(store, "slash")
    assert s["last_loss"] == pytest.approx(last)
    (spike,) = _spikes(incidents_report.incidents(store, "slash"))
    assert spike.start_step == SPIKE and spike.metric == "train/loss"  # the run's own name, a series that exists
    assert spike.context["lr"] == 3e-4 and "grad_norm" in spike.context
    assert progress_report.progress(store, "slash")["step_time_s"] == pytest.approx(0.25)  # ms -> s
    frame = incidents_report.run_frame(store, "slash")
    assert frame["step_time_s/0"].dropna().unique().tolist() == [0.25]
    text = cli("summary", run_dir)
    assert text.returncode == 0 and f"last loss {s['last_loss']} (train/loss)" in text.stdout


def test_the_live_detector_reads_roles_too(tmp_path):
    run_dir = tmp_path / "live"
    _record(run_dir, {"loss": "lm loss", "grad_norm": "grad-norm", "lr": "learning-rate"})
    store, *_ = logbook.open_run(run_dir)
    (spike,) = _spikes(incidents_report.LiveIncidents().incidents(store, "live"))
    assert spike.start_step == SPIKE and spike.metric == "lm loss"


def test_a_declared_role_wins_over_an_alias(tmp_path):
    run_dir = tmp_path / "declared"
    s, loss, _ = _curve(seed=1)
    smooth = 3.0 - s / 1000  # an alias (`train/loss`) that is NOT the loss the user means: no spike in it
    with logbook.init(run_dir, roles={"loss": "objective"}) as run:
        for i, step in enumerate(s):
            run.log({"objective": float(loss[i]), "train/loss": float(smooth[i])}, step=int(step))
    header = json.loads(next(run_dir.glob("segments/*/segment.json")).read_text())
    assert header["roles"] == {"loss": "objective"}
    store, *_ = logbook.open_run(run_dir)
    assert queries.role_metric(store, "declared", "loss") == "objective"
    summary = summarize(store, "declared")
    assert summary["last_loss"] == pytest.approx(float(loss[-1]))
    assert summary["roles"]["loss"] == {"metric": "objective", "declared": True, "unit": ""}
    assert [i.start_step for i in _spikes(incidents_report.incidents(store, "declared"))] == [SPIKE]


def test_a_bad_roles_field_in_a_header_is_reported_and_hides_nothing(tmp_path):
    run_dir = tmp_path / "edited"
    _record(run_dir, {"loss": "train/loss", "grad_norm": "gnorm", "lr": "lr"})
    path = next(run_dir.glob("segments/*/segment.json"))
    header = json.loads(path.read_text())
    header["roles"] = {"loss": ["not", "a", "name"]}
    path.write_text(json.dumps(header))
    store, *_ = logbook.open_run(run_dir)
    assert len(queries.segments(store, "edited")) == 1  # the header itself is kept
    (problem,) = queries.ingest_problems(store, "edited")
    assert "declared roles ignored" in problem["examples"][0][1]
    assert queries.role_metric(store, "edited", "loss") == "train/loss"

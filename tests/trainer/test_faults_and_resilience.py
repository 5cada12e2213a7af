"""fp16 loss-scale events, injected faults, and training that goes on when observability cannot."""

import math
import resource
import signal
import subprocess

import pytest

from midflight.trainer import config
from midflight.trainer.precision import scale_events

from .helpers import ROOT, Recorded, child_env, train, trainer_cmd


def test_overflow_skips_steps_halves_the_scale_and_stops_at_the_floor(tmp_path):
    train(
        tmp_path / "run",
        "--steps=40",
        "--precision=fp16",
        "--precision.scale_floor=1.0",
        "--inject=overflow@10-12",
        "--telemetry.enabled=false",
    )
    rec = Recorded(tmp_path / "run")
    scale = rec.metric("loss_scale")
    assert scale[9] == 4.0 and scale[10] == 2.0 and scale[11] == 1.0 and scale[12] == 1.0  # floor 1.0 holds
    overflows = rec.events("overflow")
    assert [s for s, _ in overflows] == [10, 11, 12]
    assert overflows[0][1] == {"scale_before": 4.0, "scale_after": 2.0, "skipped": True}
    decreases = [s for s, _ in rec.events("loss_scale_decrease")]
    assert decreases == [10, 11]
    at_floor = rec.events("loss_scale_at_floor")
    assert [s for s, _ in at_floor] == [11, 12] and at_floor[-1][1]["floor"] == 1.0
    assert math.isfinite(rec.metric("loss")[40])  # skipped steps did not poison the weights


def test_scale_growth_is_an_event():
    assert scale_events(4.0, 8.0, 1e-4, overflowed=False) == [
        ("loss_scale_increase", {"scale_before": 4.0, "scale_after": 8.0})
    ]
    assert scale_events(4.0, 4.0, 1e-4, overflowed=False) == []


def test_spike_is_real_and_nan_crashes_into_a_restartable_state(tmp_path):
    common = ["--steps=140", "--checkpoint.every=20", "--telemetry.enabled=false"]
    out = train(tmp_path / "run", *common, "--inject=spike@100", "--inject=nan@125", check=False)
    assert out.returncode == 1 and "NonFiniteLoss" in out.stderr
    rec = Recorded(tmp_path / "run")
    loss, gnorm = rec.metric("loss"), rec.metric("grad_norm")
    assert loss[100] > max(loss[s] for s in range(90, 100)) + 1.0  # the corrupted batch
    # the LR blow-up (x30 for 3 steps) hurts the weights: the grad norm stays high after the batch
    assert min(gnorm[s] for s in range(100, 103)) > 2 * max(gnorm[s] for s in range(90, 100))
    assert all(math.isnan(loss[s]) for s in (126, 127, 128))  # poisoned weights: NaN until the tolerance
    assert max(loss) == 128 and [s for s, _ in rec.events("nonfinite_loss")] == [126, 127, 128]
    # the restart (torchrun would run this) comes back from the last good checkpoint, and the faults do not repeat
    train(tmp_path / "run", *common, "--inject=spike@100", "--inject=nan@125", "--resume")
    rec = Recorded(tmp_path / "run")
    loss = rec.metric("loss")
    assert all(math.isfinite(loss[s]) for s in range(121, 141))
    assert rec.segments().iloc[1].resume_step == 120


def test_lr_spike_is_applied_for_three_steps(tmp_path):
    train(
        tmp_path / "run", "--steps=40", "--inject=spike@30", "--faults.spike_lr_factor=10", "--telemetry.enabled=false"
    )
    lr = Recorded(tmp_path / "run").metric("lr")
    for s in (30, 31, 32):
        assert lr[s] > 5 * lr[29]
    assert lr[33] < 2 * lr[29]


def test_run_finishes_with_a_warning_when_nvml_is_absent(tmp_path):
    out = train(tmp_path / "run", "--steps=20", "--telemetry.devices=gpu", "--telemetry.hz=10")
    assert "NVML unavailable" in out.stderr
    rec = Recorded(tmp_path / "run")
    assert rec.events("telemetry_warning")
    samples = rec.store.cursor().execute("SELECT count(*) FROM telemetry WHERE device = 'cpu'").fetchone()[0]
    assert samples >= 1  # CPU figures instead
    assert rec.segments().iloc[0].end_reason == "completed"


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, resource.RLIM_INFINITY))  # ~1/3 of the run's log


def test_run_goes_on_when_its_logbook_becomes_unwritable(tmp_path):
    """The disk 'fills up' mid-run (a real EFBIG from the kernel): training finishes, what was written stays."""
    out = subprocess.run(
        trainer_cmd(tmp_path / "run", "--steps=200", "--checkpoint.every=0", "--checkpoint.at_end=false"),
        capture_output=True,
        text=True,
        env=child_env(OMP_NUM_THREADS="1"),
        cwd=ROOT,
        timeout=120,
        preexec_fn=_limit_file_size,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 200/200" in out.stdout  # training went on to the end
    assert "midflight" in out.stderr and "warning" in out.stderr.lower()
    rec = Recorded(tmp_path / "run")
    loss = rec.metric("loss")
    assert loss and sorted(loss) == list(range(1, max(loss) + 1))  # a clean prefix, nothing corrupted
    assert max(loss) < 200  # the log really did stop growing
    assert rec.report.malformed == 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([("steps", "0")], "steps must be >= 1"),
        ([("optim.clip", "abc")], "optim.clip must be float"),
        ([("optim.nope", "1")], "unknown config key 'optim.nope'"),
        ([("nosection.x", "1")], "unknown config section 'nosection'"),
        ([("checkpoint.keep_latest", "1")], "keep_latest must be >= 2"),
        ([("inject", ["boom@3"])], "KIND@STEP"),
        ([("inject", ["overflow@3"])], "needs --precision fp16"),
        ([("parallel.fsdp", "fairscale")], "fairscale FSDP does not run on CPU"),
        ([("model.preset", "7b")], "model.preset must be one of"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        config.resolve(overrides)


def test_cli_errors_are_one_line(tmp_path):
    out = train(tmp_path / "run", "--steps=10", "--optim.clip=zero", check=False)
    assert out.returncode == 2 and out.stderr.strip() == "error: optim.clip must be float, not 'zero'"
    out = train(tmp_path / "run", "--steps=10", "--data.path=/nonexistent.bin", check=False)
    assert out.returncode == 2 and "data.path '/nonexistent.bin' is not a file" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_file_and_overrides_resolve_in_order(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("steps = 77\n[optim]\nclip = 0.3\nbeta2 = 0.98\n[data]\nbatch_size = 3\n")
    cfg = config.resolve([*config.load_file(str(path)).items(), ("optim.clip", "0.5")])
    assert (cfg.steps, cfg.optim.clip, cfg.optim.beta2, cfg.data.batch_size) == (77, 0.5, 0.98, 3)
    recorded = cfg.to_dict()  # what the run's first segment header and every checkpoint keep
    assert (recorded["steps"], recorded["optim"]["clip"], recorded["data"]["batch_size"]) == (77, 0.5, 3)

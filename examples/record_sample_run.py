"""Record sample_runs/opt-tiny-faults: a real 2-rank FSDP2 run of the trainer that lives through OPT-175B's troubles.

    python examples/record_sample_run.py sample_runs/opt-tiny-faults

What happens in it, all for real on the CPU (gloo, torchrun, fp16 with loss scaling):
- steps 250-252: fp16 overflows (injected): skipped steps, the loss scale halves twice;
- step 300: a loss spike (a corrupted batch and an LR blow-up);
- step 380: rank 1 crashes; torchrun's --max-restarts brings the job back from the checkpoint of step 350;
- step 470-490: rank 1 turns into a straggler;
- about step 520: a person rewinds to the checkpoint of step 500 with the LR halved and the clip tightened,
  through `midflight intervene` (the audited control channel), like OPT-175B's team did;
- annotations mark what happened, as a person babysitting the run would.
Checkpoints are left out of the sample (they are large and nothing reads them).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 700


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="where to write the run directory (replaced)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    work = Path(tempfile.mkdtemp(prefix="midflight-sample-")) / args.out.name
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=1",
        "-m", "midflight.trainer", "--model", "tiny", "--steps", str(STEPS), "--run-dir", str(work),
        "--name", "opt-tiny-faults",
        "--precision", "fp16", "--fsdp", "fsdp2", "--data.seq_len=64", "--data.batch_size=8",
        "--checkpoint.every=50", "--checkpoint.keep_latest=4", "--log.print_every=10", "--telemetry.hz=2",
        "--precision.growth_interval=100",
        "--inject", "overflow@250-252", "--inject", "spike@300", "--inject", "crash@380",
        "--inject", "slow-rank@470-490", "--faults.slow_rank_s=0.15",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    asked = False
    for line in proc.stdout:
        print(line, end="", flush=True)
        if not asked and "step 520/" in line:
            note = "loss unstable after the straggler: roll back, LR x0.5, clip 0.3 (as OPT did)"
            logbook("intervene", work, "--rewind", "500", "--lr-scale", "0.5", "--clip", "0.3", "--note", note)
            asked = True
    if proc.wait() != 0:
        print(f"the trainer failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    for step, kind, text in [
        (250, "hardware", "fp16 overflow streak: scale 4 -> 1"),
        (300, "data", "loss spike: a corrupted batch; LR x30 for 3 steps"),
        (380, "hardware", "rank 1 died; torchrun restarted the job from step 350"),
        (470, "hardware", "rank 1 is a straggler until step 490"),
    ]:
        logbook("annotate", work, "--step", str(step), "--kind", kind, "--text", text, "--author", "sample-recorder")
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    shutil.rmtree(work / ".midflight", ignore_errors=True)
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(work, args.out)
    shutil.rmtree(work.parent, ignore_errors=True)
    logbook("summary", args.out, "-q")
    return 0


def logbook(*args) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "midflight.logbook", *map(str, args)], check=True, env=env, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())

"""Fault injection for demos and tests: `--inject KIND@STEP` or `KIND@FIRST-LAST`.

Every fault is real, not a faked metric:
- spike:     a corrupted batch (tokens shuffled) at STEP and the LR times `faults.spike_lr_factor`
             for 3 steps, so loss and grad norm really jump and the weights really take the hit;
- nan:       the weights are poisoned with NaN, so every loss after it is NaN until the run
             crashes on `faults.nan_tolerance` and restarts from its last good checkpoint;
- overflow:  the fp16 loss is multiplied by inf before scaling: the grads overflow, the
             GradScaler skips the step and halves the scale (fp16 only);
- crash:     the last rank raises, as a dying rank would; torchrun's --max-restarts restarts the job;
- slow-rank: the last rank sleeps `faults.slow_rank_s` per step: a straggler;
- diverge:   the batches steps FIRST..LAST read in a run without skips (batch indices FIRST-1..LAST-1) are bad
             data (uniformly random tokens) every time they are read, and the first time the run reads one the
             LR goes x `faults.spike_lr_factor`, doubling every SURGE_DOUBLING steps, for the rest of the
             segment: an instability that feeds itself and that a plain run does not recover from. A rewind
             (a new segment) ends the surge, which has fired once; only skipping those batches keeps the bad
             data out (the autopilot's headline scenario, benchmarks/autopilot_rescue.py);
- disk-full: every checkpoint save at a step in FIRST..LAST fails with OSError(ENOSPC), raised on the
             last rank inside the real save path after its shards are written; a full disk stays full,
             so a retry of the same step in the same launch fails too (for machines where a test cannot
             mount a small tmpfs to fill for real).

A fault fires once per run: a restart that replays STEP does not fire it again. Each rank
keeps what it fired in RUN/checkpoints/faults-fired-rankN.json and reads every rank's file.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

KINDS = ("spike", "nan", "overflow", "crash", "slow-rank", "disk-full", "diverge")
SPIKE_STEPS = 3  # LR blow-up length of a spike
SURGE_DOUBLING = 10  # steps in which a diverge's LR surge doubles
_SPEC = re.compile(r"^(?P<kind>[a-z-]+)@(?P<first>\d+)(?:-(?P<last>\d+))?$")


@dataclass(frozen=True)
class Injection:
    kind: str
    first: int
    last: int

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.first}" + (f"-{self.last}" if self.last != self.first else "")


def parse_injections(specs) -> list[Injection]:
    out = []
    for spec in specs or []:
        m = _SPEC.match(str(spec).strip())
        if not m or m["kind"] not in KINDS:
            raise ValueError(f"--inject {spec!r}: expected KIND@STEP or KIND@FIRST-LAST with KIND one of {KINDS}")
        first = int(m["first"])
        last = int(m["last"]) if m["last"] else first
        if first < 1 or last < first:
            raise ValueError(f"--inject {spec!r}: steps must be >= 1 and FIRST <= LAST")
        out.append(Injection(m["kind"], first, last))
    return out


class InjectedCrash(RuntimeError):
    """The crash asked for by --inject crash@STEP."""


class Faults:
    """Which faults act at a step, on this rank; remembers what already fired."""

    def __init__(self, specs, *, ckpt_dir: Path, rank: int, world: int, spike_lr_factor: float, slow_s: float):
        self.injections = parse_injections(specs)
        self.ckpt_dir = Path(ckpt_dir)
        self.rank = rank
        self.last_rank = rank == world - 1
        self.spike_lr_factor = spike_lr_factor
        self.slow_s = slow_s
        self.fired: set[str] = set()
        self.spiked_at: int | None = None  # a spike fired by this process: its LR blow-up is still running
        self.surging: int | None = None  # the step a diverge fired at in this segment: the LR surge runs until it ends
        for path in self.ckpt_dir.glob("faults-fired-rank*.json"):
            with contextlib.suppress(OSError, ValueError):  # unreadable: a replay may fire it again, nothing worse
                self.fired.update(json.loads(path.read_text()))
        self.fired_before = frozenset(self.fired)  # by earlier launches of this run

    def active(self, kind: str, step: int) -> Injection | None:
        """The injection of `kind` acting at `step`, the first time a run reaches it."""
        fired = self.fired_before if kind == "disk-full" else self.fired  # a full disk stays full in this launch
        for inj in self.injections:
            if inj.kind == kind and inj.first <= step <= inj.last and self._key(inj, step) not in fired:
                return inj
        return None

    def fire(self, inj: Injection, step: int) -> None:
        self.fired.add(self._key(inj, step))
        if inj.kind == "spike":
            self.spiked_at = step
        self._save()

    def _save(self) -> None:
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.ckpt_dir / f".faults-fired-rank{self.rank}.json.tmp"
            tmp.write_text(json.dumps(sorted(self.fired)))
            tmp.replace(self.ckpt_dir / f"faults-fired-rank{self.rank}.json")
        except OSError:
            pass  # losing this only means a replay could fire the fault again

    def poisoned(self, batch_index: int) -> Injection | None:
        """The diverge injection whose bad data batch `batch_index` is (every time it is read), or None."""
        for inj in self.injections:
            if inj.kind == "diverge" and inj.first - 1 <= batch_index <= inj.last - 1:
                return inj
        return None

    def surge(self, inj: Injection, step: int) -> bool:
        """A diverge's LR surge starts (True) the first time the run reads its bad data; never again after."""
        key = f"{inj.kind}@{inj.first}"
        if key in self.fired:
            return False
        self.fired.add(key)
        self._save()
        self.surging = step
        return True

    def lr_factor(self, step: int) -> float:
        """LR blow-up of a spike: the spike's step and the next SPIKE_STEPS - 1; of a diverge: the segment."""
        if self.surging is not None:  # it feeds itself: x2 every SURGE_DOUBLING steps, until a rewind ends it
            return self.spike_lr_factor * 2.0 ** (max(0, step - self.surging) // SURGE_DOUBLING)
        if self.spiked_at is not None and 0 <= step - self.spiked_at < SPIKE_STEPS:
            return self.spike_lr_factor
        return 1.0

    @staticmethod
    def _key(inj: Injection, step: int) -> str:
        return f"{inj.kind}@{step}"

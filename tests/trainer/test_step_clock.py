"""compute_s tells a straggler apart where step_time_s cannot (real torchrun, 2 ranks, gloo).

In synchronous training the fast rank waits for the slow one inside the gradient all-reduce, so both
ranks log about the same step_time_s; the injected straggler (`--inject slow-rank@A-B`: the last rank
sleeps after its update) must show in the slow rank's compute_s alone.
"""

from __future__ import annotations

import numpy as np

from tests.trainer.helpers import Recorded, train

SLOW_S = 0.2


def test_compute_s_names_the_slow_rank_while_step_times_are_equal(tmp_path):
    train(tmp_path / "run", "--steps=30", "--inject", "slow-rank@11-30", f"--faults.slow_rank_s={SLOW_S}",
          "--telemetry.enabled=false", nproc=2)  # fmt: skip
    rec = Recorded(tmp_path / "run")
    # steps 12.. : the fast rank waits in every step's backward for the slow rank's sleep of the step before
    slow_steps = range(13, 31)
    st = {r: np.array([rec.metric("step_time_s", rank=r)[s] for s in slow_steps]) for r in (0, 1)}
    cs = {r: np.array([rec.metric("compute_s", rank=r)[s] for s in slow_steps]) for r in (0, 1)}
    ws = {r: np.array([rec.metric("wait_s", rank=r)[s] for s in slow_steps]) for r in (0, 1)}
    # end-to-end step time: both ranks pay the sleep (the fast one by waiting for it)
    assert np.median(st[0]) >= SLOW_S and np.median(st[1]) >= SLOW_S
    assert abs(np.median(st[0]) - np.median(st[1])) < 0.25 * SLOW_S
    # compute_s: the sleep is the slow rank's own time; the fast rank's is a few milliseconds of real work
    assert np.median(cs[1]) >= SLOW_S and np.median(cs[1]) - np.median(cs[0]) >= 0.75 * SLOW_S
    assert np.median(ws[0]) >= 0.75 * SLOW_S > np.median(ws[1])  # the fast rank is the one that waits
    # before the fault both ranks' compute times are alike
    before = [abs(rec.metric("compute_s", rank=1)[s] - rec.metric("compute_s", rank=0)[s]) for s in range(2, 11)]
    assert np.median(before) < 0.25 * SLOW_S

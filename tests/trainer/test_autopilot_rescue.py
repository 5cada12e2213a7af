"""The autopilot's headline (issue 18): a self-feeding divergence in a real 2-rank run, rescued under policy.

`diverge` is the fault the scenario needs: bad data that stays bad, and an LR surge that grows until a rewind.
The unit test pins its semantics; the slow test runs the real trainer under torchrun with
`midflight autopilot run` beside it (benchmarks/autopilot_rescue.py is the same scenario with the clean and
plain arms and the chart in docs/).
"""

from __future__ import annotations

import json
import math
import re

import pytest

from benchmarks.autopilot_rescue import run_scenario
from midflight.trainer.faults import SURGE_DOUBLING, Faults


def test_diverge_poisons_its_batches_every_time_and_surges_once_per_run(tmp_path):
    f = Faults(["diverge@150-152"], ckpt_dir=tmp_path, rank=0, world=2, spike_lr_factor=30.0, slow_s=0)
    assert [b for b in range(140, 160) if f.poisoned(b)] == [149, 150, 151]  # the batches steps 150..152 read
    assert f.lr_factor(150) == 1.0
    assert f.surge(f.poisoned(149), 150) and not f.surge(f.poisoned(150), 151)
    assert f.lr_factor(150) == 30.0 and f.lr_factor(150 + SURGE_DOUBLING) == 60.0 and f.lr_factor(400) > 1e6
    # a new segment (a rewind, a restart) reads what fired: the data is still bad, the surge does not come back
    again = Faults(["diverge@150-152"], ckpt_dir=tmp_path, rank=0, world=2, spike_lr_factor=30.0, slow_s=0)
    assert again.poisoned(150) and not again.surge(again.poisoned(150), 151) and again.lr_factor(200) == 1.0


@pytest.mark.slow
def test_autopilot_rescues_a_divergence_a_plain_run_does_not_survive(tmp_path):
    onset, steps = 150, 240  # detection needs a settled baseline: an onset at 100 is seen only once the surge grows
    res = run_scenario(tmp_path / "run", inject=True, autopilot=True, steps=steps, onset=onset, slow_s=0.03)
    detail = res["pilot_log"] + res["trainer_tail"]
    assert res["returncode"] == 0 and res["status"] == "finished", detail
    # the autopilot acted once, through the channel, authored by its policy, naming the incident
    (iv,) = res["interventions"]
    assert iv["action"] == "rewind" and iv["status"] == "applied" and iv["author"] == "autopilot:rollback-spike"
    params = json.loads(iv["params"])
    seen = int(re.search(r"on incident \w+:\w+@(\d+)", iv["note"])[1])  # the onset the detector found
    assert params["checkpoint_step"] <= seen - 50, iv  # at least 50 steps before it, as the policy says
    assert params["checkpoint_step"] < onset  # so from before the bad data: a healthy state
    assert params["changes"]["lr_multiplier"] == 0.5
    assert params["changes"]["skip_batches"] >= onset + 2 - params["checkpoint_step"]  # through the bad batches
    assert res["segments"] == ["rewound", "completed"]
    # the abandoned branch was diverging; the effective history finishes healthy, at the end of the run
    assert max(res["abandoned"].values()) > 8.0
    assert res["last_step"] == steps
    tail = [res["curve"][s] for s in sorted(res["curve"])[-10:]]
    assert all(math.isfinite(v) for v in tail) and sum(tail) / len(tail) < 4.0, tail
    assert max(v for s, v in res["curve"].items() if s > params["checkpoint_step"]) < 6.0

"""Fuzz the autopilot's policy file (untrusted: whoever can write it steers a live run).

A valid policy file is mutated line by line (a value replaced by a hostile one, a line dropped or repeated,
bytes cut); every document must either load into policies whose actions the intervention channel accepts, or
be refused with one line naming the file. Whatever loads is then run through `decide` against hostile
incidents, which must not raise.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from midflight.logbook.analysis.incident import Incident
from midflight.logbook.oncall import autopilot as ap
from midflight.logbook.record import interventions

from .fuzzing import fuzz_settings

SEED = """version = 1
[[policy]]
name = "rollback"
mode = "auto"
max_per_hour = 2
cooldown_s = 600
cooldown_steps = 10
[policy.when]
kind = ["loss_spike", "grad_norm_spike"]
classification = "divergent"
severity = "medium"
steps = [100, 5000]
[policy.then]
action = "rollback"
before = 50
skip = "window"
lr_factor = 0.5
changes = { clip = 0.3, beta2 = 0.95 }
[[policy]]
name = "tell"
mode = "suggest"
[policy.then]
action = "lr_multiplier"
factor = 0.5
""".splitlines()

HOSTILE_VALUES = [
    "nan",
    "inf",
    "-inf",
    "-1",
    "0",
    "1e308",
    "9223372036854775808",
    "true",
    '""',
    '"x"',
    "[]",
    "[[]]",
    "{}",
    "{ a = 1 }",
    '"' + "A" * 5000 + '"',
    '"\\u0000"',
    "[1, 2, 3]",
    '"rollback"',
    '"auto"',
    '"stop"',
    "1979-05-27",
    "0.0",
    "-0.0",
    "100",
    "100.0000001",
    '["loss_spike", 3]',
    '"window"',
    '"<script>"',
    "[-5, 5]",
]


@st.composite
def documents(draw) -> str:
    lines = list(SEED)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["value", "drop", "repeat", "cut", "key"]))
        if how == "value" and "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + draw(st.sampled_from(HOSTILE_VALUES))
        elif how == "drop":
            del lines[i]
        elif how == "repeat":
            lines.insert(i, lines[i])
        elif how == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif how == "key" and "=" in lines[i]:
            lines[i] = (
                draw(st.sampled_from(["factor", "max_norm", "n", "action", "mode", "kind", "zzz"]))
                + " ="
                + (lines[i].split("=", 1)[1])
            )
        if not lines:
            break
    return "\n".join(lines)


INCIDENTS = [
    Incident("loss_spike", 300, 305, float("nan"), 301, "high", "divergent"),
    Incident("grad_norm_spike", 0, 0, float("inf"), 0, "weird", "unknown"),
    Incident("loss_spike", 2**63 - 1, 2**63 - 1, 1.0, 2**63 - 1, "medium", "divergent"),
    Incident("nonfinite", 10, 5, -1.0, 7, "high", "recovering", metric="<b>x</b>"),
]


@fuzz_settings()
@given(documents())
def test_a_mutated_policy_file_loads_valid_or_fails_in_one_line(text):
    try:
        policies = ap.parse_policies(text, "p.toml")
    except ValueError as exc:
        msg = str(exc)
        assert msg.startswith("p.toml: ") and "\n" not in msg and len(msg) < 600, msg
        return
    for pol in policies:
        if pol.then.action != ap.ROLLBACK:
            assert interventions.validate(pol.then.action, pol.then.params) == pol.then.params
        else:
            assert pol.then.lr_factor is None or (math.isfinite(pol.then.lr_factor) and pol.then.lr_factor > 0)
    state = ap.State(now=1000.0, step=400, lr_multiplier=1.0)
    for d in ap.decide(policies, INCIDENTS, state, [0, 50, 250, 2**62]):
        if d.held is None:
            assert interventions.validate(d.action, d.params) == d.params

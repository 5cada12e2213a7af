"""Roles: what a metric IS (the training loss, the learning rate, ...), whatever the run calls it.

midflight's own trainer logs `loss`, `lr`, `grad_norm`, `loss_scale`, `tokens_per_s` and `step_time_s`;
everyone else has their own names: Hugging Face's Trainer logs `loss`, `learning_rate`, `grad_norm` and
`eval_loss` (`train/loss`, `train/learning_rate` through its W&B callback), Lightning users log `train_loss`
and its LearningRateMonitor `lr-AdamW`, Megatron writes `lm loss`, `learning-rate`, `grad-norm`,
`loss-scale`, torchtitan `loss_metrics/global_avg_loss` and `throughput(tps)`, nanoGPT `train/loss`.
Detection, the summary, the Runs table and the Live page ask for a ROLE, and this module says which of a
run's metric names plays it: one vocabulary for every layer (it imports nothing, like `values`), so the
importers' renaming and the read side's resolution can never disagree.

How a role is resolved for a run (`resolve`, once per run from its list of metric names, never from data):
1. a role the user declared (`midflight.init(..., roles={"loss": "my_loss"})`, kept in the segment header)
   wins when the run logs that name;
2. else the best alias the run logs: the role's own metric name first, then the aliases in the order
   below, then the patterns (Lightning's `lr-<Optimizer>`); a run that logs both `loss` and `train_loss`
   (Hugging Face's end-of-training average) gets `loss`.
Names are compared in `key` form (stripped, lower case, runs of spaces and hyphens as `_`), so `lm loss`,
`LM-Loss` and `lm_loss` are one alias. An alias in other units carries its scale to the role's unit
(`step_time_ms` x 0.001 = seconds); charts keep the user's values and name the unit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RESERVED = ("step", "wall_time")  # every point already has these (the Recorder refuses them as metric names)
MAX_NAME = 200


@dataclass(frozen=True)
class Role:
    name: str  # the role ("loss", "throughput")
    metric: str  # midflight's own metric name for it: what its trainer logs and the importers write
    title: str  # what a chart or a header calls it
    unit: str  # of `metric` ("" when it has none)
    aliases: tuple[tuple[str, float, str], ...]  # (key form, scale to `unit`, the alias's own unit), best first
    patterns: tuple[str, ...] = ()  # regular expressions over the key form, after every alias


# role -> aliases, best claim first (key form). Sources: Hugging Face Trainer's on_log keys and its W&B
# callback's `train/` and `eval/` prefixes; Lightning's LearningRateMonitor (`lr-<Optimizer>`, `/pg<N>`) and
# its `grad_2.0_norm_total`; Megatron-LM's TensorBoard tags and console fields; torchtitan's metric logger;
# nanoGPT; NeMo (`reduced_train_loss`, `train_step_timing`); fairseq (`gnorm`, `wps`, `loss_scale`).
_S = 1.0
ROLES: dict[str, Role] = {
    r.name: r
    for r in (
        Role(
            "loss",
            "loss",
            "loss",
            "",
            tuple(
                (a, _S, "")
                for a in (
                    "loss",
                    "train/loss",
                    "loss/train",
                    "train_loss",
                    "training_loss",
                    "train/train_loss",
                    "lm_loss",
                    "train/lm_loss",
                    "reduced_train_loss",
                    "loss_metrics/global_avg_loss",
                    "train_loss_step",
                    "train/loss_step",
                )
            ),
        ),
        Role(
            "eval_loss",
            "eval_loss",
            "eval loss",
            "",
            tuple(
                (a, _S, "")
                for a in (
                    "eval_loss",
                    "eval/loss",
                    "loss/eval",
                    "val_loss",
                    "val/loss",
                    "loss/val",
                    "valid_loss",
                    "valid/loss",
                    "validation_loss",
                    "validation/loss",
                    "loss/validation",
                    "lm_loss_validation",
                    "validation_metrics/loss",
                )
            ),
        ),
        Role(
            "lr",
            "lr",
            "learning rate",
            "",
            tuple(
                (a, _S, "")
                for a in (
                    "lr",
                    "learning_rate",
                    "train/learning_rate",
                    "train/lr",
                    "current_lr",
                    "optimizer/lr",
                    "lr/train",
                )
            ),
            # Lightning's LearningRateMonitor: lr-AdamW, lr-SGD/pg0 (a scheduler's name, `lr-<name>`, too);
            # torchtitan's lr/AdamW; composer's lr-AdamW/group0. Only the first param group: it is the one
            # the schedule is written for; `lr-Adam-momentum` is not a learning rate.
            (r"lr[_/][a-z][a-z0-9]*(/pg0|/group0)?",),
        ),
        Role(
            "grad_norm",
            "grad_norm",
            "grad norm",
            "",
            tuple(
                (a, _S, "")
                for a in (
                    "grad_norm",
                    "train/grad_norm",
                    "gnorm",
                    "train/gnorm",
                    "total_norm",
                    "grad_norm/total",
                    "gradient_norm",
                    "grad_2.0_norm_total",
                    "optimizer/grad_norm",
                )
            ),
        ),
        Role(
            "loss_scale",
            "loss_scale",
            "loss scale",
            "",
            tuple(
                (a, _S, "") for a in ("loss_scale", "train/loss_scale", "scaler/scale", "grad_scale", "amp/loss_scale")
            ),
        ),
        Role(
            "throughput",
            "tokens_per_s",
            "tokens/s",
            "tokens/s",
            tuple(
                (a, _S, "tokens/s")
                for a in (
                    "tokens_per_s",
                    "tokens_per_sec",
                    "tokens_per_second",
                    "train/tokens_per_second",
                    "train/tokens_per_sec",
                    "throughput",
                    "throughput(tps)",
                    "tps",
                    "tokens/s",
                    "wps",
                )
            ),
        ),
        Role(
            "step_time",
            "step_time_s",
            "step time",
            "s",
            (
                ("step_time_s", _S, "s"),
                ("step_time", _S, "s"),
                ("iteration_time", _S, "s"),
                ("train_step_timing", _S, "s"),
                ("time_metrics/end_to_end(s)", _S, "s"),
                ("step_time_ms", 1e-3, "ms"),
                ("iter_time_ms", 1e-3, "ms"),
                ("iteration_time_ms", 1e-3, "ms"),
                ("elapsed_time_per_iteration_ms", 1e-3, "ms"),
            ),
        ),
        Role("param_norm", "param_norm", "param norm", "", (("param_norm", _S, ""), ("params_norm", _S, ""))),
    )
}
# a role may also be declared by midflight's metric name for it (`tokens_per_s` for throughput)
_BY_METRIC = {r.metric: r.name for r in ROLES.values()}
_ALIAS: dict[str, tuple[str, int, float, str]] = {}  # key form -> (role, rank, scale, unit)
for _r in ROLES.values():
    for _i, (_a, _scale, _unit) in enumerate(_r.aliases):
        if _a in _ALIAS:
            raise AssertionError(f"alias {_a!r} claimed by {_ALIAS[_a][0]} and {_r.name}")
        _ALIAS[_a] = (_r.name, _i, _scale, _unit)
_PATTERNS = [
    (re.compile(p), r.name, len(r.aliases) + i, r.unit) for r in ROLES.values() for i, p in enumerate(r.patterns)
]
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def key(name: str) -> str:
    """The form names are compared in: stripped, lower case, runs of spaces and hyphens as one underscore."""
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def claim(name: str) -> tuple[str, int, float, str] | None:
    """(role, rank of the claim: 0 is best, scale to the role's unit, the name's unit) if `name` is a known
    alias or matches a role's pattern, else None."""
    k = key(name)
    hit = _ALIAS.get(k)
    if hit is not None:
        return hit
    for rx, role, rank, unit in _PATTERNS:
        if rx.fullmatch(k):
            return role, rank, 1.0, unit
    return None


def role_of(name: str) -> str | None:
    """The role a role name or midflight's metric name for it stands for ("tokens_per_s" -> "throughput")."""
    return name if name in ROLES else _BY_METRIC.get(name)


@dataclass(frozen=True)
class Resolved:
    """The metric that plays a role in one run."""

    role: str
    metric: str  # the run's own name for it
    scale: float = 1.0  # value x scale = the role's unit (step_time_ms: 0.001)
    unit: str = ""  # the unit the run's values are in ("ms")
    declared: bool = False

    @property
    def canonical(self) -> str:
        return ROLES[self.role].metric

    def title(self, title: str | None = None) -> str:
        """A chart's title with the user's name kept: "loss (train/loss)", or "loss" when they are the same."""
        title = title or ROLES[self.role].title
        return title if self.metric in (title, self.canonical) else f"{title} ({self.metric})"


def resolve(names, declared: dict | None = None) -> dict[str, Resolved]:
    """role -> the metric that plays it in a run logging `names`, for every role it plays (see the module
    docstring). `declared`: {role: metric name} from the run's segment headers (already validated, or
    skipped here when not usable). Pure and cheap: call it once per run with the run's metric names."""
    present = set(names)
    out: dict[str, Resolved] = {}
    for role, metric in (declared or {}).items():
        role = role_of(role) if isinstance(role, str) else None
        if role is not None and isinstance(metric, str) and metric in present:
            c = claim(metric)
            scale, unit = (c[2], c[3]) if c is not None and c[0] == role else (1.0, ROLES[role].unit)
            out[role] = Resolved(role, metric, scale, unit, declared=True)
    taken = {r.metric for r in out.values()}
    best: dict[str, tuple] = {}
    for n in present - taken:
        c = claim(n)
        if c is None or c[0] in out:
            continue
        rank = (c[1], n != ROLES[c[0]].metric, n)  # the exact name before a case or spelling variant
        if c[0] not in best or rank < best[c[0]][0]:
            best[c[0]] = (rank, Resolved(c[0], n, c[2], c[3]))
    out.update({role: r for role, (_, r) in best.items()})
    return out


def validate(roles) -> dict[str, str]:
    """A user's declared roles as {role: metric name}; TypeError or ValueError with the reason otherwise.
    Keys are role names (or midflight's metric name for the role); values the run's own metric names."""
    if roles is None:
        return {}
    if not isinstance(roles, dict):
        raise TypeError(f"roles must be a dict {{role: metric name}}, not {type(roles).__name__}")
    out: dict[str, str] = {}
    for role, metric in roles.items():
        if not isinstance(role, str) or role_of(role) is None:
            raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        if not isinstance(metric, str):
            raise TypeError(f"roles[{role!r}] must be a metric name (text), not {type(metric).__name__}")
        if not metric.strip() or metric in RESERVED or len(metric) > MAX_NAME or _UNSAFE.search(metric):
            raise ValueError(
                f"roles[{role!r}] = {metric[:60]!r} is not a usable metric name "
                f"(empty, reserved, longer than {MAX_NAME} or with control characters)"
            )
        canonical = role_of(role)
        if canonical in out:
            raise ValueError(f"role {canonical!r} declared twice")
        if metric in out.values():
            raise ValueError(f"{metric!r} declared for two roles")
        out[canonical] = metric
    return out

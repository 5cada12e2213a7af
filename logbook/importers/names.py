"""Metric names for imported tables and TensorBoard tags: one mapping, shared by both importers.

Other tools name the same quantity many ways (`train/loss`, `lm loss`, `gnorm`,
`learning-rate`). The analyses and the dashboard look for midflight's names
(`loss`, `grad_norm`, `lr`, ...; docs/architecture.md), so the obvious aliases are
renamed and everything else keeps its own name. When two columns or tags would
get the same name, the better claim wins (the exact name first, then the order of
ALIASES) and the other keeps its own name, so no series silently overwrites another.
"""

from __future__ import annotations

import re

# midflight name -> aliases, best claim first; matched after `key()` (lower case, spaces and hyphens as _)
ALIASES: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "train/loss", "train_loss", "lm_loss", "train/lm_loss", "reduced_train_loss"),
    "grad_norm": ("grad_norm", "train/grad_norm", "gnorm", "train/gnorm"),
    "lr": ("lr", "train/learning_rate", "learning_rate", "train/lr", "current_lr"),
    "loss_scale": ("loss_scale", "train/loss_scale"),
    "tokens_per_s": ("tokens_per_s", "tokens_per_second", "train/tokens_per_second", "throughput"),
    "param_norm": ("param_norm", "params_norm"),
    "step_time_s": ("step_time_s", "iteration_time", "train_step_timing"),
}
_RANK = {alias: (canon, i) for canon, aliases in ALIASES.items() for i, alias in enumerate(aliases)}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


def key(name: str) -> str:
    """The form names are compared in: stripped, lower case, spaces and hyphens as underscores."""
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def safe(name: str) -> str:
    """A metric name as given, stripped, with control characters (newlines, tabs) replaced."""
    return _UNSAFE.sub("_", name.strip())


def canonical(name: str) -> tuple[str, int] | None:
    """(midflight name, rank of the claim: 0 is best) if `name` is a known alias."""
    return _RANK.get(key(name))


class Namer:
    """Source names -> metric names, resolving two claims on one midflight name (see the module docstring).

    A table knows all its columns at once (`assign`: best claims first). TensorBoard
    tags arrive one by one (`__call__`), so there the first tag to claim a name keeps
    it: data already written under it cannot be taken back. A name that is taken
    (also a tag's own name) gets a `.2`, `.3`, ... suffix.
    """

    def __init__(self):
        self.names: dict[str, str] = {}
        self.taken: set[str] = set()

    def assign(self, columns: list[str]) -> dict[str, str]:
        for c in sorted(columns, key=lambda c: (canonical(c) or ("", len(_RANK)))[1]):
            self(c)
        return {c: self.names[c] for c in columns}

    def __call__(self, source: str) -> str:
        name = self.names.get(source)
        if name is not None:
            return name
        claim = canonical(source)
        name = claim[0] if claim is not None and claim[0] not in self.taken else (safe(source) or "unnamed")
        base, n = name, 1
        while name in self.taken:
            n += 1
            name = f"{base}.{n}"
        self.taken.add(name)
        self.names[source] = name
        return name

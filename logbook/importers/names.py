"""Metric names for imported tables and TensorBoard tags: the shared role vocabulary (logbook.roles), applied
once at import.

Other tools name the same quantity many ways (`train/loss`, `lm loss`, `gnorm`, `learning-rate`). An alias
in the role's own unit is renamed to midflight's name for the role (`loss`, `grad_norm`, `lr`, ...), so an
imported run reads like a recorded one; everything else (and an alias in other units, `step_time_ms`) keeps
its own name, and the read side resolves it like any Recorder run's (logbook.roles.resolve). When two
columns or tags would get the same name, the better claim wins (the exact name first, then the order of
the aliases in logbook.roles) and the other keeps its own name, so no series silently overwrites another.
"""

from __future__ import annotations

import re

from midflight.logbook import roles

key = roles.key
# the roles an import renames to midflight's name; an evaluation loss keeps its own (`eval/loss`, `val_loss`:
# which split it is matters to a reader) and the read side still finds it (logbook.roles.resolve)
RENAMED = ("loss", "lr", "grad_norm", "loss_scale", "throughput", "step_time", "param_norm")
# midflight name -> aliases, best claim first (key form): the renames an import makes, from logbook.roles
ALIASES: dict[str, tuple[str, ...]] = {
    roles.ROLES[r].metric: tuple(a for a, scale, _ in roles.ROLES[r].aliases if scale == 1.0) for r in RENAMED
}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


def safe(name: str) -> str:
    """A metric name as given, stripped, with control characters (newlines, tabs) replaced."""
    return _UNSAFE.sub("_", name.strip())


def canonical(name: str) -> tuple[str, int] | None:
    """(midflight name, rank of the claim: 0 is best) if `name` is an alias in the role's own unit."""
    c = roles.claim(name)
    if c is None or c[2] != 1.0 or c[0] not in RENAMED:
        return None
    return roles.ROLES[c[0]].metric, c[1]


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
        for c in sorted(columns, key=lambda c: (canonical(c) or ("", 1 << 30))[1]):
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

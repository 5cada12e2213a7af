"""Restart lineage: the segment tree, and which segment's data is the effective history.

The head is the newest segment. The effective path runs from the root to the
head through parent links. Each segment on the path owns the steps after its
own start (its resume step) up to the start of the next segment on the path;
the head owns everything after its start. Everything else — abandoned branches,
and steps a segment logged past the point a later rollback resumed from — is
superseded: kept, queryable, but not part of the effective curve.
"""

from __future__ import annotations

from dataclasses import dataclass

NEG_INF = -(2**62)
POS_INF = 2**62


@dataclass(frozen=True)
class Seg:
    segment_id: str
    parent_id: str | None
    resume_step: int | None
    start_time: float | None
    first_step: int | None  # first step actually logged, for segments without a resume step


@dataclass(frozen=True)
class Range:
    """Segment `segment_id` is effective for lo < step <= hi."""

    segment_id: str
    lo: int
    hi: int


def head(segs: list[Seg]) -> Seg | None:
    if not segs:
        return None
    return max(segs, key=lambda s: (s.start_time if s.start_time is not None else float("-inf"), s.segment_id))


def effective_path(segs: list[Seg]) -> list[Seg]:
    """Root-to-head chain of segments; a missing or cyclic parent ends the chain."""
    by_id = {s.segment_id: s for s in segs}
    path: list[Seg] = []
    seen: set[str] = set()
    node = head(segs)
    while node is not None and node.segment_id not in seen:
        seen.add(node.segment_id)
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    return path[::-1]


def _start(seg: Seg, is_root: bool) -> int:
    if seg.resume_step is not None:
        return seg.resume_step
    if is_root or seg.first_step is None:
        return NEG_INF
    return seg.first_step - 1


def effective_ranges(segs: list[Seg]) -> list[Range]:
    path = effective_path(segs)
    starts = [_start(s, i == 0) for i, s in enumerate(path)]
    ranges = []
    for i, seg in enumerate(path):
        hi = starts[i + 1] if i + 1 < len(path) else POS_INF
        ranges.append(Range(seg.segment_id, starts[i], hi))
    return ranges

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

NEG_INF = -1  # below every step (steps are >= 0): a range is lo < step <= hi
POS_INF = 2**63 - 1  # the largest step the rule allows (logbook.values.step), inclusive


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


@dataclass(frozen=True)
class Span:
    """Steps cut < step <= last_step of `segment_id` are not in the effective history."""

    segment_id: str
    cut: int  # the last step it kept (a resume step); steps after it were discarded
    last_step: int
    discarded_by: str | None  # the path segment whose start superseded them
    on_path: bool  # False: the whole segment is an abandoned branch


def abandoned_spans(segs: list[Seg], last_steps: dict[str, int | None]) -> list[Span]:
    """Pure: which logged steps of which segment the effective history discarded.

    last_steps: the last step each segment logged (None if it logged none).
    """
    path = effective_path(segs)
    ranges = {r.segment_id: r for r in effective_ranges(segs)}
    pos = {s.segment_id: i for i, s in enumerate(path)}
    by_id = {s.segment_id: s for s in segs}
    spans = []
    for s in segs:
        last = last_steps.get(s.segment_id)
        if last is None:
            continue
        if s.segment_id in pos:
            hi = ranges[s.segment_id].hi
            if last > hi:
                nxt = path[pos[s.segment_id] + 1].segment_id
                spans.append(Span(s.segment_id, hi, int(last), nxt, True))
            continue
        start = _start(s, s.parent_id is None)  # its own first step - 1
        if start == NEG_INF:
            start = (s.first_step - 1) if s.first_step is not None else 0
        spans.append(Span(s.segment_id, int(start), int(last), _superseder(s, by_id, pos, path), False))
    return spans


def _superseder(seg: Seg, by_id: dict, pos: dict, path: list) -> str | None:
    """The path segment that replaced an off-path branch: the child, on the path, of its nearest path ancestor."""
    seen = set()
    node = seg
    while node is not None and node.segment_id not in seen:
        seen.add(node.segment_id)
        if node.segment_id in pos:
            i = pos[node.segment_id]
            return path[i + 1].segment_id if i + 1 < len(path) else None
        node = by_id.get(node.parent_id) if node.parent_id else None
    return path[0].segment_id if path else None  # a replaced lineage: the new root superseded it

"""The restart tree's layout: one lane per segment, shared by the dashboard's figure and the exports.

A lane runs from the step the segment started at (its resume step, else its first logged step) to
its last step; it knows its parent's lane (for the connector drawn at the resume step), how the
segment ended and whether it is on the effective path (drawn thick).
"""

from __future__ import annotations

import pandas as pd

from midflight.logbook.values import first, text


def lanes(segments: pd.DataFrame) -> list[dict]:
    """Lanes of `queries.segments()` rows, oldest first: lane, id, start, end, parent_lane, end_reason,
    effective, reason."""
    if segments.empty:
        return []
    ids = list(segments["segment_id"])
    lane_of = {sid: i for i, sid in enumerate(ids)}
    out = []
    for i, s in enumerate(segments.itertuples()):
        start = first(s.resume_step, s.start_step, 0)
        end = first(s.end_step, start)
        parent = text(s.parent_id)
        out.append(
            {
                "lane": i,
                "id": s.segment_id,
                "start": int(start),
                "end": int(end),
                "parent_lane": lane_of.get(parent) if parent else None,
                "end_reason": s.end_reason,
                "effective": bool(s.effective),
                "reason": text(s.reason),
            }
        )
    return out

"""Triage of detected incidents: which are still open, and what kind of annotation closes one.

An incident is open until someone explains it: an annotation whose step range overlaps it closes
it (the Live header counts open ones, the Incidents page marks them). Incidents inside abandoned
branches are history, never open.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# the annotation kind offered when annotating an incident of this kind (anything else: "note")
ANNOTATION_KIND = {
    "straggler": "hardware",
    "throttling": "hardware",
    "ecc_errors": "hardware",
    "device_silent": "hardware",
    "loss_scale_collapse": "optimizer",
}


def annotation_kind(incident_kind: str) -> str:
    """The annotation kind for an incident kind: hardware trouble is 'hardware', a collapsing loss scale
    'optimizer', everything else a 'note'."""
    return ANNOTATION_KIND.get(incident_kind, "note")


def open_incidents(incidents, annotations: pd.DataFrame) -> list:
    """Incidents on the effective history that no annotation covers yet. annotations: step, step_end
    (NaN for a single step), as `queries.annotations` returns them. None (no scan yet) gives []."""
    live = [i for i in incidents or () if not i.superseded]
    if annotations.empty or not live:
        return live
    starts = annotations["step"].to_numpy(dtype="float64")
    ends = annotations["step_end"].fillna(annotations["step"]).to_numpy(dtype="float64")
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], np.maximum.accumulate(ends[order])  # the furthest end of any earlier start
    out = []
    for inc in live:
        k = np.searchsorted(starts, inc.end_step, side="right")  # annotations starting at or before its end
        if k == 0 or ends[k - 1] < inc.start_step:
            out.append(inc)
    return out

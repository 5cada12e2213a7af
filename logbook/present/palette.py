"""The colours of end reasons and markers, and the markers' symbols, shared by the dashboard and the exports.

One place, so a crashed segment or an incident marker looks the same on a page, in a PNG and in
an HTML export.
"""

END_COLOURS = {
    "completed": "#2ca02c",
    "stopped": "#17becf",
    "running": "#1f77b4",
    "crashed": "#d62728",
    "rewound": "#ff7f0e",
    "unknown": "#7f7f7f",
}
MARKER_COLOURS = {
    "restart": "#ff7f0e",
    "incident": "#d62728",
    "annotation": "#1f77b4",
    "intervention": "#9467bd",
    "autopilot": "#17becf",  # an intervention the autopilot issued under a policy (author autopilot:<policy>)
}
MARKER_SYMBOLS = {
    "restart": "diamond",
    "incident": "x",
    "annotation": "triangle-down",
    "intervention": "star",
    "autopilot": "hexagram",
}
GOODPUT_COLOURS = {  # the goodput ledger's categories (analysis.goodput.CATEGORIES)
    "productive": "#2ca02c",
    "wasted": "#d62728",
    "downtime": "#7f7f7f",
    "checkpoint": "#1f77b4",
    "skipped": "#ff7f0e",
    "stall": "#9467bd",
    "straggler": "#8c564b",
    "unattributed": "#c7c7c7",
}

"""Text for people: escaping user strings for Markdown and HTML, and numbers, times and sizes as words.

Every string that came from a user (run names, annotation text, reasons, notes, errors) passes
through `md()` or `esc()` before it reaches a written logbook, so it is always shown as the
characters typed and can never become markup, a table column or a script.
"""

from __future__ import annotations

import html
import math
import re
import time

from midflight.logbook.values import missing

# What every page, export and the summary say for a run with no energy figure at all (no silent default).
NO_ENERGY = (
    "no energy data: no power telemetry and no TDP. Record device telemetry (the trainer does), or give a device "
    "and TDP at init (midflight.init(..., device='A100-SXM4-80GB', tdp_w=400)) or to the report "
    "(midflight summary --tdp-w 400) for a labelled nameplate estimate."
)
BASIS_WORDS = {
    "metered": "metered",
    "estimate": "estimate (TDP x utilisation)",
    "nameplate": "nameplate (TDP x time)",
    "none": "no data",
}


def energy_basis(basis: str | None) -> str:
    """A run's energy basis for people: 'metered', 'nameplate (TDP x time)', 'metered + no data', ..."""
    parts = (basis or "none").split("+")
    return " + ".join(BASIS_WORDS.get(p, p) for p in parts)


# Inline ASCII punctuation that means something to CommonMark, GFM (tables, strikethrough) or to the
# renderers that add LaTeX ($) and emoji shortcodes (:). CommonMark lets any of them be
# backslash-escaped; <, > and & become entities instead, which every renderer shows as the character.
# Block syntax (#, -, +, 1., >, =) only counts at the start of a line, and user text never starts one
# (lines are joined with <br>); a leading one is escaped anyway.
_MD_ESCAPE = re.compile(r"([\\`*_{}\[\]()!|~$:])")
_MD_LEADING = re.compile(r"^(\d{1,9}(?=[.)](?:\s|$))|[#+\-=>](?=[\s#=\-]|$))")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md(value, limit: int | None = None) -> str:
    """User text as inert Markdown inline text: one line per source line joined with <br>, every markup
    character escaped. Safe in paragraphs, list items and table cells alike."""
    lines = [" ".join(line.split()) for line in str(value).splitlines()]
    s = "\n".join(line for line in lines if line)
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    s = "".join(_ENTITIES.get(ch, ch) for ch in s)
    s = _MD_ESCAPE.sub(r"\\\1", s)
    s = _MD_LEADING.sub(lambda m: m.group(0) + "\\" if m.group(0)[0].isdigit() else "\\" + m.group(0), s)
    return s.replace("\n", "<br>")


def md_code(value) -> str:
    """Text as a fenced code block whose fence is longer than any backtick run inside it, so nothing in
    the text can close it (code blocks are shown verbatim by every Markdown renderer)."""
    s = str(value).rstrip("\n")
    longest = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{s}\n{fence}"


def esc(value, limit: int | None = None) -> str:
    """User text as inert HTML text (and attribute values)."""
    s = str(value)
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return html.escape(s, quote=True)


LABEL_CHARS = 300  # hover text is a glimpse; the full text is in the logbook tables


def one_line(value, limit: int = LABEL_CHARS) -> str:
    """User text on one line, cut to `limit` characters (widget labels, which Streamlit shows as text)."""
    s = " ".join(str(value).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def safe(value, limit: int = LABEL_CHARS) -> str:
    """User text as inert Plotly text (hover labels, titles, legends): one line, HTML-escaped."""
    return esc(one_line(value, limit))


def num(v) -> str:
    """A number for people: integers with thousands separators, others to 4 significant digits."""
    if missing(v):
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:.4g}"
    return str(v)


def when(t) -> str:
    """A Unix time as UTC date and time."""
    if missing(t):
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t)))


def duration(seconds) -> str:
    """Seconds as the two largest units: 3 d 4 h, 2 h 5 min, 4 min 10 s, 12.3 s."""
    if missing(seconds):
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.3g} s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        n = int(s // size)
        if n or parts:
            parts.append(f"{n} {unit}")
        s -= n * size
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if not p.startswith("0 ")) or "0 s"


def energy(joules) -> str:
    """Energy in the unit that reads best: J, kJ, Wh, kWh or MWh."""
    if missing(joules):
        return "—"
    for limit, div, unit in ((1e4, 1, "J"), (3.6e5, 1e3, "kJ"), (3.6e6, 3600, "Wh"), (3.6e9, 3.6e6, "kWh")):
        if abs(joules) < limit:
            return f"{joules / div:.3g} {unit}"
    return f"{joules / 3.6e9:.4g} MWh"


def mass(kg) -> str:
    """CO2eq mass: mg, g, kg or t."""
    if missing(kg):
        return "—"
    for limit, div, unit in ((1e-3, 1e-6, "mg"), (1, 1e-3, "g"), (1e3, 1, "kg")):
        if abs(kg) < limit:
            return f"{kg / div:.3g} {unit}"
    return f"{kg / 1e3:.4g} t"


def safe_filename(name: str) -> str:
    """A run id as a file-name stem: anything but letters, digits, dot, dash and underscore becomes _."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return s or "run"

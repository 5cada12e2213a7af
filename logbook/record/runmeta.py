"""What people say about a run, beside its numbers: text samples, tags, notes, group, summary values, alerts.

These are W&B's habits (`run.summary["best"] = x`, `tags=[...]`, `notes=`, `group=`, logging a generated
sample as text), kept as ordinary records: the header holds what init was given (`tags`, `notes`, `group`,
`job_type`), and changes after init are events (`summary`, `tags`, `notes`, `text`, `alert`), so a
crashed run keeps everything it said up to the crash and the store is still rebuilt from the logs alone.

All of it is user text: stored as text, never HTML, bounded in length, and checked at the call site with
one-line TypeError / ValueError, like a metric value. The limits are generous for people and small for a
log line: a tag is a label, not a paragraph.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, MutableMapping

MAX_TEXT = 32_768  # characters in one logged text sample (a generated completion, a prompt)
MAX_NOTES = 4_096  # characters of a run's notes
MAX_LABEL = 256  # characters of a group, job type, alert title or summary key
MAX_TAG = 64  # characters of one tag (W&B's limit too)
MAX_TAGS = 100  # tags on one run
MAX_SUMMARY_TEXT = 1_024  # characters of one text value in the summary
ALERT_LEVELS = ("INFO", "WARN", "ERROR")


class Text:
    """A text sample to log at a step: `run.log({"sample": Text(generated)}, step=s)` records a `text` event.

    A plain `str` value does the same; `Text` says so explicitly (and is what W&B-style code reaches for).
    At most MAX_TEXT characters: ValueError beyond, so a runaway string never becomes a giant log line.
    """

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = check_text("Text()", text, MAX_TEXT)

    def __repr__(self) -> str:
        return f"Text({self.text!r:.60})"


def check_text(where: str, value, limit: int, *, what: str = "text") -> str:
    """`value` as plain text of at most `limit` characters; TypeError / ValueError (one line) otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{where}: {what} must be text (str), not {type(value).__name__} ({value!r:.60})")
    if len(value) > limit:
        raise ValueError(f"{where}: {what} is {len(value):,} characters; at most {limit:,} are kept")
    return str(value)  # a str subclass (numpy.str_) as plain text


def check_label(where: str, value, limit: int = MAX_LABEL, *, what: str) -> str | None:
    """A short optional label (group, job type): None, or non-empty text without line breaks."""
    if value is None:
        return None
    value = check_text(where, value, limit, what=what)
    if not value.strip() or "\n" in value or "\r" in value:
        raise ValueError(f"{where}: {what} must be one non-empty line of text, not {value!r:.60}")
    return value


def check_tags(where: str, tags) -> tuple[str, ...]:
    """Tags as a tuple of distinct short labels, in the given order."""
    if tags is None:
        return ()
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
        raise TypeError(f"{where}: tags must be a list of text, not {type(tags).__name__} ({tags!r:.60})")
    out = tuple(dict.fromkeys(check_label(where, t, MAX_TAG, what="a tag") for t in tags))
    if None in out:
        raise TypeError(f"{where}: a tag must be text, not None")
    if len(out) > MAX_TAGS:
        raise ValueError(f"{where}: {len(out)} tags; at most {MAX_TAGS}")
    return out


def summary_value(where: str, key, value):
    """A value the summary keeps: a real number (NaN/Inf kept), a bool, text or None; TypeError otherwise.

    A 0-d tensor or one-element array is read now (a device sync: the summary is set rarely, not per step).
    """
    if value is None or type(value) in (int, float, bool):
        return value
    if isinstance(value, str):
        return check_text(where, value, MAX_SUMMARY_TEXT, what=f"summary[{key!r:.60}]")
    mod = type(value).__module__.partition(".")[0]
    if mod in ("torch", "numpy") and getattr(getattr(value, "dtype", None), "is_complex", False) is False:
        kind = getattr(value.dtype, "kind", None)  # numpy's; torch dtypes have is_floating_point instead
        size = value.numel() if mod == "torch" else getattr(value, "size", 1)
        if size == 1 and (mod == "torch" or kind in ("b", "i", "u", "f")):
            v = value.reshape(()).item() if mod == "torch" else value.item()
            if type(v) in (int, float, bool):
                return v
    elif isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(
        f"{where}: summary[{key!r:.60}] is {type(value).__name__} ({value!r:.60}); "
        "the summary keeps numbers, text and bools (log distributions with run.log and Histogram)"
    )


class Summary(MutableMapping):
    """`run.summary`: the run's final values, W&B style. `summary["best_val"] = 1.2`, `summary.update({...})`.

    Each change is recorded as a `summary` event ({"values": {key: value}}, or {"removed": [key]}); the
    last value of a key wins when the summary is read back (`midflight summary`). Keys: text of at most
    MAX_LABEL characters; values: see `summary_value`. Updates in one flush are written as one event.
    """

    def __init__(self, record):
        self._values: dict = {}
        self._record = record  # (values: dict, removed: list) -> None: queues the event

    def _key(self, key) -> str:
        if not isinstance(key, str) or not key:
            raise TypeError(f"run.summary: a key must be non-empty text, not {type(key).__name__} ({key!r:.60})")
        if len(key) > MAX_LABEL:
            raise ValueError(f"run.summary: a key is {len(key):,} characters; at most {MAX_LABEL}")
        return str(key)

    def __setitem__(self, key, value) -> None:
        self.update({key: value})

    def update(self, other=(), /, **kwargs) -> None:  # one event for the whole update
        items = dict(other.items() if isinstance(other, Mapping) else other, **kwargs)
        checked = {}
        for key, value in items.items():
            key = self._key(key)
            checked[key] = summary_value("run.summary", key, value)
        if not checked:
            return
        self._values.update(checked)
        self._record(checked, [])

    def __delitem__(self, key) -> None:
        del self._values[key]
        self._record({}, [key])

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Summary({self._values!r})"

    def __getattr__(self, name):  # W&B's run.summary.best_val
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"run.summary has no key {name!r}") from None


def check_alert(title, text, level) -> tuple[str, str, str]:
    """(title, text, LEVEL) of an alert; level INFO, WARN or ERROR (any case, or W&B's AlertLevel)."""
    title = check_label("run.alert()", title, what="title")
    if title is None:
        raise TypeError("run.alert(): title must be text, not None")
    text = check_text("run.alert()", text, MAX_NOTES, what="text")
    name = getattr(level, "value", level)  # an enum member (W&B's AlertLevel.WARN) by its value
    if not isinstance(name, str) or name.upper() not in ALERT_LEVELS:
        raise ValueError(f"run.alert(): level must be one of {', '.join(ALERT_LEVELS)}, not {level!r:.40}")
    return title, text, name.upper()

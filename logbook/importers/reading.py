"""Reading other trainers' files: streamed lines with progress, and their wall clocks.

A training log can be gigabytes. It is read line by line (gzip too), so memory
stays bounded, with a byte progress bar on stderr for big files. Undecodable
bytes are replaced, never fatal: a corrupt line is then counted by the parser.
A damaged gzip stream ends the file where it breaks: the lines before it are
kept and the break is reported (`bad`), or is a one-line ValueError.
"""

from __future__ import annotations

import gzip
import re
import sys
import zlib
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Time-zone abbreviations people write in logs and logbooks, to IANA zones (one table for every importer).
ZONES = {
    "ET": "America/New_York",
    "EST": "America/New_York",
    "EDT": "America/New_York",
    "PT": "America/Los_Angeles",
    "PST": "America/Los_Angeles",
    "PDT": "America/Los_Angeles",
    "CET": "Europe/Paris",
    "CEST": "Europe/Paris",
    "JZ": "Europe/Paris",  # BLOOM's "JZ time" (Jean Zay, France)
    "UTC": "UTC",
    "GMT": "UTC",
}

PROGRESS_MIN_BYTES = 8 << 20
GZIP_MAGIC = b"\x1f\x8b"
STREAM_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError

_STAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,6}))?")


def open_text(path: Path, *, plain: bool = False):
    """A text stream over a plain or gzip-compressed file (`plain`: read it as text whatever its first bytes)."""
    path = Path(path)
    with open(path, "rb") as f:
        gz = f.read(2) == GZIP_MAGIC
    if gz and not plain:
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def lines(path: Path, *, progress: bool = False, bad=None):
    """(line_no, text without its newline) for every line of `path`, streamed.

    A file that only starts like gzip (its first line cannot be decompressed) is read as text. A
    stream that breaks part-way (a truncated or corrupt gzip file) ends there: `bad(line_no, message)`
    is told, or without `bad` it is a one-line ValueError."""
    path = Path(path)
    size = path.stat().st_size
    bar = None
    if progress and size >= PROGRESS_MIN_BYTES:
        from tqdm import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"import {path.name}", file=sys.stderr)
    try:
        with open_text(path) as f:
            try:
                first = f.readline()
            except STREAM_ERRORS:
                first = None
            if first is not None:
                yield from _lines(f, first, path, size, bar, bad)
                return
        with open_text(path, plain=True) as f:
            yield from _lines(f, f.readline(), path, size, bar, bad)
    finally:
        if bar is not None:
            bar.close()


def _lines(f, first: str, path: Path, size: int, bar, bad):
    i = last = 0
    line = first
    while line:
        i += 1
        if bar is not None and i % 4096 == 0:
            pos = _position(f)
            if pos is not None:
                bar.update(pos - last)
                last = pos
        yield i, line.rstrip("\r\n")
        try:
            line = f.readline()
        except STREAM_ERRORS as exc:
            message = f"unreadable from here on ({type(exc).__name__}: {str(exc)[:120]})"
            if bad is None:
                raise ValueError(f"{path.name}: line {i + 1}: {message}") from None
            bad(i + 1, message)
            return
    if bar is not None:
        bar.update(size - last)


def _position(f) -> int | None:
    """Bytes read from disk so far (compressed bytes for gzip, matching the file's size)."""
    try:
        raw = f.buffer.fileobj if isinstance(f.buffer, gzip.GzipFile) else f.buffer
        return raw.tell()
    except (AttributeError, OSError, ValueError):
        return None


class Clock:
    """Turns a log's local timestamps into Unix seconds.

    Logs print wall time without a zone. They are read as UTC unless the user names
    the zone the job ran in (`--tz Europe/Paris`); the choice is recorded with the import.
    """

    def __init__(self, tz: str | None = None):
        self.name = tz or "UTC"
        try:
            self.zone = ZoneInfo(tz) if tz else UTC
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {tz!r}: use an IANA name such as Europe/Paris or UTC") from exc

    def find(self, text: str) -> float | None:
        """The Unix time of the first `YYYY-mm-dd HH:MM:SS` stamp in `text`, if any."""
        m = _STAMP.search(text)
        return self.parse_match(m) if m else None

    def parse_match(self, m: re.Match) -> float | None:
        y, mo, d, h, mi, s, frac = m.groups()
        try:
            dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=self.zone)
        except ValueError:
            return None
        return dt.timestamp() + (int(frac.ljust(6, "0")) / 1e6 if frac else 0.0)

"""Where things live on disk: one place that knows the run-directory layout.

RUN_DIR/
  segments/<segment_id>/segment.json     header of one launch, written once by rank 0
  segments/<segment_id>/rank-00000.jsonl append-only event log of one rank
  annotations.jsonl                      append-only annotation ops (create/edit/delete)
  interventions.jsonl                    append-only intervention requests and outcomes
  .midflight/store.duckdb                derived DuckDB store; delete it at any time
  .midflight/parquet/v1/...              sealed segments as Parquet (logbook/store/sealed.py); derived too

Every path is built from names midflight generates itself, never from user text,
so a hostile run name cannot point outside the run directory.
"""

from __future__ import annotations

import re
from pathlib import Path

SEGMENTS = "segments"
SEGMENT_HEADER = "segment.json"
ANNOTATIONS = "annotations.jsonl"
INTERVENTIONS = "interventions.jsonl"
STORE_DIR = ".midflight"
STORE_FILE = "store.duckdb"

_SEGMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RANK_FILE = re.compile(r"^rank-(\d{5})\.jsonl$")


def is_valid_segment_id(segment_id: str) -> bool:
    """A segment id is a single safe path component (no separators, no '..')."""
    return bool(_SEGMENT_ID.match(segment_id)) and ".." not in segment_id


def segment_dir(run_dir: Path, segment_id: str) -> Path:
    if not is_valid_segment_id(segment_id):
        raise ValueError(f"invalid segment id {segment_id!r}: use letters, digits, '.', '_' or '-'")
    return Path(run_dir) / SEGMENTS / segment_id


def rank_file(run_dir: Path, segment_id: str, rank: int) -> Path:
    return segment_dir(run_dir, segment_id) / f"rank-{int(rank):05d}.jsonl"


def rank_of(path: Path) -> int | None:
    """The rank encoded in a rank file's name, or None if it is not a rank file."""
    m = _RANK_FILE.match(path.name)
    return int(m.group(1)) if m else None


def default_store_path(path: Path) -> Path:
    return Path(path) / STORE_DIR / STORE_FILE


def is_run_dir(path: Path) -> bool:
    return (Path(path) / SEGMENTS).is_dir()


def discover_runs(path: Path) -> list[Path]:
    """A run directory, or a folder whose sub-directories are runs (like sample_runs/).

    Raises FileNotFoundError / NotADirectoryError / ValueError with a message a
    person can act on.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is a file, not a run directory")
    if is_run_dir(path):
        return [path]
    runs = sorted(p for p in path.iterdir() if p.is_dir() and is_run_dir(p))
    if not runs:
        raise ValueError(
            f"{str(path)!r} is not a midflight run directory (it has no '{SEGMENTS}/' folder) "
            "and holds no run directories"
        )
    return runs


def run_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """(segment headers, append-only logs) of one run, in a stable order."""
    run_dir = Path(run_dir)
    headers: list[Path] = []
    logs: list[Path] = []
    seg_root = run_dir / SEGMENTS
    if seg_root.is_dir():
        for seg in sorted(seg_root.iterdir()):
            if not seg.is_dir() or not is_valid_segment_id(seg.name):
                continue
            header = seg / SEGMENT_HEADER
            if header.is_file():
                headers.append(header)
            logs.extend(sorted(p for p in seg.iterdir() if rank_of(p) is not None and p.is_file()))
    for name in (ANNOTATIONS, INTERVENTIONS):
        p = run_dir / name
        if p.is_file():
            logs.append(p)
    return headers, logs

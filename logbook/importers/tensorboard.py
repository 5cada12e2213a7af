"""TensorBoard event files: scalars of one run or a tree of runs.

TensorBoard writes one `events.out.tfevents.<time>.<host>.<pid>.<n>` file per process
start into the run's directory, so a directory that directly holds event files is
one run and each of its files, in name order (natural order: the start time comes
first), is one launch. One run goes into `run_dir` itself; a tree of several becomes
a folder of runs, `run_dir/<relative path with / as __>`, each named by its relative
path (prefixed with --name when given).

Files are read with tensorboard's own record reader (CRC-checked), one event at a
time: memory holds one step's scalars. Scalars are TF1 `simple_value`s and TF2
tensors whose tag's metadata names the `scalars` plugin (TF2 writes that metadata
with a tag's first value only, so it is remembered per file). Values are float32 in
most writers and are widened exactly (0.1 reads as 0.10000000149011612), not rounded.
Consecutive events of one step make one step, stamped with the first event's wall
time; a tag repeated within a step starts another step at the same step, so no value
is lost. Events without a scalar (file version, graphs, histograms, images, text)
are counted as other lines. The reader stops quietly at a truncated or corrupt
record, so the bytes it consumed are compared with the file's size: a file read only
in part is reported as malformed at the event after the last good one, and what
came before it is kept. Tags are renamed as CSV columns are (`names.py`).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from midflight.logbook.importers import names
from midflight.logbook.importers.items import Context, ImportReport, Step
from midflight.logbook.importers.reading import PROGRESS_MIN_BYTES
from midflight.logbook.importers.writer import RunWriter

EVENT_GLOB = "events.out.tfevents.*"
RECORD_OVERHEAD = 16  # a TFRecord: 8-byte length, 4-byte CRC, data, 4-byte CRC
UNIT = "as logged (TensorBoard import does not convert)"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def import_tensorboard(
    paths,
    run_dir,
    *,
    name: str | None,
    report: ImportReport,
    clock,
    replace: bool,
    world_size: int | None = None,
    progress: bool = False,
) -> None:
    """Import event files and directories of them (see the module docstring)."""
    runs = find_runs(paths)
    if not runs:
        raise ValueError(f"no TensorBoard event files ({EVENT_GLOB}) in {', '.join(repr(str(p)) for p in paths)}")
    run_dir = Path(run_dir)
    given = [Path(os.path.abspath(p)) for p in paths]
    base = Path(os.path.commonpath([str(p if p.is_dir() else p.parent) for p in given]))
    if len(runs) == 1:
        targets = [(run_dir, name, runs[0][1])]
    else:
        from midflight.logbook.record import layout

        if layout.is_run_dir(run_dir):
            raise ValueError(
                f"{str(run_dir)!r} already holds one run, and these event files make {len(runs)} runs: "
                "give a new --run-dir (it becomes a folder of runs)"
            )
        targets = []
        used: set[str] = set()
        for directory, files in runs:
            rel = _relative(directory, base)
            folder = _folder(rel, used)
            targets.append((run_dir / folder, f"{name}/{rel}" if name else rel, files))
        where = "; ".join(f"{display} -> {t.name}" for t, display, _ in targets)
        report.notes.append(f"{len(runs)} TensorBoard runs, each a run in {str(run_dir)!r}: {where}")
    bar = _progress(runs, progress)
    for target, display, files in targets:
        run_config: dict = {}
        writer = RunWriter(
            target,
            files,
            fmt="tensorboard",
            name=display,
            report=report,
            replace=replace,
            tz=clock.name,
            config=run_config,
            world_size=world_size,
        )
        namer = names.Namer()
        try:
            for f in files:
                ctx = Context(_relative(f, base), report, clock, run_config)
                writer.add_source(f, parse_file(f, ctx, namer, bar))
            writer.finish()
        except BaseException:
            writer.abort()  # never a half-written run
            raise
    if bar is not None:
        bar.close()


def _progress(runs, enabled: bool):
    """A byte progress bar over every event file, for imports big enough to wait for."""
    total = sum(f.stat().st_size for _, files in runs for f in files)
    if not enabled or total < PROGRESS_MIN_BYTES:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="import tensorboard", file=sys.stderr)


def find_runs(paths) -> list[tuple[Path, list[Path]]]:
    """(directory, its event files in launch order) for every directory holding event files, sorted."""
    by_dir: dict[Path, set[Path]] = {}
    for p in map(Path, paths):
        found = [f for f in p.rglob(EVENT_GLOB) if f.is_file()] if p.is_dir() else [p]
        for f in found:
            f = Path(os.path.abspath(f))
            by_dir.setdefault(f.parent, set()).add(f)
    return [(d, sorted(fs, key=_launch_order)) for d, fs in sorted(by_dir.items())]


def _launch_order(path: Path):
    """Natural order of the name: events.out.tfevents.<start time>.<host>.<pid>.<n>, numbers as numbers."""
    return [(0, int(c), "") if c.isdigit() else (1, 0, c) for c in re.split(r"(\d+)", path.name)]


def _relative(path: Path, base: Path) -> str:
    rel = os.path.relpath(path, base)
    return (base.name or "run") if rel == os.curdir else rel


def _folder(rel: str, used: set[str]) -> str:
    """A single safe path component for a run's relative path, unique among this import's runs."""
    folder = _SAFE.sub("_", rel.replace(os.sep, "__"))
    if folder.startswith("."):
        folder = "_" + folder  # not hidden, never `..`, never the store's `.midflight`
    base, n = folder, 1
    while folder in used:
        n += 1
        folder = f"{base}-{n}"
    used.add(folder)
    return folder


def parse_file(path: Path, ctx: Context, namer: names.Namer, bar=None):
    """Items from one event file (see the module docstring)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    plugins: dict[str, str] = {}  # tag -> plugin named by its metadata
    pending: Step | None = None
    index = consumed = bar_at = 0
    records = None
    while True:
        try:
            if records is None:
                records = iter(RawEventFileLoader(str(path)).Load())
            record = next(records)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - the reader's errors on a damaged file must not end the import
            ctx.report.bad(ctx.source, index + 1, f"could not read on: {type(exc).__name__}: {exc}", "")
            consumed = -1  # reported already
            break
        index += 1
        consumed += len(record) + RECORD_OVERHEAD
        ctx.report.lines += 1
        if bar is not None and index % 4096 == 0:
            bar.update(consumed - bar_at)
            bar_at = consumed
        try:
            event = event_pb2.Event.FromString(record)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError: one undecodable event, not the file
            ctx.report.bad(ctx.source, index, f"undecodable event: {exc}", "")
            continue
        scalars = _scalars(event, plugins)
        if not scalars:
            ctx.report.other_lines += 1
            continue
        for tag, value in scalars:
            metric = namer(tag)
            if names.key(metric).endswith("loss"):
                ctx.run_config.setdefault("units", {}).setdefault("loss", UNIT)
            if pending is not None and (pending.step != event.step or metric in pending.values):
                yield pending
                pending = None
            if pending is None:
                pending = Step(event.step, {}, event.wall_time, index)
            pending.values[metric] = value
    if pending is not None:
        yield pending
    size = path.stat().st_size
    if bar is not None:
        bar.update(size - bar_at)
    if 0 <= consumed < size:
        ctx.report.bad(
            ctx.source,
            index + 1,
            f"truncated or corrupt after byte {consumed:,} of {size:,}: kept the {index:,} events before it",
            "",
        )


def _scalars(event, plugins: dict[str, str]) -> list[tuple[str, float]]:
    if not event.HasField("summary"):
        return []
    out = []
    for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin:
            plugins[value.tag] = plugin
        kind = value.WhichOneof("value")
        if kind == "simple_value":
            out.append((value.tag, float(value.simple_value)))
        elif kind == "tensor" and plugins.get(value.tag) == "scalars":
            v = _tensor_scalar(value.tensor)
            if v is not None:
                out.append((value.tag, v))
    return out


def _tensor_scalar(tensor) -> float | None:
    from tensorboard.util import tensor_util

    try:
        array = tensor_util.make_ndarray(tensor)
    except (ValueError, TypeError):
        return None
    if array.size != 1 or array.dtype.kind not in "fiub":
        return None
    return float(array.reshape(()))

"""Importers: runs that midflight did not record, from the logs people already have.

    midflight import FORMAT PATH... --run-dir DIR

Each format's parser yields the same items (`items.py`); `writer.RunWriter` turns
them into an ordinary run directory, so everything downstream (ingest, queries,
detection, lineage, the dashboard, the exporters) works on imported runs unchanged.
"""

from __future__ import annotations

from pathlib import Path

from midflight.logbook.importers import chronicle, fairseq, megatron, mllog, reading, table, wallclock
from midflight.logbook.importers.items import Context, ImportReport
from midflight.logbook.importers.writer import ImportConflict, RunWriter

FORMATS = ("metaseq", "fairseq", "megatron", "mllog", "tensorboard", "csv", "timeline", "chronicle")
SNIFF_LINES = 400

__all__ = ["FORMATS", "ImportConflict", "ImportReport", "import_logs", "sniff"]


def import_logs(
    fmt: str,
    paths,
    run_dir,
    *,
    name: str | None = None,
    tz: str | None = None,
    replace: bool = False,
    progress: bool = False,
    world_size: int | None = None,
) -> ImportReport:
    """Import `paths` (in order: one run, each file a launch) into `run_dir`. `fmt` may be "auto".

    `world_size` (the job's device count, which logs rarely state) sizes the nameplate energy estimate.
    """
    if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1):
        raise ValueError(f"world size must be a positive integer, not {world_size!r}")
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("give at least one file to import")
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist")
    report = ImportReport()
    if fmt == "auto":
        fmt, why = sniff(paths[0])
        report.notes.append(f"format: {fmt} ({why})")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)} or auto")
    clock = reading.Clock(tz)
    run_dir = Path(run_dir)
    if fmt == "timeline":
        from midflight.logbook.importers import timeline

        timeline.import_timeline(paths, run_dir, name=name, report=report, clock=clock, world_size=world_size)
        return report
    if fmt == "chronicle":
        for p in paths:
            if p.is_dir():
                raise ValueError(f"{str(p)!r} is a directory: give the Markdown files themselves")
        chronicle.import_chronicle(paths, run_dir, report=report, clock=clock, progress=progress)
        return report
    if fmt == "tensorboard":
        from midflight.logbook.importers import tensorboard

        tensorboard.import_tensorboard(
            paths,
            run_dir,
            name=name,
            report=report,
            clock=clock,
            replace=replace,
            world_size=world_size,
            progress=progress,
        )
        return report
    for p in paths:
        if p.is_dir():
            raise ValueError(f"{str(p)!r} is a directory: give the log files themselves")
    if fmt == "csv":
        parse = table.parse_path
    else:
        parser = {"megatron": megatron.parse, "mllog": mllog.parse}.get(fmt, fairseq.parse)

        def parse(path, ctx):
            def bad(line_no, message):
                ctx.report.bad(ctx.source, line_no, message, "")

            return parser(reading.lines(path, progress=progress, bad=bad), ctx)

    run_config: dict = {}
    writer = RunWriter(
        run_dir,
        paths,
        fmt=fmt,
        name=name,
        report=report,
        replace=replace,
        tz=clock.name,
        config=run_config,
        world_size=world_size,
    )
    estimated = wallclock.Clock()  # wall times from iteration times, for logs without a clock
    try:
        for p in paths:
            ctx = Context(p.name, report, clock, run_config)
            writer.add_source(p, wallclock.estimate(parse(p, ctx), estimated, ctx))
        writer.finish()
    except BaseException:
        writer.abort()  # never a half-written run (see writer's module docstring)
        raise
    return report


def sniff(path) -> tuple[str, str]:
    """(format, why) for a file or directory, from its name and first lines."""
    path = Path(path)
    if path.is_dir():
        if next(path.rglob("*tfevents*"), None) is not None:
            return "tensorboard", "a directory holding TensorBoard event files"
        raise ValueError(f"cannot tell what {str(path)!r} holds: a directory without TensorBoard event files")
    if "tfevents" in path.name:
        return "tensorboard", "a TensorBoard event file name"
    sample = []
    for _, line in reading.lines(path):
        sample.append(line)
        if len(sample) >= SNIFF_LINES:
            break
    first = sample[0] if sample else ""
    ml = mllog.looks_like(sample)
    if ml:
        return "mllog", f"{ml} :::MLLOG lines in the first {len(sample)}"
    suffixes = [s.lower() for s in path.suffixes]
    suffixes = suffixes[:-1] if suffixes[-1:] == [".gz"] else suffixes
    if suffixes[-1:] in ([".md"], [".markdown"]):
        dated = chronicle.looks_like(sample)
        if dated:
            return "chronicle", f"a Markdown file with {dated} dated entries in its first {len(sample)} lines"
        raise ValueError(f"{str(path)!r} is Markdown without dated entries (headings or lines starting with a date)")
    sep = table.sniff_delimiter(first)
    tabular = first.count(sep) >= 2 and "|" not in first and "{" not in first
    if suffixes[-1:] in ([".csv"], [".tsv"]) or tabular:
        cols = {c.strip().strip('"').lower() for c in first.split(sep)}
        if "date" in cols and ({"event_type", "event"} & cols):
            return "timeline", "a CSV with date and event columns"
        return "csv", "a CSV table"
    meg = megatron.looks_like(sample)
    fs, flavour = fairseq.looks_like(sample)
    if meg == 0 and fs == 0:
        raise ValueError(
            f"cannot tell the format of {str(path)!r}: no progress lines in its first {len(sample)} lines; "
            f"name it: {', '.join(FORMATS)}"
        )
    if meg >= fs:
        return "megatron", f"{meg} Megatron iteration lines in the first {len(sample)}"
    return flavour, f"{fs} {flavour} progress lines in the first {len(sample)}"

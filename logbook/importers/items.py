"""What a log parser yields, and what an import reports.

Every format's parser turns its source into the same few items, in log order;
`writer.RunWriter` turns them into midflight segments and records. A parser
therefore knows its format and nothing about segments, files or the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_EXAMPLES = 5


@dataclass
class Step:
    """The metrics logged for one step (or one logging interval ending at `step`)."""

    step: int
    values: dict[str, float]
    t: float | None  # Unix seconds, when the log says when
    line: int


@dataclass
class Event:
    """Something that happened: an overflow, skipped iterations, a note from the log."""

    kind: str
    step: int | None
    t: float | None
    fields: dict
    line: int


@dataclass
class Resume:
    """The log says a checkpoint was loaded: a new launch resumes from `step`."""

    step: int | None
    t: float | None
    line: int
    note: str


@dataclass
class End:
    """The log says training ended (`reason`: completed)."""

    reason: str
    t: float | None
    line: int


@dataclass
class Config:
    """Settings the log states (initial loss scale, units of the loss); merged into the segment's config."""

    values: dict
    line: int


@dataclass
class Context:
    """What a parser is given besides its lines."""

    source: str  # the file's name, for messages
    report: ImportReport
    clock: object  # reading.Clock
    run_config: dict = field(default_factory=dict)  # run-level facts (units), written into every segment's config


@dataclass
class ImportReport:
    sources: int = 0
    lines: int = 0
    steps: int = 0
    events: int = 0
    annotations: int = 0
    other_lines: int = 0  # lines that are not progress lines (other log output): skipped, not errors
    malformed: int = 0  # lines that looked like progress lines but could not be read
    examples: list = field(default_factory=list)  # (source, line_no, message, snippet)
    segments: list = field(default_factory=list)  # one dict per segment written (see writer)
    notes: list = field(default_factory=list)
    unchanged_files: int = 0
    appended_bytes: int = 0
    new_bytes: int = 0

    def bad(self, source: str, line_no: int, message: str, text: str) -> None:
        """Count a line that could not be read, keeping a few examples with their line numbers."""
        self.malformed += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((source, line_no, message[:200], text[:120]))

    def describe(self) -> str:
        out = [
            f"read {self.lines:,} lines from {self.sources} source(s): {self.steps:,} logged steps, "
            f"{self.events:,} events, {self.annotations:,} annotations, in {len(self.segments)} segment(s)"
        ]
        if self.other_lines:
            out.append(f"skipped {self.other_lines:,} other lines (not progress lines)")
        if self.malformed:
            out.append(f"skipped {self.malformed:,} malformed lines, e.g.:")
            out += [f"  {src}:{line}: {msg}: {snippet}" for src, line, msg, snippet in self.examples]
        for s in self.segments:
            span = f"steps {s['first_step']}–{s['last_step']}" if s["first_step"] is not None else "no steps"
            parent = f" from {s['parent']}" if s["parent"] else ""
            out.append(f"  segment {s['segment']}{parent}: {span}; {s['reason']}")
        if self.unchanged_files and not (self.new_bytes or self.appended_bytes):
            out.append("nothing new: this source was imported before and has not changed")
        elif self.appended_bytes:
            out.append(f"appended what the source gained since the last import ({self.appended_bytes:,} bytes)")
        if not self.segments and not self.annotations and not self.unchanged_files:
            out.append("no steps found: is this the right format? (the first lines are shown above if malformed)")
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)

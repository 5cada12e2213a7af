"""The written logbook: one Markdown file, its charts beside it as PNG files.

Markdown because a logbook should read anywhere: in a repository, a wiki, a terminal, a diff. It
renders `document.build` (the same words as the HTML page). Text from the data goes through
`text.md` (inline) or a fenced code block (tracebacks), so no annotation, reason or run name can
inject markup, a table column or HTML.

Layout: OUT.md, and OUT_files/<chart>.png linked by relative paths, so the pair can be moved,
zipped or committed together.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from midflight.logbook.exporters import document as d
from midflight.logbook.exporters import png
from midflight.logbook.exporters.content import Logbook
from midflight.logbook.present.text import md, md_code, num


def inline(pieces) -> str:
    out = []
    for p in pieces:
        if p is None:
            continue
        if isinstance(p, d.U):
            out.append(md(p))
        elif isinstance(p, d.B):
            out.append(f"**{p}**")
        else:
            out.append(str(p))
    return "".join(out)


def cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return num(v)
    if isinstance(v, d.U):
        return md(v) or "—"
    return str(v).replace("|", "\\|") or "—"


def render(blocks: list, images: dict[str, str]) -> str:
    """Markdown for the blocks; `images` maps chart names to relative links (charts without one are left out)."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, d.Heading):
            out.append("#" * b.level + " " + inline(b.text))
        elif isinstance(b, d.Para):
            text = inline(b.text)
            out.append(f"*{text}*" if b.italic else text)
        elif isinstance(b, d.Bullets):
            out.append("\n".join("- " + inline(item) for item in b.items))
        elif isinstance(b, d.Table):
            lines = ["| " + " | ".join(b.headers) + " |", "|" + "|".join("---" for _ in b.headers) + "|"]
            lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, d.Code):
            out.append(md_code(b.text))
        elif isinstance(b, d.Chart) and b.name in images:
            out.append(f"![{md(b.alt)}]({images[b.name]})")
        out.append("")
    return "\n".join(out)


def write(book: Logbook, out: Path, *, progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write OUT (.md) and its charts in OUT_files/; returns every path written."""
    say = progress or (lambda msg: None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files_dir = out.with_name(f"{out.stem}_files")
    pngs = [(c.metric, lambda c=c: png.chart_png(c, book.markers)) for c in book.charts]
    if book.segments:
        pngs.append(("restart_tree", lambda: png.tree_png(book)))
    if book.goodput.get("wall_s"):
        pngs.append(("goodput", lambda: png.goodput_png(book)))
    written, images = [], {}
    if pngs:
        files_dir.mkdir(exist_ok=True)
    for name, draw in pngs:
        say(f"{book.run}: drawing {name}.png")
        path = files_dir / f"{name}.png"
        path.write_bytes(draw())
        written.append(path)
        images[name] = f"{quote(files_dir.name)}/{quote(path.name)}"
    out.write_text(render(d.build(book), images), encoding="utf-8")
    return [out, *written]

"""The logbook as ONE self-contained HTML page with interactive Plotly charts.

One file that opens anywhere, offline, years later: plotly.js is inlined once (the first chart's
`to_html(include_plotlyjs=True)`; the others reuse it), there is no CDN, font or MathJax fetch,
and the page makes no network request. It renders `document.build`, the same words as the
Markdown logbook; every string from the data is `html.escape`d (text is text), and the charts'
hover labels are escaped in `interactive`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from midflight.logbook.exporters import document as d
from midflight.logbook.exporters import interactive
from midflight.logbook.exporters.content import Logbook
from midflight.logbook.present.text import esc, num

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.7em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12px; white-space: pre-wrap; }
.note { color: #666; } .chart { margin: .4em 0 1em; }
"""


def inline(pieces) -> str:
    out = []
    for p in pieces:
        if p is None:
            continue
        text = esc(p)
        out.append(f"<strong>{text}</strong>" if isinstance(p, d.B) else text)
    return "".join(out).replace("\n", "<br>")


def cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return num(v)
    return esc(v).replace("\n", "<br>") or "—"


def render(book: Logbook, blocks: list, charts: dict[str, str]) -> str:
    """The page; `charts` maps chart names to their HTML divs (Plotly's output, data already escaped)."""
    body = []
    for b in blocks:
        if isinstance(b, d.Heading):
            body.append(f"<h{b.level}>{inline(b.text)}</h{b.level}>")
        elif isinstance(b, d.Para):
            cls = ' class="note"' if b.italic else ""
            body.append(f"<p{cls}>{inline(b.text)}</p>")
        elif isinstance(b, d.Bullets):
            body.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in b.items) + "</ul>")
        elif isinstance(b, d.Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, d.Code):
            body.append(f"<pre>{esc(b.text)}</pre>")
        elif isinstance(b, d.Chart) and b.name in charts:
            body.append(f'<div class="chart">{charts[b.name]}</div>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Logbook: {esc(book.name)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def page(book: Logbook, *, progress: Callable[[str], None] | None = None) -> str:
    say = progress or (lambda msg: None)
    charts, first = {}, True
    for name, fig in interactive.figures_of(book):
        say(f"{book.run}: building the {name} chart")
        charts[name] = fig.to_html(
            full_html=False,
            include_plotlyjs=first,  # inline plotly.js once; later charts use the same Plotly object
            include_mathjax=False,
            div_id=f"chart-{name}",
            config={"displaylogo": False, "responsive": True},
        )
        first = False
    return render(book, d.build(book), charts)


def write(book: Logbook, out: Path, *, progress: Callable[[str], None] | None = None) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(book, progress=progress), encoding="utf-8")
    return [out]

"""A self-contained static HTML report: sections of text, tables and embedded figures.

Images are embedded as base64 PNG ``data:`` URIs, so the single ``index.html`` opens offline and can be
mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from netvis.io import atomic_write_text

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 0; color: #1d232a; background: #fafafa; }
header { background: #18324a; color: #fff; padding: 1.2em 2em; }
header h1 { margin: 0; font-size: 1.6em; }
header p { margin: .3em 0 0; opacity: .85; }
nav { padding: .6em 2em; background: #e8eef3; font-size: .95em; }
nav a { margin-right: 1.2em; color: #18324a; }
main { padding: 1em 2em 3em; max-width: 1200px; }
section { background: #fff; border: 1px solid #dde3e8; border-radius: 6px; padding: 1em 1.5em; margin: 1.2em 0; }
h2 { margin-top: .2em; color: #18324a; }
.explain { background: #f3f6f9; border-left: 4px solid #6d8fb0; padding: .5em 1em; margin: .6em 0 1em; }
.math { font-family: 'Latin Modern Math', 'Cambria Math', serif; font-style: italic; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #e3e3e3; }
figcaption { font-size: .9em; color: #555; }
table { border-collapse: collapse; font-size: .9em; margin: .6em 0; }
td, th { border: 1px solid #dde3e8; padding: .25em .6em; text-align: right; }
th { background: #eef2f5; }
td:first-child, th:first-child { text-align: left; }
.empty { color: #8a6d3b; }
"""


@dataclass
class Section:
    """One section of a report: a heading, an explanation and a body of HTML parts."""

    title: str
    anchor: str
    explanation: str = ""
    parts: list[str] = field(default_factory=list)

    def text(self, paragraph: str) -> Section:
        """Append a paragraph of plain text (escaped)."""
        self.parts.append(f"<p>{html.escape(paragraph)}</p>")
        return self

    def raw(self, fragment: str) -> Section:
        """Append an HTML fragment produced by netvis itself (not escaped)."""
        self.parts.append(fragment)
        return self

    def table(self, header: list[str], rows: list[list[object]]) -> Section:
        """Append a table; every cell is escaped."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
        )
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def figure(self, fig, caption: str = "", dpi: int = 110) -> Section:
        """Embed a matplotlib Figure as a PNG ``data:`` URI."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        return self.image_bytes(buf.getvalue(), caption)

    def image_bytes(self, png: bytes, caption: str = "") -> Section:
        """Embed PNG bytes."""
        data = base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                          f"{cap}</figure>")
        return self

    def render(self) -> str:
        explain = f'<div class="explain">{self.explanation}</div>' if self.explanation else ""
        body = "\n".join(self.parts) or '<p class="empty">Nothing to show in this section.</p>'
        return f'<section id="{self.anchor}"><h2>{html.escape(self.title)}</h2>{explain}\n{body}</section>'


class Report:
    """An HTML report built section by section.

    Example:
        >>> report = Report("netvis report")
        >>> report.section("Model").table(["layer", "parameters"], [["conv1", 432]])  # doctest: +ELLIPSIS
        Section(...)
    """

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self.sections: list[Section] = []

    def section(self, title: str, explanation: str = "") -> Section:
        """Start a new section; ``explanation`` is trusted HTML written by netvis."""
        anchor = "s" + str(len(self.sections) + 1)
        sec = Section(title=title, anchor=anchor, explanation=explanation)
        self.sections.append(sec)
        return sec

    def to_html(self) -> str:
        nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self.sections)
        body = "\n".join(s.render() for s in self.sections)
        sub = f"<p>{html.escape(self.subtitle)}</p>" if self.subtitle else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>"
            f"<body><header><h1>{html.escape(self.title)}</h1>{sub}</header><nav>{nav}</nav>"
            f"<main>{body}</main></body></html>\n"
        )

    def write(self, out_dir: str | os.PathLike) -> Path:
        """Write ``index.html`` into ``out_dir`` atomically and return its path."""
        return atomic_write_text(Path(out_dir) / "index.html", self.to_html())

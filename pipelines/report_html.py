"""Self-contained HTML for the reports: number formats, tables, embedded PNG figures, the page.

Everything a report shows is inside one ``.html`` file: figures are base64 PNG ``data:`` URIs
and the style sheet is inline, so the file opens offline and can be archived or mailed as is.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from theralake import __version__  # noqa: E402

log = logging.getLogger(__name__)

DASH = "–"
DPI = 110


class Html(str):
    """Markup that is already escaped (inserted as is by :func:`table` and :func:`section`)."""


def esc(value: object) -> Html:
    """``value`` as escaped text (markup stays as is)."""
    return value if isinstance(value, Html) else Html(html.escape(str(value)))


def num(value: object, digits: int = 2) -> str:
    """A number with ``digits`` decimals and thousands separators; a dash when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    try:
        if pd.isna(value):
            return DASH
    except (TypeError, ValueError):
        pass
    return f"{float(value):,.{digits}f}"


def sig(value: object, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (p-values, metrics); a dash when missing."""
    if value is None or pd.isna(value):
        return DASH
    return f"{float(value):.{digits}g}"


def with_ci(value: object, lower: object, upper: object, digits: int = 3) -> str:
    """``value (lower–upper)`` to ``digits`` decimals, or the value alone without a CI."""
    text = num(value, digits)
    if text == DASH or lower is None or upper is None or pd.isna(lower) or pd.isna(upper):
        return text
    return f"{text} ({num(lower, digits)}{DASH}{num(upper, digits)})"


def badge(text: str, level: str = "ok") -> Html:
    """A coloured status label (``ok``, ``warn``, ``bad``, ``info``)."""
    return Html(f'<span class="badge {level}">{esc(text)}</span>')


def unavailable(why: str) -> Html:
    """The line a section shows instead of its content when the lake lacks the data."""
    return Html(f'<p class="na">not available: {esc(why)}</p>')


def guarded(build: Callable[[], Html], what: str) -> Html:
    """A section's content, or a "not available" line when building it fails."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - one broken section must not sink the report
        log.warning("report section %s failed", what, exc_info=True)
        return unavailable(f"{what} could not be built ({type(exc).__name__}: {exc})")


def figures_row(*parts: str) -> Html:
    """Figures side by side (wrapping on narrow screens)."""
    return Html('<div class="figrow">' + "".join(esc(p) for p in parts) + "</div>")


def note(text: str) -> Html:
    return Html(f'<p class="note">{esc(text)}</p>')


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image(data: bytes, alt: str, caption: str | None = None) -> Html:
    """A PNG (bytes) as an embedded ``<figure>``."""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Html(f'<figure><img src="{png_uri(data)}" alt="{esc(alt)}">{cap}</figure>')


def figure(fig: plt.Figure, alt: str, caption: str | None = None) -> Html:
    """A matplotlib figure as an embedded PNG (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return image(buf.getvalue(), alt, caption)


def png_file(path: Path, alt: str, caption: str | None = None) -> Html:
    """A PNG file (e.g. a figure logged with an MLflow run) as an embedded ``<figure>``."""
    return image(Path(path).read_bytes(), alt, caption)


def table(df: pd.DataFrame, text_columns: Iterable[str] = (), caption: str | None = None,
          wrap: Iterable[str] = ()) -> Html:
    """A table of already formatted cells; columns not in ``text_columns`` (nor the first) are
    right-aligned numbers, those in ``wrap`` are text that may break over lines. Cells that
    are :class:`Html` are inserted as is, others escaped."""
    if df.empty:
        return unavailable("no rows")
    wrap = set(wrap)
    text = set(text_columns) | wrap | {df.columns[0]}
    kind = {c: ("t wrap" if c in wrap else "t" if c in text else "n") for c in df.columns}
    head = "".join(f'<th class="{kind[c]}">{esc(c)}</th>' for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{kind[c]}">{esc(v)}</td>'
                         for c, v in zip(df.columns, rec, strict=True)) + "</tr>"
        for rec in df.itertuples(index=False))
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return Html(f'<div class="tw"><table>{cap}<thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>")


def facts(pairs: Iterable[tuple[str, object]]) -> Html:
    """A compact key/value block (patient header, recommendation summary)."""
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in pairs)
    return Html(f'<dl class="facts">{items}</dl>')


def section(anchor: str, title: str, *parts: str) -> Html:
    return Html(f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>'
                + "".join(esc(p) for p in parts) + "</section>")


def subsection(title: str, *parts: str) -> Html:
    return Html(f"<h3>{esc(title)}</h3>" + "".join(esc(p) for p in parts))


STYLE = """
:root { --ink:#1d2733; --muted:#5b6876; --line:#d8dee6; --band:#f4f6f9; --accent:#1f5f99; }
* { box-sizing: border-box; }
body { font-family: "Segoe UI", "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       margin: 0; background: #eef1f5; font-size: 14px; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; background: white; padding: 0 32px 40px;
       box-shadow: 0 0 12px rgba(0,0,0,.08); }
header.top { background: var(--accent); color: white; margin: 0 -32px 18px; padding: 18px 32px; }
header.top h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header.top .meta { font-size: 12px; opacity: .9; }
header.top .meta span { margin-right: 18px; }
nav { font-size: 13px; margin: 8px 0 12px; color: var(--muted); }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
h2 { font-size: 17px; border-bottom: 2px solid var(--accent); padding-bottom: 4px;
     margin: 30px 0 12px; color: var(--accent); }
h3 { font-size: 14px; margin: 18px 0 8px; }
.tw { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 12.5px; min-width: 40%; }
caption { text-align: left; color: var(--muted); font-size: 12px; padding-bottom: 4px; }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); }
td { white-space: nowrap; }
th { background: var(--band); font-weight: 600; border-bottom: 2px solid var(--line);
     vertical-align: bottom; max-width: 110px; }
td.wrap { white-space: normal; min-width: 260px; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.t, th.t { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
tr.sep td { border-top: 2px solid var(--line); }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 11.5px;
         font-weight: 600; }
.badge.ok { background: #e3f3e6; color: #1e6b2e; }
.badge.warn { background: #fff1d6; color: #8a5a00; }
.badge.bad { background: #fde2e1; color: #a1211b; }
.badge.info { background: #e4edf7; color: #1f4f7f; }
.na { background: #fff8e6; border-left: 4px solid #e0a800; padding: 6px 10px; color: #6b5200;
      margin: 6px 0 12px; }
.note { color: var(--muted); font-size: 12.5px; margin: 4px 0 10px; }
.callout { border: 1px solid var(--line); border-left: 4px solid var(--accent);
           background: var(--band); padding: 10px 14px; margin: 8px 0 14px; }
figure { margin: 8px 0 18px; }
.figrow { display: flex; flex-wrap: wrap; gap: 10px 18px; align-items: flex-start; }
.figrow figure { flex: 1 1 440px; max-width: 560px; }
figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
dl.facts { display: flex; flex-wrap: wrap; gap: 6px 28px; margin: 6px 0 12px; }
dl.facts div { min-width: 120px; }
dl.facts dt { color: var(--muted); font-size: 11.5px; text-transform: uppercase;
              letter-spacing: .03em; }
dl.facts dd { margin: 0; font-size: 15px; font-weight: 600; }
footer { color: var(--muted); font-size: 11.5px; margin-top: 30px; border-top: 1px solid
         var(--line); padding-top: 8px; }
"""


def page(title: str, lake_path: Path, sections: Sequence[tuple[str, str, Html]],
         subtitle: str | None = None) -> str:
    """The whole document: a header (lake, date, version), a contents line, the sections
    (``(anchor, title, body)``) and a footer."""
    now = datetime.now().astimezone()
    meta = (f"<span>lake: {esc(lake_path)}</span><span>generated: "
            f"{now:%Y-%m-%d %H:%M %Z}</span><span>theralake {esc(__version__)}</span>")
    sub = f"<div>{esc(subtitle)}</div>" if subtitle else ""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><main>"
            f'<header class="top"><h1>{esc(title)}</h1>{sub}<div class="meta">{meta}</div>'
            f"</header><nav>{nav}</nav>{body}<footer>theralake {esc(__version__)}: research "
            "and decision-support software; doses and recommendations are to be reviewed by "
            "a qualified medical physicist and the treating physician.</footer>"
            "</main></body></html>\n")


def write(out: Path, document: str) -> Path:
    """Write the document (parent folders created); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document, encoding="utf-8")
    return out

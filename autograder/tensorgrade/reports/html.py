"""Tiny HTML helpers shared by the reports: escaping, a page template, score bars, images.

No template engine: pages are f-strings, so every string that comes from a submission (names,
messages, printed output, figure data) must go through ``esc`` or ``png_data_uri`` before it is
put into a page. The page also carries a Content-Security-Policy that allows no scripts and no
network, so a slip in escaping still cannot run code or phone home.
"""

from __future__ import annotations

import base64
import binascii
import html

from .. import __version__
from ..images import PNG_SIGNATURE, acceptable_png  # noqa: F401  (PNG_SIGNATURE: re-exported)

# no scripts, no fetches: only inline styles and data: images
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'"

CSS = """
:root { --ok: #17703a; --bad: #b3261e; --ink: #1d1d1f; --muted: #5f6368; --line: #d9dce1;
  --bar: #2f6fde; --bg-soft: #f5f7fa; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--ink); max-width: 64rem; margin: 2rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; border-bottom: 2px solid var(--line);
  padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
p.sub, .muted { color: var(--muted); }
table { border-collapse: collapse; width: 100%; margin: .4rem 0 1rem; }
th, td { text-align: left; vertical-align: top; padding: .35rem .6rem;
  border-bottom: 1px solid var(--line); }
th { background: var(--bg-soft); font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr { break-inside: avoid; }
.total { font-size: 1.25rem; margin: .8rem 0; display: flex; align-items: center; gap: 1rem; }
.bar { display: inline-block; width: 12rem; height: .8rem; background: #e7eaf0;
  border: 1px solid #c4c9d2; border-radius: 3px; vertical-align: middle; overflow: hidden; }
td .bar { width: 100%; max-width: 12rem; }
td { overflow-wrap: anywhere; }
.bar > span { display: block; height: 100%; background: var(--bar); }
table.fixed { table-layout: fixed; }
.mark { font-weight: 600; white-space: nowrap; }
.mark.pass { color: var(--ok); }
.mark.fail { color: var(--bad); }
.kind { font-size: .85rem; color: var(--muted); white-space: nowrap; }
.standin { font-style: italic; color: var(--muted); }
.scores { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.scores table { width: auto; }
.msg { white-space: pre-wrap; overflow-wrap: anywhere; font-family: ui-monospace, "DejaVu Sans Mono",
  monospace; font-size: .85rem; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: var(--bg-soft);
  border: 1px solid var(--line); padding: .7rem; font-size: .85rem; max-height: none; }
.note { border-left: 4px solid var(--bar); background: var(--bg-soft); padding: .6rem .9rem;
  margin: 1rem 0; }
.note.bad { border-left-color: var(--bad); }
.note.warn { border-left-color: #b06000; }
figure { display: inline-block; margin: 0 1rem 1rem 0; break-inside: avoid; }
figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .85rem; }
footer { margin-top: 2.5rem; color: var(--muted); font-size: .8rem; }
a { color: var(--bar); }
@media print {
  body { margin: 0; max-width: none; font-size: 11pt; }
  .bar, .bar > span, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  a { color: inherit; text-decoration: none; }
  h2 { break-after: avoid; }
}
"""


def esc(value: object) -> str:
    """Escape any value for HTML text or a double-quoted attribute."""
    return html.escape(str(value), quote=True)


def num(x: float) -> str:
    """A score as people write it: 3, 2.5, 0.3333."""
    x = float(x)
    return str(int(x)) if x == int(x) else f"{x:.4g}"


def percent(part: float, whole: float) -> float:
    """``part`` as a percentage of ``whole``, clamped to 0..100 (0 when there is nothing)."""
    if whole <= 0:
        return 0.0
    return max(0.0, min(100.0, 100.0 * part / whole))


def score_bar(score: float, max_score: float) -> str:
    """A horizontal bar filled to score/max_score; the numbers are always written next to it."""
    pct = percent(score, max_score)
    label = f"{num(score)} of {num(max_score)} points"
    return (
        f'<span class="bar" role="img" aria-label="{esc(label)}">'
        f'<span style="width:{pct:.1f}%"></span></span>'
    )


def pass_mark(passed: bool) -> str:
    """Pass/fail as a symbol and a word, so it reads without colour (and in print)."""
    if passed:
        return '<span class="mark pass">&#10003; passed</span>'
    return '<span class="mark fail">&#10007; failed</span>'


def png_data_uri(b64: object) -> str | None:
    """A ``data:image/png`` URI for base64 PNG data, or None if it is not a PNG.

    The data come from the student's notebook, so they are decoded and re-encoded rather than
    pasted into the page: only base64 characters ever reach the ``src`` attribute.
    """
    if isinstance(b64, (bytes, bytearray)):
        raw = bytes(b64)
    elif isinstance(b64, str):
        try:
            raw = base64.b64decode("".join(b64.split()), validate=True)
        except (binascii.Error, ValueError):
            return None
    else:
        return None
    if not acceptable_png(raw):  # not a PNG, or one declaring more pixels than a page can bear
        return None
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def page(title: str, body: str) -> str:
    """A complete HTML document: ``title`` is escaped here, ``body`` must already be HTML."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"{body}\n"
        f"<footer>Made by tensorgrade {esc(__version__)}.</footer>\n"
        "</body>\n</html>\n"
    )

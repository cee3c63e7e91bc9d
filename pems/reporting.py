"""Shared pieces of the self-contained HTML reports: figures inlined as PNG, one stylesheet, a page."""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pems import __version__  # noqa: E402

# Tables are blocks no wider than the page that scroll inside themselves when a table is wider still
# (width: max-content keeps a narrow one narrow): a wide table can never cut off columns or push
# the page sideways. The reports' own tables are laid out to fit a 1366 px window without that
# scroll; tests/scenarios/test_report_browser.py checks it in a real browser. Numbers never wrap.
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;padding:0 1em;max-width:1250px;color:#222}
h1{margin-bottom:0} .sub{color:#666;margin-top:.3em}
table{border-collapse:collapse;margin:1em 0;font-size:13px;display:block;max-width:100%;width:max-content;overflow-x:auto}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right} .kpi td{white-space:nowrap}
th{background:#f6f6f6} tr th:first-child{text-align:left} th small{font-weight:normal;color:#666}
img{max-width:100%} .note{color:#555;font-size:13px;max-width:60em} ul.why li{margin:.3em 0;max-width:60em}
.bad{color:#c0392b;font-weight:600} .good{color:#27ae60}
footer{color:#888;font-size:12px;margin-top:3em}
"""


def png_base64(fig: plt.Figure, dpi: int = 96) -> str:
    """The figure as a base64 PNG (and closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def img(fig: plt.Figure, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{png_base64(fig)}'>"


def utc_offset(t: datetime) -> str:
    """The UTC offset of an aware time as people write it: ``UTC+01:00``."""
    off = t.strftime("%z") or "+0000"
    return f"UTC{off[:3]}:{off[3:]}"


def zone_text(t: datetime, tz: str | None) -> str:
    """The zone of ``t`` (aware) named for a reader: ``Europe/Prague (UTC+01:00)``; for ``tz=None``
    the zone's abbreviation as the machine knows it (``CET (UTC+01:00)``)."""
    name = tz or t.tzname() or ""
    off = utc_offset(t)
    return "UTC" if name in ("", "UTC") and off == "UTC+00:00" else f"{name} ({off})"


def local_time(t: datetime, tz: str | tzinfo | None = None) -> datetime:
    """``t`` (aware) on the wall clock of ``tz`` (an IANA name), or of this machine for ``None``."""
    if tz is None:
        return t.astimezone()
    return t.astimezone(ZoneInfo(tz) if isinstance(tz, str) else tz)


def generated_text(tz: str | None = None) -> str:
    """Now, for a report's footer: the house's wall clock when its zone is given, else this
    machine's, with the zone (``2024-05-01 14:03 Europe/Prague (UTC+02:00)``)."""
    now = local_time(datetime.now().astimezone(), tz)
    return f"{now:%Y-%m-%d %H:%M} {zone_text(now, tz)}"


def footer(tz: str | None = None) -> str:
    """The reports' footer: PEMS's version and when the report was made (see :func:`generated_text`)."""
    return f"<footer>PEMS {__version__} · generated {html.escape(generated_text(tz))}</footer>"


def page(title: str, subtitle: str, body: str, tz: str | None = None) -> str:
    """A complete, offline HTML document; ``tz``: the house's time zone for the footer's time
    (this machine's local time without it)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>
<body><h1>{html.escape(title)}</h1><p class="sub">{subtitle}</p>
{body}{footer(tz)}</body></html>"""

"""Self-contained HTML reports: figures (inline PNG) and KPI tables that open offline.

One report can hold one run or several controllers on the same scenario, overlaid.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pems.reporting import CSS, footer, png_base64  # noqa: E402
from pems.scenarios.report_tables import KPI_NOTE, frame_runs, kpi_table, period_text, why_text  # noqa: E402
from pems.scenarios.runner import RunResult  # noqa: E402

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]

_png = png_base64


def _time_axis(ax: plt.Axes) -> None:
    loc = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    ax.grid(True, alpha=0.3)


def _x(traj: pd.DataFrame) -> np.ndarray:
    """Plot times in the house's local time (wall-clock, as its occupants see the schedule)."""
    tz = traj.attrs.get("timezone", "UTC")
    return traj.index.tz_convert(tz).tz_localize(None).to_numpy()


def overview_figure(results: Sequence[RunResult]) -> plt.Figure:
    """Weather, prices, heating, PV/load/grid/battery powers and SOC, controllers overlaid."""
    first = results[0].trajectory
    t = _x(first)
    fig, axes = plt.subplots(5, 1, figsize=(12, 13), sharex=True,
                             gridspec_kw={"height_ratios": [1, 1, 1.3, 1.3, 0.9]})
    ax = axes[0]
    ax.plot(t, first["T_out"], color="#444", lw=1, drawstyle="steps-post", label="outdoor temperature")
    ax.set_ylabel("°C")
    ax2 = ax.twinx()
    ax2.fill_between(t, first["ghi"], step="post", color="#f2b705", alpha=0.35, label="global horizontal irradiance")
    ax2.set_ylabel("W/m²")
    ax.set_title("Weather")
    _legend(ax, ax2)
    ax = axes[1]
    cur = results[0].currency
    ax.plot(t, first["price_import"], drawstyle="steps-post", color="#c0392b", lw=1, label="import")
    ax.plot(t, first["price_export"], drawstyle="steps-post", color="#27ae60", lw=1, label="export")
    ax.set_ylabel(f"{cur}/kWh")
    ax.set_title("Prices")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[2]
    for i, r in enumerate(results):
        tr, c = r.trajectory, COLORS[i % len(COLORS)]
        heat = tr[[f"P_heat__{room}" for room in r.rooms]].sum(axis=1) / 1000
        ax.plot(_x(tr), heat, drawstyle="steps-post", color=c, lw=1, label=f"heating ({r.controller})")
    ax.set_ylabel("kW")
    ax.set_title("Heating power (all rooms)")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[3]
    ax.fill_between(t, first["P_pv"] / 1000, step="post", color="#f2b705", alpha=0.4, label="PV")
    ax.plot(t, first["P_load"] / 1000, drawstyle="steps-post", color="#555", lw=0.8, label="household load")
    for i, r in enumerate(results):
        tr, c = r.trajectory, COLORS[i % len(COLORS)]
        ax.plot(_x(tr), tr["P_grid"] / 1000, drawstyle="steps-post", color=c, lw=1, label=f"grid ({r.controller})")
        ax.plot(_x(tr), tr["P_bat"] / 1000, drawstyle="steps-post", color=c, lw=0.8, ls="--",
                label=f"battery ({r.controller})")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("kW")
    ax.set_title("Power: grid (import +), battery (charge +), PV, load")
    ax.legend(loc="upper right", fontsize=8, ncol=2)
    ax = axes[4]
    for i, r in enumerate(results):
        tr = r.trajectory
        if tr["soc"].notna().any():
            ax.plot(_x(tr), tr["soc"] * 100, drawstyle="steps-post", color=COLORS[i % len(COLORS)], lw=1,
                    label=r.controller)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title("Battery state of charge")
    for ax in axes:
        _time_axis(ax)
    fig.tight_layout()
    return fig


def _legend(*axes: plt.Axes) -> None:
    h, lab = [], []
    for ax in axes:
        hh, ll = ax.get_legend_handles_labels()
        h += hh
        lab += ll
    axes[0].legend(h, lab, loc="upper right", fontsize=8)


def rooms_figure(results: Sequence[RunResult], ncols: int = 3) -> plt.Figure:
    """Each room's air temperature against its comfort band, controllers overlaid."""
    rooms = results[0].rooms
    nrows = int(np.ceil(len(rooms) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, 2.1 * nrows + 0.5), sharex=True, squeeze=False)
    first = results[0].trajectory
    t = _x(first)
    for k, room in enumerate(rooms):
        ax = axes[k // ncols][k % ncols]
        ax.fill_between(t, first[f"T_set_low__{room}"], first[f"T_set_high__{room}"], step="post",
                        color="#2ecc71", alpha=0.15, lw=0)
        for i, r in enumerate(results):
            tr = r.trajectory
            ax.plot(_x(tr), tr[f"T_room__{room}"], color=COLORS[i % len(COLORS)], lw=0.9,
                    label=r.controller)
        ax.set_title(room, fontsize=9)
        ax.tick_params(labelsize=7)
        _time_axis(ax)
    for k in range(len(rooms), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Room air temperature [°C] and comfort band (green)", y=1.0)
    fig.tight_layout()
    return fig


#: What each kind of event means, for a person reading the report (``events.jsonl`` has the kinds).
EVENT_WORDS = {
    "nan_command": "command not a number (held safe)",
    "clip_heat": "heating cut to the heater's rating",
    "clip_battery": "battery command limited (power, SOC or inverter rating)",
    "shed_heat": "heating shed at the main fuse",
    "curtail_pv": "PV curtailed (export limit or inverter rating)",
    "solver_retry": "solver retried",
    "fallback": "fell back to the rule-based action",
}


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def events_table(results: Sequence[RunResult]) -> str:
    rows = []
    for r in results:
        kinds: dict[str, int] = {}
        for e in r.events:
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        desc = "; ".join(f"{EVENT_WORDS.get(k, k)}: {_count(v, 'time', 'times')}"
                         for k, v in sorted(kinds.items())) or "none"
        rows.append(f"<tr><th>{html.escape(r.controller)}</th><td>{html.escape(desc)}</td></tr>")
    return ("<table><tr><th>controller</th><th>what the plant did to the commands (clipping, "
            "load shedding at the main fuse, PV curtailment), solver retries and controller fallbacks</th></tr>"
            f"{''.join(rows)}</table>")


MAX_PLOT_ROWS = 3000


def _plottable(r: RunResult) -> RunResult:
    """Long runs are plotted as hourly (or daily) means; tables always use the full trajectory."""
    tr = r.trajectory
    if len(tr) <= MAX_PLOT_ROWS:
        return r
    rule = "1h" if len(tr) * pd.Timedelta(tr.index[1] - tr.index[0]) / pd.Timedelta("1h") <= MAX_PLOT_ROWS else "1D"
    small = tr.resample(rule).mean()
    small.attrs = dict(tr.attrs)
    return replace(r, trajectory=small)


def render_report(results: Sequence[RunResult], title: str, subtitle: str = "") -> str:
    """The HTML text of a report on ``results`` (runs of one scenario)."""
    plot = [_plottable(r) for r in results]
    figs = [("Energy system", overview_figure(plot)), ("Rooms", rooms_figure(plot))]
    imgs = "".join(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' "
                   f"src='data:image/png;base64,{_png(fig)}'>" for name, fig in figs)
    first = results[0].trajectory
    # The house's wall clock: a run from local midnight reads as such, as do the plots' axes.
    period = period_text(first.index, first.attrs.get("timezone", "UTC"))
    weather = first.attrs.get("weather", "")
    if weather:
        period += f"\nWeather: {weather}."
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>
<body><h1>{html.escape(title)}</h1><p class="sub">{html.escape(subtitle)}<br>{html.escape(period).replace(chr(10), "<br>")}</p>
<h2>Key performance indicators</h2>{kpi_table([(r.controller, r.kpis) for r in results], results[0].currency)}
{KPI_NOTE}
{imgs}
<h2>Plant events</h2>{events_table(results)}
{footer(first.attrs.get("timezone"))}</body></html>"""


def write_report(path: Path, results: Sequence[RunResult], title: str, subtitle: str = "") -> None:
    """Write :func:`render_report` of ``results`` to ``path``."""
    path.write_text(render_report(results, title, subtitle), encoding="utf-8")


# ---------------------------------------------------------------------------- benchmarks
BENCH_KPIS = [("cost", "Cost"), ("cost_gap_to_oracle", "Cost above oracle"),
              ("discomfort_Kh_per_room", "Discomfort / room [K·h]"), ("heating_kWh", "Heating [kWh]"),
              ("energy_import_kWh", "Import [kWh]"), ("import_price_avg", "Mean import price [{cur}/kWh]"),
              ("self_consumption", "Self-consumption"), ("peak_import_kW", "Peak import [kW]"),
              ("battery_cycles", "Battery cycles")]


def comparison_figure(frame: pd.DataFrame, currency: str = "EUR") -> plt.Figure:
    """Grouped bars: each KPI per controller, one group per scenario (money in ``currency``)."""
    scen = list(dict.fromkeys(frame["scenario"]))
    ctrls = list(dict.fromkeys(frame["controller"]))
    keys = [k for k in BENCH_KPIS if k[0] in frame.columns and frame[k[0]].notna().any()]
    ncols = 4
    nrows = int(np.ceil(len(keys) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 3.1 * nrows), squeeze=False)
    w = 0.8 / max(1, len(ctrls))
    for a, (key, label) in enumerate(keys):
        ax = axes[a // ncols][a % ncols]
        for i, c in enumerate(ctrls):
            vals = [frame[(frame.scenario == s) & (frame.controller == c)][key].mean() for s in scen]
            vals = [v * 100 if key == "cost_gap_to_oracle" else v for v in vals]
            ax.bar(np.arange(len(scen)) + i * w, vals, w, color=COLORS[i % len(COLORS)], label=c)
        ax.set_xticks(np.arange(len(scen)) + w * (len(ctrls) - 1) / 2)
        ax.set_xticklabels(scen, fontsize=8, rotation=15)
        label = label.replace("{cur}", currency) + (f" [{currency}]" if key == "cost" else "")
        ax.set_title(label + (" [%]" if key == "cost_gap_to_oracle" else ""), fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    for a in range(len(keys), nrows * ncols):
        axes[a // ncols][a % ncols].set_visible(False)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def where_figure(results: Sequence[RunResult]) -> plt.Figure:
    """Where the money goes: net cost by local hour of day, and imports by price decile."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 3.8))
    w = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        tr = r.trajectory
        dt = (tr.index[1] - tr.index[0]).total_seconds() / 3600
        imp, exp_ = tr["P_grid"].clip(lower=0), (-tr["P_grid"]).clip(lower=0)
        net = (imp * tr["price_import"] - exp_ * tr["price_export"]) * dt / 1000
        hours = tr.index.tz_convert(tr.attrs.get("timezone", "UTC")).hour
        by_hour = net.groupby(hours).sum().reindex(range(24), fill_value=0.0)
        ax1.bar(np.arange(24) + i * w, by_hour.to_numpy(), w, color=COLORS[i % len(COLORS)], label=r.controller)
        deciles = pd.qcut(tr["price_import"].rank(method="first"), 10, labels=False)
        by_price = (imp * dt / 1000).groupby(deciles).sum().reindex(range(10), fill_value=0.0)
        ax2.bar(np.arange(10) + i * w, by_price.to_numpy(), w, color=COLORS[i % len(COLORS)], label=r.controller)
    ax1.set_title("Net electricity cost by hour of day (local)")
    ax1.set_xlabel("hour")
    ax1.set_ylabel(results[0].currency)
    ax2.set_title("Grid import by import-price decile (1 = cheapest 10 % of steps)")
    ax2.set_xticks(range(10))
    ax2.set_xticklabels([str(i + 1) for i in range(10)])
    ax2.set_ylabel("kWh")
    for ax in (ax1, ax2):
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_bench_report(path: Path, results: Sequence[RunResult], frame: pd.DataFrame, title: str = "PEMS benchmark",
                       preface: str = "") -> None:
    """One report for a whole benchmark: summary charts, then a section per scenario (``preface``:
    HTML before them, e.g. a replay's comparison with what the home paid).

    Each scenario's section is a ``<section class='scenario'>`` whose headings and figures carry
    the classes and ``alt`` texts ``where``, ``overview`` and ``rooms`` (tools/screenshots.py
    crops the README's pictures by them).
    """
    cur = results[0].currency if results else "EUR"
    parts = [f"<h2>All scenarios</h2><img alt='comparison' "
             f"src='data:image/png;base64,{_png(comparison_figure(frame, cur))}'>"]
    for sc in dict.fromkeys(r.scenario for r in results):
        runs = [_plottable(r) for r in results if r.scenario == sc]
        sub = frame[frame.scenario == sc]
        tr, sc_cur = runs[0].trajectory, runs[0].currency
        period = period_text(tr.index, tr.attrs.get("timezone", "UTC"))
        parts.append(
            f"<section class='scenario'><h2>{html.escape(sc)}</h2>"
            f"<p class='sub'>{html.escape(period)}; {len(runs[0].rooms)} rooms</p>"
            f"{kpi_table(frame_runs(sub), sc_cur)}{KPI_NOTE}{why_text(sub, sc_cur)}"
            f"<h3 class='where'>Where the money goes</h3>"
            f"<img alt='where' src='data:image/png;base64,{_png(where_figure(runs))}'>"
            f"<h3 class='overview'>Energy system</h3>"
            f"<img alt='overview' src='data:image/png;base64,{_png(overview_figure(runs))}'>"
            f"<h3 class='rooms'>Rooms</h3><img alt='rooms' src='data:image/png;base64,{_png(rooms_figure(runs))}'>"
            f"<h3>Plant and controller events</h3>{events_table([r for r in results if r.scenario == sc])}"
            "</section>")
    # the houses' wall clock when every scenario's house shares one zone, else this machine's
    zones = {r.trajectory.attrs.get("timezone") for r in results}
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>
<body><h1>{html.escape(title)}</h1><p class="sub">{_count(len(set(frame.scenario)), "scenario", "scenarios")} × {_count(len(set(frame.controller)), "controller", "controllers")}.
"Cost above oracle" is the distance to the perfect-foresight bound (same model and objective, the true future).</p>
{preface}{''.join(parts)}{footer(zones.pop() if len(zones) == 1 else None)}</body></html>"""
    path.write_text(text, encoding="utf-8")

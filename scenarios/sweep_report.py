"""The sweep's report: savings against battery and PV size, payback, cost against discomfort, and
each controller against the perfect-foresight bound (one self-contained HTML file)."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pems.reporting import CSS, footer, img  # noqa: E402
from pems.scenarios.sweep import SIZE_AXES, SweepSpec, sessions, wall_time  # noqa: E402

COLORS = {"rule-based": "#7f8c8d", "rule-based-solar": "#95a5a6", "mpc": "#2980b9", "mpc+correctors": "#8e44ad",
          "oracle": "#27ae60", "emhass": "#e67e22"}


def _color(ctrl: str, i: int) -> str:
    return COLORS.get(ctrl, f"C{i}")


def size_figure(df: pd.DataFrame, spec: SweepSpec, axis: str, what: str, ylabel: str) -> plt.Figure:
    """``what`` (a column) against one size axis: a line per controller and value of the other size axis."""
    # a line per controller and per value of every other axis (weather years, tariffs, the other size)
    others = [a for a in spec.axes if a != axis and a in df.columns and df[a].nunique() > 1]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    styles = ["-", "--", ":", "-."]
    for i, (ctrl, g) in enumerate(df.groupby("controller", sort=False)):
        groups = g.groupby(others, sort=True) if others else [((), g)]
        for j, (v, gg) in enumerate(groups):
            gg = gg.sort_values(axis)
            vals = v if isinstance(v, tuple) else (v,)
            label = ", ".join([ctrl, *(f"{a} = {x}" for a, x in zip(others, vals))])
            ax.plot(gg[axis].astype(float), gg[what].to_numpy(dtype=float), styles[j % 4], marker="o",
                    color=_color(ctrl, i), label=label)
    ax.set_xlabel(axis.replace("_", " ").replace("kwh", "[kWh]").replace("kwp", "[kWp]"))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


def discomfort_figure(df: pd.DataFrame, currency: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, (ctrl, g) in enumerate(df.groupby("controller", sort=False)):
        ax.scatter(g["discomfort_Kh_per_room"], g["cost_per_year"], color=_color(ctrl, i), label=ctrl, alpha=0.8)
    ax.set_xlabel("discomfort per room [K·h]")
    ax.set_ylabel(f"cost per year [{currency}]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def oracle_figure(df: pd.DataFrame) -> plt.Figure:
    g = df[df["controller"] != "oracle"].dropna(subset=["gap_to_oracle"])
    ctrls = list(dict.fromkeys(g["controller"]))
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.5 * max(len(ctrls), 1)))
    data = [100.0 * g.loc[g["controller"] == c, "gap_to_oracle"].to_numpy() for c in ctrls]
    if data:
        ax.boxplot(data, vert=False, tick_labels=ctrls)
    ax.set_xlabel("cost above the perfect-foresight bound, settled [%]")
    ax.grid(alpha=0.3, axis="x")
    return fig


def _fmt(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–" if v is None or np.isnan(v) else "never"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return html.escape(str(v))


def table_html(df: pd.DataFrame, spec: SweepSpec, currency: str) -> str:
    axes = [a for a in spec.axes if a in df.columns]
    cols = [(a, a) for a in axes] + [("controller", "controller"), ("cost", f"cost<br><small>{currency}</small>"),
                                     ("cost_per_year", f"per year<br><small>{currency}</small>"),
                                     ("discomfort_Kh_per_room", "discomfort<br><small>K·h/room</small>"),
                                     ("saving_per_year", f"saving/year<br><small>{currency}</small>"),
                                     ("payback_years", "payback<br><small>years</small>"),
                                     ("gap_to_oracle", "vs oracle"), ("wall_s", "run<br><small>s</small>")]
    cols = [(c, h) for c, h in cols if c in df.columns]
    head = "".join(f"<th>{h}</th>" for _, h in cols)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c, _ in cols:
            v = r[c]
            if c == "gap_to_oracle":
                cells.append(f"<td>{'–' if pd.isna(v) else f'{100 * v:+.1f} %'}</td>")
            elif c == "payback_years":
                cells.append(f"<td>{'–' if pd.isna(v) else ('never' if not np.isfinite(v) else f'{v:.1f}')}</td>")
            else:
                cells.append(f"<td>{_fmt(v if not isinstance(v, (np.floating,)) else float(v), 1 if c == 'wall_s' else 2)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='kpi'><tr>{head}</tr>{''.join(rows)}</table>"


def compute_html(df: pd.DataFrame) -> str:
    """Each controller's compute, measured in the same sweep: the mean wall time of its act per
    control step (a controller that plans now and then, such as EMHASS hourly or the oracle once,
    spread over every step), the median step, its longest act, and its tasks' wall time."""
    if "compute_s_per_step" not in df.columns:
        return ""
    if "compute_s_mean" not in df.columns:  # rows of an older PEMS
        df = df.assign(compute_s_mean=np.nan)

    def cell(v: float, scale: float, digits: int) -> str:
        return "<td>–</td>" if pd.isna(v) else f"<td>{scale * v:,.{digits}f}</td>"

    rows = []
    for ctrl, g in df.groupby("controller", sort=False):
        rows.append(f"<tr><td>{html.escape(str(ctrl))}</td><td>{len(g)}</td>"
                    + cell(g["compute_s_mean"].mean(), 1000, 1) + cell(g["compute_s_per_step"].median(), 1000, 2)
                    + cell(g["compute_s_per_step_max"].max(), 1, 2) + cell(g["wall_s"].sum(), 1 / 60, 1) + "</tr>")
    return ("<h2>Compute per controller</h2><p class='note'>Measured in this sweep, each task on one worker. "
            "Mean per step: all of a controller's planning over its runs' control steps.</p>"
            "<table class='kpi'><tr><th>controller</th><th>tasks</th><th>mean per step<br><small>ms</small></th>"
            "<th>median step<br><small>ms</small></th><th>longest act<br><small>s</small></th>"
            "<th>tasks' wall time<br><small>min</small></th></tr>" + "".join(rows) + "</table>")


def sessions_text(runs: list[dict]) -> str:
    """How long the sweep took: its runs (pieces, where it was interrupted and resumed) and their sum."""
    wall, runs = wall_time(runs)
    if not runs:
        return ""
    where = sorted({f"{r['scheduler']}" if r.get("scheduler") else f"{r.get('workers')} local workers" for r in runs})
    hours = f"{wall / 3600:.2f} h" if wall >= 3600 else f"{wall / 60:.1f} min"
    if len(runs) == 1:
        pieces = "one run"
    elif any(r.get("merged_from") for r in runs):  # pieces that may have run at once on other machines
        pieces = f"{len(runs)} runs (pieces run apart and merged: the sum of their wall times)"
    else:
        pieces = f"{len(runs)} runs (interrupted and resumed)"
    return f"<p class='sub'>Wall time {hours} in {pieces}, on {html.escape(', '.join(where))}.</p>"


def render_sweep_report(spec: SweepSpec, table: pd.DataFrame, runs: list[dict] | None = None) -> str:
    ok = table[table["status"] == "ok"] if "status" in table.columns else table.iloc[:0]
    bad = table[table["status"] != "ok"] if "status" in table.columns else table
    currency = str(ok["currency"].iloc[0]) if len(ok) and "currency" in ok.columns else ""
    parts = [f"<h1>Sweep: {html.escape(spec.name)}</h1>",
             f"<p class='sub'>{len(table)} tasks ({len(ok)} finished, {len(bad)} failed or not run) on the base "
             f"scenario {html.escape(spec.scenario)}; axes: "
             + html.escape(", ".join(f"{k} = {v}" for k, v in spec.axes.items()) or "none") + "</p>"
             + sessions_text(runs or [])]
    if len(ok):
        sizes = [a for a in SIZE_AXES if a in spec.axes and len(spec.axes[a]) > 1]
        for a in sizes:
            parts.append(f"<h2>Savings against {a.replace('_', ' ')}</h2>"
                         "<p class='note'>Per year (the run's cost settled with what it leaves for the day after, "
                         "scaled to 365 days), against the same controller at the sweep's smallest battery and PV.</p>"
                         + img(size_figure(ok, spec, a, "saving_per_year", f"saving per year [{currency}]"), f"savings-{a}"))
            pay = ok.replace([np.inf], np.nan).dropna(subset=["payback_years"])
            if len(pay):
                parts.append(f"<h3>Simple payback against {a.replace('_', ' ')}</h3><p class='note'>"
                             f"Investment at {spec.costs.battery_per_kwh:g} {currency}/kWh of battery and "
                             f"{spec.costs.pv_per_kwp:g} {currency}/kWp of PV, over the saving per year.</p>"
                             + img(size_figure(pay, spec, a, "payback_years", "simple payback [years]"), f"payback-{a}"))
        parts.append("<h2>Cost against discomfort</h2>" + img(discomfort_figure(ok, currency), "cost-discomfort"))
        if "oracle" in set(ok["controller"]) and ok["gap_to_oracle"].notna().any():
            parts.append("<h2>Each controller against the oracle</h2><p class='note'>The cost above the "
                         "perfect-foresight bound on the same axes (same model and objective, the true future), "
                         "each settled with the day after. The oracle bounds the objective: cost plus the "
                         "comfort penalty. Where some discomfort is unavoidable (a room the sun warms above "
                         "its band), a controller can come out a little cheaper by being a little less "
                         "comfortable.</p>" + img(oracle_figure(ok), "oracle"))
        parts.append(compute_html(ok))
    parts.append("<h2>Every task</h2>" + table_html(table[table.get("status", "") == "ok"] if len(ok) else table,
                                                    spec, currency))
    if len(bad):
        rows = "".join(f"<tr><td>{html.escape(str(r['task']))}</td><td>{html.escape(str(r.get('controller')))}</td>"
                       f"<td style='text-align:left'>{html.escape(str(r.get('status')))}: "
                       f"{html.escape(str(r.get('error') or ''))}</td></tr>" for _, r in bad.iterrows())
        parts.append(f"<h2>Failed or not run</h2><table><tr><th>task</th><th>controller</th><th>why</th></tr>{rows}</table>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>PEMS sweep {html.escape(spec.name)}"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}{footer()}</body></html>")


def write_sweep_report(path: Path, spec: SweepSpec, table: pd.DataFrame, runs: list[dict] | None = None) -> None:
    """The report of the sweep whose output folder holds ``path`` (its runs read from there unless given)."""
    runs = sessions(path.parent) if runs is None else runs
    path.write_text(render_sweep_report(spec, table, runs), encoding="utf-8")

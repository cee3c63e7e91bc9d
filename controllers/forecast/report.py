"""Backtest outputs: ``report.html`` (self-contained), ``metrics.json`` and ``predictions.parquet``.

The report answers three questions about a forecaster: is its median better than the naive
baselines (MAE, RMSE and pinball skill), are its quantiles honest (coverage of the P10–P90 band,
share of outcomes below each quantile), and where does it lose (error by lead hour, an example week).
Only the three output files are written; nothing else in ``out`` is touched.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pems.controllers.forecast.backtest import BacktestResult
from pems.errors import InputError
from pems.reporting import img, page

OUTPUTS = ("report.html", "metrics.json", "predictions.parquet")
BASE_COLORS = ["#d62728", "#7f7f7f", "#9467bd", "#8c564b"]


def _clean(v):
    """JSON-safe values: NaN → null, numpy scalars → Python, timestamps → ISO text."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return _clean(v.item())
    if isinstance(v, pd.Timestamp | pd.Timedelta):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def _qcols(result: BacktestResult) -> list[str]:
    return [f"p{round(100 * q):02d}" for q in result.quantiles]


def _baselines(result: BacktestResult) -> list[str]:
    return [k for k in result.metrics if k not in ("model", "skill")]


def _scored(result: BacktestResult) -> pd.DataFrame:
    """The rows the metrics were computed on: every forecast present (and not passed through)."""
    p = result.predictions
    ok = np.isfinite(p["y"].to_numpy()) & np.isfinite(p["p50"].to_numpy())
    for b in _baselines(result):
        ok &= np.isfinite(p[b].to_numpy())
    if "known" in p:
        ok &= ~p["known"].to_numpy(dtype=bool)
    return p[ok]


def reliability(result: BacktestResult) -> dict[str, float]:
    """Share of scored outcomes at or below each quantile (ideal: the level itself)."""
    p = _scored(result)
    return {c: float(np.mean(p["y"].to_numpy() <= p[c].to_numpy())) if len(p) else float("nan")
            for c in _qcols(result)}


def coverage_by_lead(result: BacktestResult) -> pd.Series:
    """P_low–P_high coverage per whole lead hour."""
    p = _scored(result)
    lo, hi = _qcols(result)[0], _qcols(result)[-1]
    inside = (p["y"] >= p[lo]) & (p["y"] <= p[hi])
    return inside.groupby(np.floor(p["lead_h"]).astype(int)).mean().rename("coverage")


# -- figures --------------------------------------------------------------------------------------------

def _latest_issue(p: pd.DataFrame) -> pd.DataFrame:
    """One row per target time: the forecast with the shortest lead (overlapping horizons)."""
    return p.sort_values("lead_h").loc[lambda d: ~d.index.duplicated(keep="first")].sort_index()


def example_week_figure(result: BacktestResult, tz: str = "UTC", days: int = 7) -> plt.Figure:
    """The last ``days`` of forecasts: P10–P90 band, median, outcome and the baselines."""
    pred = result.predictions
    outcome = _latest_issue(pred)["y"]
    if "known" in pred:
        # Published steps are exact by construction: show what was *predicted*, gaps elsewhere.
        fc = _latest_issue(pred[~pred["known"].to_numpy(dtype=bool)])
        fc = fc.reindex(outcome.index)
        title = "the predicted (unpublished) steps of each day's forecast"
    else:
        fc = _latest_issue(pred)
        title = "each day's forecast (the latest issue where horizons overlap)"
    if len(outcome):
        keep = outcome.index >= outcome.index[-1] - pd.Timedelta(days=days)
        outcome, fc = outcome[keep], fc[keep]
    t = outcome.index.tz_convert(tz).tz_localize(None)
    qc = _qcols(result)
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.fill_between(t, fc[qc[0]], fc[qc[-1]], step="post", color="#1f77b4", alpha=0.25,
                    label=f"{qc[0].upper()}–{qc[-1].upper()}")
    ax.step(t, fc["p50"], where="post", color="#1f77b4", lw=1.4, label="P50 (model)")
    for i, b in enumerate(_baselines(result)):
        ax.step(t, fc[b], where="post", color=BASE_COLORS[i % len(BASE_COLORS)], lw=0.9, alpha=0.8, ls="--", label=b)
    ax.step(t, outcome, where="post", color="black", lw=1.1, label="outcome")
    loc = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    ax.set_ylabel(f"{result.target} [{result.unit}]")
    ax.set_title(f"the last {days} days ({tz}): {title}")
    ax.grid(True, alpha=0.3)
    ax.legend(ncol=6, fontsize=8, loc="upper left")
    return fig


def lead_figure(result: BacktestResult) -> plt.Figure:
    """MAE per lead hour (model median and baselines) and interval coverage per lead hour."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.6))
    bl = result.by_lead
    a1.plot(bl.index, bl["p50"], "o-", ms=3, color="#1f77b4", label="P50 (model)")
    for i, b in enumerate(c for c in bl.columns if c != "p50"):
        a1.plot(bl.index, bl[b], "s--", ms=3, color=BASE_COLORS[i % len(BASE_COLORS)], label=b)
    a1.set_xlabel("lead [h]")
    a1.set_ylabel(f"MAE [{result.unit}]")
    a1.set_title("error by lead hour")
    a1.grid(True, alpha=0.3)
    a1.legend(fontsize=8)
    cov = coverage_by_lead(result)
    nominal = result.quantiles[-1] - result.quantiles[0]
    a2.bar(cov.index, cov.to_numpy(), color="#1f77b4", alpha=0.7)
    a2.axhline(nominal, color="black", lw=1, ls="--", label=f"nominal {nominal:.0%}")
    a2.set_ylim(0, 1)
    a2.set_xlabel("lead [h]")
    a2.set_ylabel("share inside the band")
    a2.set_title("interval coverage by lead hour")
    a2.grid(True, alpha=0.3)
    a2.legend(fontsize=8)
    return fig


def reliability_figure(result: BacktestResult) -> plt.Figure:
    """Observed share of outcomes below each quantile against its level, and the PIT-like
    histogram of which inter-quantile bin the outcome fell in (ideal: the bin widths)."""
    rel = reliability(result)
    levels = np.array(result.quantiles)
    obs = np.array([rel[c] for c in _qcols(result)])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
    a1.plot(levels, obs, "o-", color="#1f77b4")
    for lv, o in zip(levels, obs):
        a1.annotate(f"{o:.2f}", (lv, o), textcoords="offset points", xytext=(5, -12), fontsize=8)
    a1.set_xlim(0, 1)
    a1.set_ylim(0, 1)
    a1.set_xlabel("quantile level")
    a1.set_ylabel("share of outcomes below")
    a1.set_title("reliability")
    a1.grid(True, alpha=0.3)
    edges = np.concatenate([[0.0], levels, [1.0]])
    expected = np.diff(edges)
    observed = np.diff(np.concatenate([[0.0], obs, [1.0]]))
    x = np.arange(len(expected))
    a2.bar(x - 0.2, expected, 0.4, color="#bbbbbb", label="ideal")
    a2.bar(x + 0.2, observed, 0.4, color="#1f77b4", label="observed")
    a2.set_xticks(x, [f"{a:.0%}–{b:.0%}" for a, b in zip(edges[:-1], edges[1:])], fontsize=8)
    a2.set_xlabel("outcome between quantile levels")
    a2.set_title("where outcomes fall")
    a2.legend(fontsize=8)
    return fig


# -- tables -------------------------------------------------------------------------------------------

def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, int | np.integer):
        return f"{int(v):d}"
    return f"{v:.{digits}g}"


def metrics_table(result: BacktestResult) -> str:
    """Model and baselines: MAE, RMSE, bias, pinball, coverage, n."""
    cols = [("mae", "MAE"), ("rmse", "RMSE"), ("bias", "bias"), ("pinball", "pinball"), ("coverage", "coverage"),
            ("n", "n")]
    head = "".join(f"<th>{label}</th>" for _, label in cols)
    rows = []
    for name in ["model", *_baselines(result)]:
        m = result.metrics[name]
        cells = "".join(f"<td>{_fmt(m.get(k))}</td>" for k, _ in cols)
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return (f"<table><tr><th>[{html.escape(result.unit)}]</th>{head}</tr>{''.join(rows)}</table>"
            "<p class='sub'>MAE, RMSE and bias of the median (P50); pinball averaged over the quantiles "
            "(a point forecast's is half its MAE); coverage: share of outcomes inside the outer quantiles.</p>")


def skill_table(result: BacktestResult) -> str:
    """Skill ``1 − score/baseline`` per baseline and score; ≥ 0.15 MAE skill is marked good."""
    rows = []
    for b in _baselines(result):
        cells = []
        for m in ("mae", "rmse", "pinball"):
            v = result.metrics["skill"].get(f"{m}_vs_{b}", float("nan"))
            good = m == "mae" and np.isfinite(v) and v >= 0.15
            cls = "good" if good else ("bad" if np.isfinite(v) and v < 0 else "")
            cells.append(f"<td class='{cls}'>{_fmt(100 * v, 3)} %</td>" if np.isfinite(v) else "<td>–</td>")
        rows.append(f"<tr><th>vs {html.escape(b)}</th>{''.join(cells)}</tr>")
    return ("<table><tr><th>skill</th><th>MAE</th><th>RMSE</th><th>pinball</th></tr>" + "".join(rows) + "</table>")


def reliability_table(result: BacktestResult) -> str:
    rel = reliability(result)
    cells = "".join(f"<td>{rel[c]:.3f}</td>" for c in _qcols(result))
    head = "".join(f"<th>{c.upper()} (ideal {q:.2f})</th>" for c, q in zip(_qcols(result), result.quantiles))
    return f"<table><tr><th></th>{head}</tr><tr><th>share of outcomes below</th>{cells}</tr></table>"


def settings_table(settings: dict) -> str:
    rows = []
    for k, v in settings.items():
        text = json.dumps(_clean(v)) if isinstance(v, dict | list | tuple) else str(v)
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td style='text-align:left'>{html.escape(text)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


# -- writing ------------------------------------------------------------------------------------------

def _outdir(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(str(out), "--out", "exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def metrics_json(result: BacktestResult) -> dict:
    """Everything ``metrics.json`` holds: metrics, skill, reliability, coverage and MAE by lead."""
    return _clean({"role": result.role, "target": result.target, "unit": result.unit,
                   "quantiles": list(result.quantiles), "metrics": result.metrics,
                   "reliability": reliability(result),
                   "mae_by_lead": {c: {int(k): float(v) for k, v in result.by_lead[c].items()}
                                   for c in result.by_lead.columns},
                   "coverage_by_lead": {int(k): float(v) for k, v in coverage_by_lead(result).items()},
                   "settings": result.settings})


def write_backtest(result: BacktestResult, out: Path, title: str) -> Path:
    """Write ``out/report.html``, ``out/metrics.json`` and ``out/predictions.parquet``.

    Parameters
    ----------
    result
        A rolling-origin backtest.
    out
        Output folder (created; only the three files above are written in it).
    title
        The report's heading.

    Returns
    -------
    pathlib.Path
        The report's path.
    """
    out = _outdir(out)
    s = result.settings
    tz = s.get("tz", "UTC")
    m = result.metrics["model"]
    sk = result.skill_mae
    headline = ", ".join(f"{100 * v:+.1f} % vs {k}" for k, v in sk.items() if np.isfinite(v))
    subtitle = html.escape(
        f"{result.role} forecast of {result.target} [{result.unit}] · {s.get('dataset', '')} · "
        f"{s.get('origins', '?')} origins {str(s.get('first_origin', ''))[:10]} … "
        f"{str(s.get('last_origin', ''))[:10]}, "
        f"horizon {s.get('horizon_h', '?'):g} h issued {s.get('issue_hour_local', '?')}:00 {tz}")
    body = [f"<p><b>MAE {m['mae']:.4g} {html.escape(result.unit)}</b> (P50), skill {html.escape(headline)}; "
            f"P10–P90 coverage <b>{m.get('coverage', float('nan')):.3f}</b> "
            f"(nominal {m.get('nominal_coverage', float('nan')):.2f}) over {m['n']} scored steps.</p>"]
    if "known" in result.predictions:
        body.append(f"<p class='sub'>Scored on the predicted steps only: {s.get('passed_through_steps', 0)} "
                    f"published steps were passed through (largest error "
                    f"{s.get('passed_through_max_abs_error', 0.0):.3g} {html.escape(result.unit)}).</p>")
    body += ["<h2>Scores</h2>", metrics_table(result), skill_table(result),
             "<h2>Example week</h2>", img(example_week_figure(result, tz), "example week"),
             "<h2>By lead hour</h2>", img(lead_figure(result), "MAE and coverage by lead hour"),
             "<h2>Are the quantiles honest?</h2>", reliability_table(result),
             img(reliability_figure(result), "reliability"),
             "<h2>Settings</h2>", settings_table(s)]
    (out / "report.html").write_text(page(title, subtitle, "\n".join(body)), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(metrics_json(result), indent=2), encoding="utf-8")
    pred = result.predictions.copy()
    pred["issue"] = pd.DatetimeIndex(pred["issue"])
    pred.to_parquet(out / "predictions.parquet")
    return out / "report.html"


def summary_frame(results: dict[str, BacktestResult]) -> pd.DataFrame:
    """One row per backtest: MAE of model and baselines, MAE skill, coverage, n."""
    rows = []
    for name, r in results.items():
        row = {"name": name, "mae": r.metrics["model"]["mae"], "coverage": r.metrics["model"].get("coverage"),
               "n": r.metrics["model"]["n"]}
        for b in _baselines(r):
            row[f"mae_{b}"] = r.metrics[b]["mae"]
            row[f"skill_{b}"] = r.metrics["skill"].get(f"mae_vs_{b}")
        rows.append(row)
    return pd.DataFrame(rows)


def pooled(frame: pd.DataFrame) -> dict[str, float]:
    """Figures over all backtests of a :func:`summary_frame`: the median of the skills, and the
    MAE, skill and coverage of all scored steps pooled (each backtest weighted by its steps)."""
    if not len(frame):
        return {}
    w = frame["n"].to_numpy(dtype=float)
    out = {"pooled_mae": float(np.average(frame["mae"], weights=w)),
           "pooled_coverage": float(np.average(frame["coverage"], weights=w))}
    for c in [c for c in frame.columns if c.startswith("skill_")]:
        b = c[len("skill_"):]
        base = float(np.average(frame[f"mae_{b}"], weights=w))
        out[f"pooled_mae_{b}"] = base
        out[f"pooled_skill_{b}"] = 1.0 - out["pooled_mae"] / base
        out[f"median_skill_{b}"] = float(np.nanmedian(frame[c]))
    return out


def write_summary(results: dict[str, BacktestResult], out: Path, title: str, links: Sequence[str] = (),
                  note: str = "") -> Path:
    """An index page over several backtests (one per household): ``out/report.html`` and
    ``out/metrics.json`` (the table and the pooled figures), linking each backtest's own report."""
    out = _outdir(out)
    frame = summary_frame(results)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = []
    for i, (_, r) in enumerate(frame.iterrows()):
        name = html.escape(str(r["name"]))
        link = f"<a href='{html.escape(links[i])}'>{name}</a>" if i < len(links) else name
        cells = "".join(f"<td>{_fmt(r[c])}</td>" for c in frame.columns[1:])
        rows.append(f"<tr><th>{link}</th>{cells}</tr>")
    pool = pooled(frame)
    pool_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in pool.items())
    body = (f"<table><tr>{head}</tr>{''.join(rows)}</table><h2>All together</h2><table>{pool_rows}</table>"
            f"<p class='sub'>{html.escape(note)}</p>")
    (out / "report.html").write_text(page(title, "one row per backtest; MAE of the median (P50)", body),
                                     encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(_clean({"rows": frame.to_dict(orient="records"), "pooled": pool}),
                                                 indent=2), encoding="utf-8")
    return out / "report.html"

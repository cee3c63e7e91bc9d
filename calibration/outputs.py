"""Calibration outputs: the calibrated ``house.toml``, ``calibration.json`` and ``report.html``."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tomli_w

from pems.calibration.calibrate import CalibrationResult
from pems.reporting import img, page


def _clean(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return _clean(v.item())
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def house_toml(result: CalibrationResult, source: str) -> str:
    """The calibrated house file, with where it came from in a header comment."""
    data = result.house.model_dump(exclude_none=True, mode="json")
    for room in data["rooms"]:
        params = room.get("params", {})
        if not params.get("H_neighbour"):
            params.pop("H_neighbour", None)
    head = (f"# Calibrated by PEMS from {source}\n"
            f"# training {result.train[0]:%Y-%m-%d} .. {result.train[1]:%Y-%m-%d}, validation "
            f"{result.validation[0]:%Y-%m-%d} .. {result.validation[1]:%Y-%m-%d}; "
            f"24 h-ahead RMSE {result.summary.get('rmse_24h_k_mean', float('nan')):.3f} K (mean over rooms)\n"
            "# [rooms.params]: capacities J/K, conductances W/K, aperture m², gain profile W\n\n")
    return head + tomli_w.dumps(data)


def calibration_json(result: CalibrationResult) -> dict:
    rooms = {}
    for r, f in result.fits.items():
        m = result.metrics.get(r)
        rooms[r] = {
            "status": f.status, "segments": f.n_segments, "points": f.n_points, "fit_rmse_k": f.rmse_k,
            "time_constants_h": list(f.tau_h), "neighbours": list(f.neighbours), "wall_s": f.wall_s,
            "parameters": {name.split("__", 1)[0] if name.count("__") == 1 else name: {
                "value": e.value, "prior": e.prior, "se": e.se, "lower": e.lower, "upper": e.upper,
                "at_bound": e.at_bound} for name, e in f.estimates.items()},
            "correlations": {a: {b: float(f.correlations.loc[a, b]) for b in f.correlations.columns}
                             for a in f.correlations.index} if len(f.correlations) else {},
            "validation": None if m is None else {
                "rmse_1step_k": m.rmse_1step_k, "rmse_24h_k": m.rmse_24h_k, "bias_24h_k": m.bias_24h_k,
                "mae_24h_k": m.mae_24h_k, "days": m.n_days},
        }
    q = result.quality
    return _clean({
        "house": result.house.name,
        "train": list(result.train), "validation": list(result.validation),
        "summary": result.summary,
        "ashrae_guideline_14": {"hourly_cv_rmse_max": 0.30, "nmbe_abs_max": 0.10,
                                "hourly_pass": bool(abs(result.summary.get("heat_nmbe", 9)) <= 0.10
                                                    and result.summary.get("heat_cv_rmse", 9) <= 0.30)},
        "house_time_constants_h": result.house_tau_h,
        "couplings": {f"{a}__{b}": {"value": e.value, "se": e.se, "prior": e.prior}
                      for (a, b), e in result.couplings.items()},
        "rooms": rooms,
        "pv": None if result.pv is None else vars(result.pv) | {"performance_ratio": result.pv.performance_ratio},
        "battery": None if result.battery is None else vars(result.battery),
        "quality": {"score": q.score, "missing": q.missing, "trusted_days": q.trusted_days,
                    "trusted_periods": [[a, b] for a, b in q.trusted],
                    "signals": {s.name: {"score": s.score, "completeness": s.completeness, "outliers": s.outliers,
                                         "flatline_share": s.flatline_share, "jumps": s.jumps,
                                         "reasonableness": s.reasonableness, "problems": s.problems}
                                for s in q.signals.values()}},
        "wall_s": result.wall_s,
    })


def predictions_figure(result: CalibrationResult, ncols: int = 3) -> plt.Figure:
    p = result.predictions
    rooms = list(dict.fromkeys(p["room"])) if len(p) else []
    nrows = max(1, int(np.ceil(len(rooms) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, 2.3 * nrows + 0.5), squeeze=False)
    tz = result.house.site.timezone
    for k, r in enumerate(rooms):
        ax = axes[k // ncols][k % ncols]
        d = p[p.room == r]
        t = pd.DatetimeIndex(d["time"]).tz_convert(tz).tz_localize(None)
        ax.plot(t, d["measured"], color="#444", lw=0.8, label="measured")
        ax.plot(t, d["predicted_24h"], color="#d62728", lw=0.8, label="24 h ahead")
        m = result.metrics.get(r)
        ax.set_title(f"{r}  (RMSE {m.rmse_24h_k:.2f} K)" if m else r, fontsize=9)
        loc = mdates.AutoDateLocator(maxticks=5)
        ax.xaxis.set_major_locator(loc)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for k in range(len(rooms), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Validation: measured room temperature and the twin's 24 h-ahead prediction [°C]", y=1.0)
    fig.tight_layout()
    return fig


def residuals_figure(result: CalibrationResult) -> plt.Figure:
    p = result.predictions
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 3.6))
    if len(p):
        e = (p["predicted_24h"] - p["measured"]).dropna()
        a1.hist(e, bins=60, color="#1f77b4")
        a1.set_title("24 h-ahead errors, all rooms [K]")
        lead = p.groupby("room").cumcount() % 96 if len(p) else []
        err = (p["predicted_24h"] - p["measured"]).abs()
        by = err.groupby(lead * 0.25).mean()
        a2.plot(by.index, by.to_numpy(), color="#d62728")
        a2.set_xlabel("hours ahead")
        a2.set_title("Mean absolute error by lead time [K]")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def heating_figure(result: CalibrationResult) -> plt.Figure:
    h = result.heating
    fig, ax = plt.subplots(figsize=(13, 3.2))
    if len(h):
        d = h.set_index("time").resample("1D").sum() / 1000
        t = d.index.tz_convert(result.house.site.timezone).tz_localize(None)
        ax.bar(t - pd.Timedelta(hours=5), d["measured_wh"], width=0.4, label="measured", color="#444")
        ax.bar(t + pd.Timedelta(hours=5), d["predicted_wh"], width=0.4, label="twin", color="#d62728")
        ax.legend(fontsize=8)
    ax.set_title("Daily heating energy on validation days [kWh]: measured, and what the twin needs "
                 "to follow the measured temperatures")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _fmt(v: float) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    a = abs(v)
    return f"{v:.3g}" if a < 1000 else f"{v:,.0f}"


def write_calibration(result: CalibrationResult, out: Path, source: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "house.toml").write_text(house_toml(result, source), encoding="utf-8")
    (out / "calibration.json").write_text(json.dumps(calibration_json(result), indent=2) + "\n", encoding="utf-8")
    s = result.summary
    rows = []
    for r, f in result.fits.items():
        m = result.metrics.get(r)
        bounds = [n.split("__")[0] for n, e in f.estimates.items() if e.at_bound]
        rows.append(f"<tr><th>{html.escape(r)}</th><td>{_fmt(m.rmse_1step_k) if m else '–'}</td>"
                    f"<td>{_fmt(m.rmse_24h_k) if m else '–'}</td><td>{_fmt(m.bias_24h_k) if m else '–'}</td>"
                    f"<td>{f.tau_h[0]:.2f}</td><td>{f.tau_h[1]:.1f}</td><td>{f.n_segments}</td>"
                    f"<td>{html.escape(f.status)}</td><td>{html.escape(', '.join(bounds)) or '–'}</td></tr>")
    rooms_table = ("<table><tr><th>room</th><th>RMSE 1 step [K]</th><th>RMSE 24 h [K]</th><th>bias 24 h [K]</th>"
                   "<th>τ fast [h]</th><th>τ slow [h]</th><th>segments</th><th>fit</th><th>at bounds</th></tr>"
                   + "".join(rows) + "</table>")
    prow = []
    for r, f in result.fits.items():
        for name, e in f.estimates.items():
            cls = " class='bad'" if e.at_bound else ""
            prow.append(f"<tr><th>{html.escape(name)}</th><td>{_fmt(e.prior)}</td><td{cls}>{_fmt(e.value)}</td>"
                        f"<td>{_fmt(e.se)}</td><td>{_fmt(e.lower)} … {_fmt(e.upper)}</td></tr>")
    params_table = ("<table><tr><th>parameter</th><th>prior</th><th>fitted</th><th>std. error</th><th>bounds</th></tr>"
                    + "".join(prow) + "</table>")
    q = result.quality.to_frame()
    quality_table = q.to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0)
    cv, nmbe = s.get("heat_cv_rmse", float("nan")), s.get("heat_nmbe", float("nan"))
    ashrae = (f"<p>Heating energy, ASHRAE Guideline 14 (hourly CV(RMSE) ≤ 30 %, NMBE within ±10 %): hourly "
              f"CV(RMSE) {100 * cv:.0f} %, NMBE {100 * nmbe:+.1f} %; daily CV(RMSE) "
              f"{100 * s.get('daily_heat_cv_rmse', float('nan')):.0f} %, NMBE "
              f"{100 * s.get('daily_heat_nmbe', float('nan')):+.1f} %. The twin's heating is the energy its rooms "
              "need to follow the measured temperatures; a floor slab hides within which hour the heat went in, "
              "so hourly agreement is the harder test.</p>")
    devices = ""
    if result.pv is not None:
        pv = result.pv
        devices += (f"<p>PV: effective size {pv.kwp_effective:.2f} kWp ({100 * pv.performance_ratio:.0f} % of "
                    f"the house file's), plane tilt {pv.tilt_deg:.0f}°, azimuth {pv.azimuth_deg:.0f}°; RMSE "
                    f"{pv.rmse_w:.0f} W, R² {pv.r2:.3f} over {pv.n} daylight steps.</p>")
    if result.battery is not None:
        b = result.battery
        devices += (f"<p>Battery: capacity {b.capacity_kwh:.2f} kWh, round-trip efficiency "
                    f"{100 * b.round_trip_efficiency:.1f} % (charge and discharge taken equal), self-discharge "
                    f"{b.self_discharge_w:.0f} W; SOC-change RMSE {b.rmse_soc:.4f} over {b.n} steps.</p>")
    body = (f"<h2>Summary</h2><p>Mean over rooms on {s.get('validation_days', 0)} validation days: 24 h-ahead RMSE "
            f"<b>{s.get('rmse_24h_k_mean', float('nan')):.3f} K</b>, one-step RMSE {s.get('rmse_1step_k_mean', float('nan')):.3f} K. "
            f"Data quality score {result.quality.score:.2f}, {result.quality.trusted_days:.0f} trusted days. "
            f"Calibration took {result.wall_s:.0f} s.</p>{rooms_table}{ashrae}"
            f"<h2>Predictions on validation days</h2>{img(predictions_figure(result), 'predictions')}"
            f"{img(residuals_figure(result), 'residuals')}{img(heating_figure(result), 'heating')}"
            f"<h2>Parameters</h2>{params_table}{'<h2>PV and battery</h2>' + devices if devices else ''}"
            f"<h2>Data quality</h2>"
            f"<p>Missing signals: {html.escape(', '.join(result.quality.missing) or 'none')}.</p>{quality_table}")
    sub = (f"{html.escape(source)} · training {result.train[0]:%Y-%m-%d} – {result.train[1]:%Y-%m-%d}, "
           f"validation {result.validation[0]:%Y-%m-%d} – {result.validation[1]:%Y-%m-%d}")
    (out / "report.html").write_text(page(f"Calibration of {result.house.name}", sub, body), encoding="utf-8")

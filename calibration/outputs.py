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
from pems.calibration.diagnose import by_room
from pems.calibration.fit import Estimate
from pems.calibration.structure import BY_NAME
from pems.reporting import img, page, utc_offset, zone_text


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
            f"# {periods_text(result)}; "
            f"24 h-ahead RMSE {result.summary.get('rmse_24h_k_mean', float('nan')):.3f} K (mean over rooms)\n"
            "# [rooms.params]: capacities J/K, conductances W/K, aperture m², gain profile W; a coupling\n"
            "# (H_neighbour) is fitted from both of its rooms and written once, the two estimates combined\n"
            "# (inverse-variance weighted)\n\n")
    return head + tomli_w.dumps(data)


def calibration_json(result: CalibrationResult) -> dict:
    rooms = {}
    for r, f in result.fits.items():
        m = result.metrics.get(r)
        rooms[r] = {
            "status": f.status, "segments": f.n_segments, "points": f.n_points, "fit_rmse_k": f.rmse_k,
            "time_constants_h": list(f.tau_h), "neighbours": list(f.neighbours), "wall_s": f.wall_s,
            # a coupling is under "couplings": one value from both rooms' estimates
            "parameters": {name.split("__", 1)[0]: {
                "value": e.value, "prior": e.prior, "se": e.se, "lower": e.lower, "upper": e.upper,
                "at_bound": e.at_bound} for name, e in f.estimates.items() if not name.startswith("H__")},
            "correlations": {a: {b: float(f.correlations.loc[a, b]) for b in f.correlations.columns}
                             for a in f.correlations.index} if len(f.correlations) else {},
            "validation": None if m is None else {
                "rmse_1step_k": m.rmse_1step_k, "rmse_24h_k": m.rmse_24h_k, "bias_24h_k": m.bias_24h_k,
                "mae_24h_k": m.mae_24h_k, "days": m.n_days},
        }
    q = result.quality
    return _clean({
        "house": result.house.name,
        "timezone": result.house.site.timezone,  # of the times below (ISO 8601 with their UTC offset)
        "train": [_local(t, result) for t in result.train],
        "validation": [_local(t, result) for t in result.validation],
        "summary": result.summary,
        "ashrae_guideline_14": {"hourly_cv_rmse_max": 0.30, "nmbe_abs_max": 0.10,
                                "hourly_pass": bool(abs(result.summary.get("heat_nmbe", 9)) <= 0.10
                                                    and result.summary.get("heat_cv_rmse", 9) <= 0.30)},
        "house_time_constants_h": result.house_tau_h,
        # value: what the calibrated house.toml holds (rooms.<a>.params.H_neighbour.<b>), the
        # estimates of both rooms' fits combined by inverse-variance weighting
        "couplings": {f"{a}__{b}": {
            "value": e.value, "se": e.se, "prior": e.prior, "lower": e.lower, "upper": e.upper,
            "combined": "inverse-variance weighted", "house_toml": f"rooms.{a}.params.H_neighbour.{b}",
            "from_rooms": {r: {"value": x.value, "se": x.se} for r, x in getattr(e, "sides", {}).items()}}
            for (a, b), e in result.couplings.items()},
        "rooms": rooms,
        # each room's structure (where its heater's heat and the sun go), chosen from the data, and why
        "structures": {r: {"chosen": st.chosen, "shares_estimated": list(st.shares), "selection_rmse_24h_k": st.scores,
                           "why": st.why} for r, st in result.structures.items()},
        "warnings": [w.to_dict() for w in result.warnings],
        # the whole-house refinement after the per-room fits: its segments, fit RMSE before and after
        "joint": result.summary.get("joint"),
        # share of each room's 24 h-ahead squared error its fitted daily gain profile removes [-]
        "gain_profile_explains": result.gains_explained,
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


def _fmt(v: float | None, digits: int = 3) -> str:
    """A metric with ``digits`` significant digits, never in scientific notation."""
    return num(v, max_decimals=digits, digits=digits)


def num(v: float | None, max_decimals: int = 2, digits: int = 3) -> str:
    """``v`` to ``digits`` significant digits in plain notation with thousands separators, at most
    ``max_decimals`` after the point; what rounds to zero is 0 (no 1.4e-07, no −0)."""
    if v is None or not np.isfinite(v):
        return "–"
    v = float(v)
    if v == 0:
        return "0"
    d = int(min(max_decimals, max(0, digits - 1 - np.floor(np.log10(abs(v))))))
    r = round(v, d) + 0.0
    return "0" if r == 0 else f"{r:,.{d}f}"


#: How each fitted parameter is shown: what it is, its unit, the factor from SI, most decimals.
PARAM_SHOW: dict[str, tuple[str, str, float, int]] = {
    "C_air": ("heat capacity of the air and furnishings", "kJ/K", 1e-3, 0),
    "C_mass": ("heat capacity of the floor slab", "MJ/K", 1e-6, 2),
    "H_am": ("conductance air ↔ slab", "W/K", 1.0, 1),
    "H_out": ("conductance to outdoors", "W/K", 1.0, 1),
    "H_ground": ("conductance to the ground", "W/K", 1.0, 1),
    "H": ("conductance between the rooms", "W/K", 1.0, 1),
    "A_sol": ("solar aperture", "m²", 1.0, 2),
    "eta_heat": ("heater efficiency", "–", 1.0, 3),
    "g0": ("internal gain, constant part", "W", 1.0, 1),
    "g1c": ("internal gain, daily cosine", "W", 1.0, 1),
    "g1s": ("internal gain, daily sine", "W", 1.0, 1),
    "g2c": ("internal gain, half-daily cosine", "W", 1.0, 1),
    "g2s": ("internal gain, half-daily sine", "W", 1.0, 1),
}


def param_text(name: str, v: float | None) -> str:
    """A parameter's value (SI, as fitted) in the unit and digits :data:`PARAM_SHOW` gives it."""
    _, _, scale, dec = PARAM_SHOW.get(name.split("__", 1)[0], ("", "", 1.0, 3))
    return num(None if v is None else v * scale, max_decimals=dec)


def _bounds_text(name: str, e: Estimate) -> str:
    lo, hi = np.isfinite(e.lower), np.isfinite(e.upper)
    if not lo and not hi:
        return "free"
    return f"{param_text(name, e.lower) if lo else '−∞'} … {param_text(name, e.upper) if hi else '∞'}"


#: IPOPT's return codes as a reader says them.
STATUS_TEXT = {
    "Solve_Succeeded": "converged",
    "Solved_To_Acceptable_Level": "converged (to a looser tolerance)",
    "Maximum_Iterations_Exceeded": "not converged: iteration limit",
    "Maximum_CpuTime_Exceeded": "not converged: time limit",
    "Restoration_Failed": "not converged: restoration failed",
    "Search_Direction_Becomes_Too_Small": "stopped: no further progress",
    "Infeasible_Problem_Detected": "failed: infeasible",
    "Diverging_Iterates": "failed: diverging",
    "Error_In_Step_Computation": "failed: numerical error",
    "Invalid_Number_Detected": "failed: invalid number in the model",
}


def status_text(status: str, n_segments: int) -> str:
    """A room fit's outcome in words (the solver's code stays in calibration.json)."""
    if n_segments == 0:
        return f"not fitted: {status}"
    return STATUS_TEXT.get(status, f"solver: {status.replace('_', ' ').lower()}")


def _local(t: pd.Timestamp, result: CalibrationResult) -> pd.Timestamp:
    return pd.Timestamp(t).tz_convert(result.house.site.timezone)


def periods_text(result: CalibrationResult) -> str:
    """Training and validation on the house's wall clock, with its zone: "training 2024-01-08 00:00 –
    2024-01-29 00:00, validation 2024-01-29 00:00 – 2024-02-19 00:00 Europe/Prague (UTC+01:00)";
    with a daylight-saving change in between, each time carries its own offset."""
    tz = result.house.site.timezone
    (a, b), (c, d) = ([_local(t, result) for t in p] for p in (result.train, result.validation))
    one = len({utc_offset(t) for t in (a, b, c, d)}) == 1

    def t(x: pd.Timestamp) -> str:
        return f"{x:%Y-%m-%d %H:%M}" + ("" if one else f" ({utc_offset(x)})")

    return (f"training {t(a)} – {t(b)}, validation {t(c)} – {t(d)} "
            + (zone_text(a, tz) if one else tz))


def _params_table(result: CalibrationResult) -> str:
    """Each room's own parameters, grouped by room; couplings are in :func:`_couplings_table`."""
    rows = []
    for r, f in result.fits.items():
        rows.append(f"<tr><th colspan='6' class='room'>{html.escape(r)}</th></tr>")
        for name, e in f.estimates.items():
            if name.startswith("H__"):
                continue
            base = name.split("__", 1)[0]
            what, unit, _, _ = PARAM_SHOW.get(base, (base, "", 1.0, 3))
            cls = " class='bad'" if e.at_bound else ""
            rows.append(f"<tr><th>{html.escape(base)} <small>[{html.escape(unit)}]</small></th>"
                        f"<td style='text-align:left'>{html.escape(what)}</td><td>{param_text(name, e.prior)}</td>"
                        f"<td{cls}>{param_text(name, e.value)}</td><td>{param_text(name, e.se)}</td>"
                        f"<td>{_bounds_text(name, e)}</td></tr>")
    return ("<table class='params'><tr><th>parameter</th><th>what</th><th>prior</th><th>fitted</th>"
            "<th>std. error</th><th>bounds</th></tr>" + "".join(rows) + "</table>")


def _couplings_table(result: CalibrationResult) -> str:
    """One row per coupling: both rooms' estimates and the combined value the house file gets."""
    if not result.couplings:
        return ""
    rows, disagree = [], []
    for (a, b), e in result.couplings.items():
        sides = getattr(e, "sides", {})
        z = 0.0
        if len(sides) == 2:
            x, y = sides.values()
            z = abs(x.value - y.value) / float(np.hypot(x.se, y.se))
            if z > 2:
                disagree.append(f"{a} ↔ {b} ({z:.0f} standard errors)")

        def side(room: str) -> str:
            x = sides.get(room)
            return (f"{html.escape(room)}: –" if x is None
                    else f"{html.escape(room)}: {param_text('H', x.value)} ± {param_text('H', x.se)}")

        cls = " class='bad'" if e.at_bound or z > 2 else ""
        rows.append(f"<tr><th>{html.escape(a)} ↔ {html.escape(b)}</th><td>{param_text('H', e.prior)}</td>"
                    f"<td>{side(a)}</td><td>{side(b)}</td>"
                    f"<td{cls}><b>{param_text('H', e.value)}</b> ± {param_text('H', e.se)}</td>"
                    f"<td>{_bounds_text('H', e)}</td></tr>")
    return ("<h3>Couplings between rooms [W/K]</h3><p class='note'>Each room is fitted with its neighbours' "
            "measured air temperatures, so a coupling is estimated twice, once from each of its rooms. The "
            "two estimates are combined, weighted by their inverse variances, into the one value the "
            "calibrated house.toml holds (as H_neighbour of the first room).</p>"
            "<table class='couplings'><tr><th>rooms</th><th>prior</th><th>from one room's fit</th>"
            "<th>from the other's</th><th>combined: in house.toml</th><th>bounds</th></tr>"
            + "".join(rows) + "</table>"
            + ("" if not disagree else
               "<p class='note'>The two estimates disagree by more than their standard errors allow for "
               f"{html.escape(', '.join(disagree))}: holding each neighbour's air at its measured step mean "
               "biases one side's fit. The combined value's standard error is widened by the Birge ratio, "
               "and the value deserves a check (a measured door or wall, or a longer history).</p>"))


def _gains_text(result: CalibrationResult) -> str:
    g = {r: v for r, v in result.gains_explained.items() if np.isfinite(v)}
    if not g:
        return ""
    parts = ", ".join(f"{html.escape(r)} {100 * v:.0f} %" for r, v in g.items())
    return ("<p>Unmodelled gains (occupants, cooking, appliances): each room's fitted daily gain profile removes "
            f"this share of its 24 h-ahead squared error on the validation days: {parts} (mean "
            f"{100 * float(np.mean(list(g.values()))):.0f} %; the household's electricity, where the history has "
            "it, is in the gains of both).</p>")


def _share_text(result: CalibrationResult, room: str) -> str:
    p = next((r.params for r in result.house.rooms if r.id == room), None)
    if p is None:
        return "–"
    heat = "–" if p.f_heat_mass is None else f"{p.f_heat_mass:.2f}"
    sun = "–" if p.f_sol_mass is None else f"{p.f_sol_mass:.2f}"
    return f"{heat}, {sun}"


def write_calibration(result: CalibrationResult, out: Path, source: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "house.toml").write_text(house_toml(result, source), encoding="utf-8")
    (out / "calibration.json").write_text(json.dumps(calibration_json(result), indent=2) + "\n", encoding="utf-8")
    s = result.summary
    rows = []
    for r, f in result.fits.items():
        m = result.metrics.get(r)
        bounds = [n.split("__")[0] if not n.startswith("H__") else "H " + " ↔ ".join(n.split("__")[1:])
                  for n, e in f.estimates.items() if e.at_bound]
        rows.append(f"<tr><th>{html.escape(r)}</th><td>{_fmt(m.rmse_1step_k) if m else '–'}</td>"
                    f"<td>{_fmt(m.rmse_24h_k) if m else '–'}</td><td>{_fmt(m.bias_24h_k) if m else '–'}</td>"
                    f"<td>{f.tau_h[0]:.2f}</td><td>{f.tau_h[1]:.1f}</td><td>{f.n_segments}</td>"
                    f"<td>{html.escape(status_text(f.status, f.n_segments))}</td><td>{html.escape(', '.join(bounds)) or '–'}</td></tr>")
    rooms_table = ("<table><tr><th>room</th><th>RMSE 1 step [K]</th><th>RMSE 24 h [K]</th><th>bias 24 h [K]</th>"
                   "<th>τ fast [h]</th><th>τ slow [h]</th><th>segments</th><th>fit</th><th>at bounds</th></tr>"
                   + "".join(rows) + "</table>")
    params_table = _params_table(result) + _couplings_table(result)
    q = result.quality.to_frame()
    quality_table = q.to_html(index=False, float_format=lambda v: num(v, 3), border=0)
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
                    f"{100 * b.round_trip_efficiency:.1f} % (charge and discharge taken equal), standing loss "
                    f"(self-discharge, fitted ≥ 0) {num(b.self_discharge_w, 1)} W; SOC-change RMSE "
                    f"{num(100 * b.rmse_soc, 2)} % of capacity per step over {b.n} steps.</p>")
    warn = ""
    if result.warnings:
        items = "".join(f"<li><b>{html.escape(room or 'house')}</b>: "
                        + "<br>".join(html.escape(f"{w.kind}: {w.message}") for w in ws) + "</li>"
                        for room, ws in by_room(result.warnings).items())
        warn = (f"<div class='note'><p><b>Not a good fit</b>: {len(result.warnings)} warning"
                f"{'' if len(result.warnings) == 1 else 's'}, each with its likely cause.</p><ul>{items}</ul></div>")
    structure_rows = "".join(
        f"<tr><th>{html.escape(r)}</th><td>{html.escape(BY_NAME[st.chosen].description if st.chosen in BY_NAME else st.chosen)}</td>"
        f"<td>{_share_text(result, r)}</td><td>{html.escape(st.why)}</td></tr>" for r, st in result.structures.items())
    structure_table = ("<h2>Structure</h2><p>Where each room's heater output and sun go (the slab's share), chosen "
                       "from the data: candidates fitted on the first three quarters of the training period and "
                       "judged by their 24 h-ahead predictions of the last quarter.</p><table><tr><th>room</th>"
                       "<th>structure</th><th>share into the slab: heat, sun</th><th>why</th></tr>"
                       + structure_rows + "</table>") if result.structures else ""
    jf = result.joint
    joint_text = "" if jf is None else (
        f"<p>Whole-house refinement: all rooms fitted jointly from the per-room results on the "
        f"{jf.n_segments} training days spread over the training period; their fit RMSE {jf.rmse_start_k:.3f} K → "
        f"<b>{jf.rmse_k:.3f} K</b> in {jf.iterations} iterations ({jf.wall_s:.0f} s); the largest change: "
        f"{html.escape(jf.largest_change[0])} by {jf.largest_change[1]:.1f} standard deviations of its "
        f"per-room estimate.</p>")
    structure_table += joint_text
    body = (f"{warn}<h2>Summary</h2><p>Mean over rooms on {s.get('validation_days', 0)} validation days: 24 h-ahead RMSE "
            f"<b>{s.get('rmse_24h_k_mean', float('nan')):.3f} K</b>, one-step RMSE {s.get('rmse_1step_k_mean', float('nan')):.3f} K. "
            f"Data quality score {result.quality.score:.2f}, {result.quality.trusted_days:.0f} trusted day{'' if round(result.quality.trusted_days) == 1 else 's'}. "
            f"Calibration took {result.wall_s:.0f} s.</p>{rooms_table}{_gains_text(result)}{ashrae}"
            f"<h2>Predictions on validation days</h2>{img(predictions_figure(result), 'predictions')}"
            f"{img(residuals_figure(result), 'residuals')}{img(heating_figure(result), 'heating')}"
            f"{structure_table}<h2>Parameters</h2>{params_table}{'<h2>PV and battery</h2>' + devices if devices else ''}"
            f"<h2>Data quality</h2>"
            f"<p>Missing signals: {html.escape(', '.join(result.quality.missing) or 'none')}.</p>{quality_table}")
    sub = f"{html.escape(source)} · {html.escape(periods_text(result))}"
    (out / "report.html").write_text(page(f"Calibration of {result.house.name}", sub, body,
                                          tz=result.house.site.timezone), encoding="utf-8")

"""PV and battery calibration from a history.

PV: the effective size, orientation and losses of the array, fitted to measured AC power with the
same pvlib chain the twin simulates with (:mod:`pems.twin.pv`): one effective plane (tilt, azimuth)
and one effective DC rating (nameplate × (1 − losses)), by nonlinear least squares on the daylight
steps the inverter did not clip.

Battery: capacity and efficiencies from the state of charge and the battery's AC power. Over a step
``ΔSOC · E = η_ch · P⁺ · Δt − P⁻ / η_dis · Δt − P_self · Δt``, which is linear in
``(η_ch / E, 1 / (η_dis E), P_self / E)``; the data fix the round-trip efficiency ``η_ch · η_dis`` and,
with the two efficiencies taken equal, the capacity. The three are fitted non-negative: a battery
cannot charge itself, so a standing loss below zero (noise around a loss-free battery) is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, lsq_linear

from pems.twin.house import House, Inverter, PVArray
from pems.twin.pv import inverter_ac_limit, pv_ac_power
from pems.twin.solar import complete_irradiance, solar_position


@dataclass
class PVFit:
    kwp_effective: float  # DC rating × (1 − losses) [kWp]
    tilt_deg: float
    azimuth_deg: float
    rmse_w: float
    r2: float
    n: int
    prior_kwp_effective: float

    @property
    def performance_ratio(self) -> float:
        """Fitted over expected effective size (1.0: as the house file says)."""
        return self.kwp_effective / self.prior_kwp_effective if self.prior_kwp_effective else float("nan")


@dataclass
class BatteryFit:
    capacity_kwh: float
    round_trip_efficiency: float
    eta_charge: float
    eta_discharge: float
    self_discharge_w: float  # standing loss, ≥ 0 [W]
    rmse_soc: float
    n: int


def fit_pv(house: House, data: pd.DataFrame, step: pd.Timedelta) -> PVFit | None:
    """Fit an effective PV plane to measured ``P_pv`` (None without PV data or arrays)."""
    if "P_pv" not in data or "ghi" not in data or "T_out" not in data or not (data["P_pv"] > 50).any():
        return None  # no PV logged (or none produced): nothing to fit
    arrays = house.pv or [PVArray(kwp=max(1.0, float(data["P_pv"].max()) / 1000), tilt_deg=35, azimuth_deg=180)]
    inverter = house.inverter or Inverter(ac_limit_w=inverter_ac_limit(arrays, None) * 1.2)
    limit = inverter_ac_limit(arrays, inverter)
    mid = pd.DatetimeIndex(data.index) + step / 2
    sun = solar_position(mid, house.site)
    sun.index = data.index
    w = complete_irradiance(data[[c for c in ("T_out", "ghi", "dni", "dhi", "wind_speed") if c in data]], sun)
    y = data["P_pv"].to_numpy(dtype=float)
    ok = np.isfinite(y) & (sun["apparent_zenith"].to_numpy() < 80) & (y < 0.97 * limit) & np.isfinite(w["T_out"])
    if ok.sum() < 20:
        return None
    w, sun, y = w[ok], sun[ok], y[ok]
    losses0 = np.mean([a.losses_pct for a in arrays])
    prior_eff = sum(a.kwp for a in arrays) * (1 - losses0 / 100)
    kwp_total = sum(a.kwp for a in arrays)
    tilt0 = float(np.average([a.tilt_deg for a in arrays], weights=[a.kwp for a in arrays]))
    az0 = float(np.average([a.azimuth_deg for a in arrays], weights=[a.kwp for a in arrays]))

    def model(q):
        eff, tilt, az = q
        arr = PVArray(kwp=max(eff, 1e-3), tilt_deg=float(np.clip(tilt, 0, 90)), azimuth_deg=float(az % 360),
                      losses_pct=0.0)
        return pv_ac_power(w, sun, [arr], inverter).to_numpy()

    res = least_squares(lambda q: (model(q) - y) / 1000.0, x0=[prior_eff, tilt0, az0],
                        bounds=([0.05 * kwp_total, 0, az0 - 180], [2 * kwp_total, 90, az0 + 180]),
                        x_scale=[kwp_total, 10, 30])
    pred = model(res.x)
    rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    spread = np.sum((y - y.mean()) ** 2)
    r2 = float(1 - np.sum((pred - y) ** 2) / spread) if spread > 0 else float("nan")
    return PVFit(float(res.x[0]), float(res.x[1]), float(res.x[2] % 360), rmse, r2, int(ok.sum()), prior_eff)


def fit_battery(data: pd.DataFrame, step: pd.Timedelta) -> BatteryFit | None:
    """Capacity and efficiencies from ``soc`` and ``P_bat`` (None without both)."""
    if "soc" not in data or "P_bat" not in data:
        return None
    soc = data["soc"].to_numpy(dtype=float)
    p = data["P_bat"].to_numpy(dtype=float)
    dt_h = step / pd.Timedelta(hours=1)
    # SOC values are step means: the change between consecutive means is driven by the power of
    # the two steps around it, half each
    dsoc = np.diff(soc)
    pc = np.clip(p, 0, None)
    pd_ = np.clip(-p, 0, None)
    chg = 0.5 * (pc[1:] + pc[:-1]) * dt_h
    dis = 0.5 * (pd_[1:] + pd_[:-1]) * dt_h
    ok = np.isfinite(dsoc) & np.isfinite(chg) & np.isfinite(dis) & (soc[1:] > 0.02) & (soc[1:] < 0.98)
    if ok.sum() < 50 or chg[ok].sum() <= 0 or dis[ok].sum() <= 0:
        return None
    X = np.c_[chg[ok], -dis[ok], -np.full(ok.sum(), dt_h)]
    # bounded at zero (bounded-variable least squares: exact, like lstsq when no bound is active)
    coef = lsq_linear(X, dsoc[ok], bounds=(0.0, np.inf), method="bvls").x
    a, b, c = coef  # a = η_ch/E, b = 1/(η_dis E), c = P_self/E   (E in Wh, P in W)
    if a <= 0 or b <= 0:
        return None
    rt = float(a / b)
    eta = float(np.sqrt(rt))
    e_wh = eta / a
    rmse = float(np.sqrt(np.mean((X @ coef - dsoc[ok]) ** 2)))
    return BatteryFit(e_wh / 1000, rt, eta, eta, float(c * e_wh), rmse, int(ok.sum()))

"""KPIs of a run, computed by the harness from the trajectory alone (DESIGN.md, BOPTEST-aligned).

Grid import and export are netted per control step (as a quarter-hour settlement meter does):
``import = max(P_grid, 0)`` and ``export = max(−P_grid, 0)`` of each step's mean grid power.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

KPI_UNITS = {
    "cost": "currency",
    "discomfort_Kh": "K·h",
    "discomfort_Kh_per_room": "K·h",
    "energy_import_kWh": "kWh",
    "energy_export_kWh": "kWh",
    "heating_kWh": "kWh",
    "self_consumption": "–",
    "self_sufficiency": "–",
    "peak_import_kW": "kW",
    "battery_cycles": "–",
    "compute_s_per_step": "s",
    "compute_s_per_step_max": "s",
    "pv_kWh": "kWh",
    "load_kWh": "kWh",
    "curtailed_kWh": "kWh",
    "relay_switches": "–",
    "import_price_avg": "currency/kWh",
}


def step_hours(index: pd.DatetimeIndex) -> float:
    """The (regular) step of a trajectory [h]."""
    if len(index) < 2:
        raise ValueError("a trajectory needs at least two steps")
    return pd.Series(index).diff().median().total_seconds() / 3600.0


def compute_kpis(traj: pd.DataFrame, rooms: Sequence[str], usable_battery_kwh: float | None) -> dict[str, float]:
    """All KPIs of DESIGN.md from a trajectory (one row per control step).

    Parameters
    ----------
    traj
        Columns ``P_grid``, ``P_pv``, ``P_load``, ``P_bat``, ``P_loss``, ``price_import``,
        ``price_export``, ``compute_s`` and per room ``T_room__``, ``P_heat__``, ``T_set_low__``,
        ``T_set_high__`` [W, °C, currency/kWh, s].
    usable_battery_kwh
        Capacity between the SOC limits [kWh]; ``None`` without a battery.
    """
    dt = step_hours(pd.DatetimeIndex(traj.index))
    grid = traj["P_grid"].to_numpy()
    imp, exp_ = np.clip(grid, 0, None), np.clip(-grid, 0, None)
    T = traj[[f"T_room__{r}" for r in rooms]].to_numpy()
    lo = traj[[f"T_set_low__{r}" for r in rooms]].to_numpy()
    hi = traj[[f"T_set_high__{r}" for r in rooms]].to_numpy()
    dis = float((np.clip(lo - T, 0, None) + np.clip(T - hi, 0, None)).sum() * dt)
    heat = traj[[f"P_heat__{r}" for r in rooms]].sum(axis=1).to_numpy()
    pv = traj["P_pv"].to_numpy()
    consumption = traj["P_load"].to_numpy() + heat + traj["P_loss"].to_numpy()
    pv_e, imp_e, exp_e = pv.sum() * dt / 1000, imp.sum() * dt / 1000, exp_.sum() * dt / 1000
    cons_e = consumption.sum() * dt / 1000
    pv_on_site = np.clip(pv - exp_, 0, None).sum() * dt / 1000
    discharge = np.clip(-traj["P_bat"].to_numpy(), 0, None).sum() * dt / 1000
    compute = traj["compute_s"].to_numpy() if "compute_s" in traj else np.zeros(len(traj))
    return {
        "cost": float((imp * traj["price_import"] - exp_ * traj["price_export"]).sum() * dt / 1000),
        "discomfort_Kh": dis,
        "discomfort_Kh_per_room": dis / len(rooms),
        "energy_import_kWh": float(imp_e),
        "energy_export_kWh": float(exp_e),
        "heating_kWh": float(heat.sum() * dt / 1000),
        "self_consumption": float(pv_on_site / pv_e) if pv_e > 0 else float("nan"),
        "self_sufficiency": float(np.clip(1 - imp_e / cons_e, 0, 1)) if cons_e > 0 else float("nan"),
        "peak_import_kW": float(imp.max() / 1000),
        "battery_cycles": float(discharge / usable_battery_kwh) if usable_battery_kwh else 0.0,
        "compute_s_per_step": float(np.median(compute)),
        "compute_s_per_step_max": float(compute.max()),
        "pv_kWh": float(pv_e),
        "load_kWh": float(traj["P_load"].sum() * dt / 1000),
        "curtailed_kWh": float(traj["curtailed_wh"].sum() / 1000) if "curtailed_wh" in traj else 0.0,
        "relay_switches": float(traj["relay_switches"].sum()) if "relay_switches" in traj else 0.0,
        # what a kWh bought cost on average: how well imports were moved into cheap hours
        "import_price_avg": float((imp * traj["price_import"]).sum() / imp.sum()) if imp.sum() > 0 else float("nan"),
    }

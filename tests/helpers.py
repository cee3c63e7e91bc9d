"""Test helpers: small houses with known parameters, constant inputs, the shared real data."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pems.twin.house import House

SHARED = Path(os.environ.get("PEMS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SHARED_DATA = SHARED / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data (or $PEMS_SHARED/data), or skip the test with the reason."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not present: {p} (set PEMS_SHARED to the shared folder)")
    return p


def shared_check(name: str) -> Path:
    """A check script under ../shared/checks, or skip."""
    p = SHARED / "checks" / name
    if not p.exists():
        pytest.skip(f"shared check not present: {p}")
    return p


TWO_ROOMS = {
    "name": "two-rooms",
    "site": {"latitude": 50.0, "longitude": 14.4, "timezone": "Europe/Prague", "country": "CZ"},
    "rooms": [
        {"id": "a", "floor_area_m2": 20.0, "heater_w": 2000, "neighbours": ["b"],
         "params": {"C_air": 6.0e5, "C_mass": 4.0e6, "H_am": 200.0, "H_out": 25.0, "H_ground": 6.0,
                    "A_sol": 2.0, "f_sol_mass": 0.5, "eta_heat": 1.0, "f_heat_mass": 1.0,
                    "H_neighbour": {"b": 30.0}}},
        {"id": "b", "floor_area_m2": 12.0, "heater_w": 1200,
         "params": {"C_air": 3.6e5, "C_mass": 2.4e6, "H_am": 130.0, "H_out": 15.0, "H_ground": 0.0,
                    "A_sol": 0.0, "f_sol_mass": 0.5, "eta_heat": 0.9, "f_heat_mass": 0.6}},
    ],
}


def house_from(data: dict, **overrides) -> House:
    d = {**data, **overrides}
    return House.model_validate(d)


def two_rooms() -> House:
    return house_from(TWO_ROOMS)


def two_rooms_battery() -> House:
    return house_from(
        TWO_ROOMS,
        pv=[{"kwp": 5.0, "tilt_deg": 35, "azimuth_deg": 180}],
        inverter={"ac_limit_w": 5000, "standby_w": 10},
        battery={"capacity_kwh": 5.0, "max_charge_w": 2500, "max_discharge_w": 3000,
                 "soc_min": 0.1, "soc_max": 0.9, "eta_charge": 0.95, "eta_discharge": 0.93},
        grid={"import_limit_w": 4000, "export_limit_w": 2000},
    )


def constant_disturbances(model, n: int, step: pd.Timedelta = pd.Timedelta(minutes=15), **values) -> pd.DataFrame:
    """A disturbance table with every model disturbance constant (0 unless given)."""
    index = pd.date_range("2024-01-01", periods=n, freq=step, tz="UTC", name="time")
    df = pd.DataFrame(0.0, index=index, columns=list(model.sym.d.names))
    for k, v in values.items():
        df[k] = v
    return df




def write_constant_inputs(folder: Path, start: str, days: float, T_out: float = 0.0, ghi: float = 0.0,
                          P_load: float = 300.0) -> None:
    """weather.csv and load.csv with constant values (hourly), covering start − 1 d .. start + days + 3 d."""
    t = pd.date_range(pd.Timestamp(start) - pd.Timedelta(days=1), periods=int((days + 4) * 24), freq="1h")
    pd.DataFrame({"time": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "T_out": T_out, "ghi": ghi}).to_csv(
        folder / "weather.csv", index=False)
    pd.DataFrame({"time": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "P_load": P_load}).to_csv(folder / "load.csv", index=False)


def write_prices(folder: Path, start: str, days: float, import_fn, export_fn) -> None:
    """prices.csv from functions of the UTC hour of day."""
    t = pd.date_range(pd.Timestamp(start) - pd.Timedelta(days=1), periods=int((days + 4) * 24), freq="1h")
    pd.DataFrame({"time": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "price_import": [import_fn(h) for h in t.hour],
                  "price_export": [export_fn(h) for h in t.hour]}).to_csv(folder / "prices.csv", index=False)


def write_scenario(folder: Path, house: dict, **keys) -> Path:
    """house.toml and scenario.toml in ``folder``; returns the scenario path."""
    import tomli_w

    (folder / "house.toml").write_text(tomli_w.dumps(house), encoding="utf-8")
    sc = {"name": "test", "house": "house.toml", "start": "2024-01-10T00:00:00Z", "days": 1.0,
          "weather": "weather.csv", "load": "load.csv", "prices": "flat"} | keys
    path = folder / "scenario.toml"
    path.write_text(tomli_w.dumps(sc), encoding="utf-8")
    return path


# MQTT options for tests: quick reconnects, short keepalive
FAST = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "connect_timeout_s": 5.0, "keepalive_s": 5}
# The live tests' house: two rooms, PV, a battery and a grid connection with limits.
BATTERY_HOUSE = {**TWO_ROOMS, "pv": [{"kwp": 5.0, "tilt_deg": 35, "azimuth_deg": 180}],
                 "inverter": {"ac_limit_w": 5000, "standby_w": 10},
                 "battery": {"capacity_kwh": 5.0, "max_charge_w": 2500, "max_discharge_w": 3000,
                             "soc_min": 0.1, "soc_max": 0.9, "eta_charge": 0.95, "eta_discharge": 0.93},
                 "grid": {"import_limit_w": 8000, "export_limit_w": 2000}}


def home_history(house: House, start: str, days: float, seed: int = 0,
                 step: pd.Timedelta = pd.Timedelta(minutes=15)) -> pd.DataFrame:
    """A home's measured history at its own site: clear-sky weather dimmed by a random daily
    clearness, PV through the twin's pvlib chain (the house's arrays and inverter), and the BDEW H25
    household load with ±30 % log-normal noise. Columns ``T_out``, ``ghi``, ``P_pv``, ``P_load``."""
    from pems.controllers.forecast.pv import clear_sky
    from pems.twin.load import h25
    from pems.twin.pv import pv_ac_power
    from pems.twin.solar import complete_irradiance, solar_position

    idx = pd.date_range(start, periods=int(round(pd.Timedelta(days=days) / step)), freq=step, tz="UTC", name="time")
    rng = np.random.default_rng(seed)
    day = np.asarray((idx - idx[0]).days)
    kt = (0.2 + 0.8 * rng.beta(2.0, 1.2, day.max() + 1))[day]
    ghi = clear_sky(idx, house.site, step)["ghi_clear"].to_numpy() * kt * np.clip(
        1 + 0.1 * rng.standard_normal(len(idx)), 0.5, 1.3)
    hours = np.asarray(idx.hour + idx.minute / 60)
    df = pd.DataFrame({"T_out": 5 + 5 * np.sin(2 * np.pi * (hours - 9) / 24), "ghi": ghi}, index=idx)
    sun = solar_position(idx + step / 2, house.site)
    sun.index = idx
    w = complete_irradiance(df.assign(wind_speed=1.0), sun)
    df["P_pv"] = np.asarray(pv_ac_power(w, sun, house.pv, house.inverter), dtype=float)
    df["P_load"] = h25(idx, step, house.site, 4000.0).to_numpy() * np.exp(rng.normal(0.0, 0.3, len(idx)))
    return df


def household_load_csv(path: Path, house: House, start: str, end: str, seed: int = 0) -> pd.Series:
    """A household's load file (``time``, ``P_load`` [W]): the H25 shape times a day-to-day level
    (±15 %) and AR(1) noise (ρ = 0.8 per 15 min, ±25 %): a load a day-ahead forecast can only
    partly know (:func:`pems.twin.load.noisy_household`). Returns the series written."""
    from pems.twin.load import noisy_household

    step = pd.Timedelta(minutes=15)
    idx = pd.date_range(start, end, freq=step, tz="UTC", name="time")
    s = noisy_household(idx, step, house.site, 4000.0, seed=seed)
    s.reset_index().to_csv(path, index=False)
    return s


def wait_for(cond, timeout: float = 5.0, poll_s: float = 0.01) -> bool:
    """Whether ``cond()`` comes true within ``timeout`` wall seconds (polled; checked once more at the end)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll_s)
    return bool(cond())

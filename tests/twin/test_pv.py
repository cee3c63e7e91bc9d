"""PV: our composition of pvlib functions against pvlib's ModelChain, and plausible yields."""

from __future__ import annotations

import os

import pandas as pd
import pvlib
import pytest

from pems.twin.house import Inverter, PVArray
from pems.twin.pv import pv_ac_power
from pems.twin.solar import ALBEDO, complete_irradiance, solar_position
from pems.twin.weather import load_weather


def tmy_hourly(name: str):
    """A built-in TMY as hourly means stamped at mid-hour (TMY3 stamps the hour's end), with its site."""
    w = load_weather(name)
    hourly = w.data.copy()
    hourly.index = hourly.index - pd.Timedelta(minutes=30)
    return hourly, w.site


def modelchain_ac(weather: pd.DataFrame, site, kwp: float, tilt: float, az: float, ac_limit: float) -> pd.Series:
    """The same system through pvlib's own ModelChain (PVWatts, physical IAM, SAPM open rack)."""
    loc = pvlib.location.Location(site.latitude, site.longitude, altitude=site.altitude_m, tz="UTC")
    temp = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["open_rack_glass_polymer"]
    array = pvlib.pvsystem.Array(pvlib.pvsystem.FixedMount(tilt, az), albedo=ALBEDO,
                                 module_parameters={"pdc0": kwp * 1000, "gamma_pdc": -0.0037},
                                 temperature_model_parameters=temp)
    system = pvlib.pvsystem.PVSystem(
        arrays=[array], inverter_parameters={"pdc0": ac_limit / 0.96, "eta_inv_nom": 0.96},
        losses_parameters={"soiling": 14.0, "shading": 0, "snow": 0, "mismatch": 0, "wiring": 0,
                           "connections": 0, "lid": 0, "nameplate_rating": 0, "age": 0, "availability": 0})
    mc = pvlib.modelchain.ModelChain(system, loc, aoi_model="physical", spectral_model="no_loss",
                                     losses_model="pvwatts", transposition_model="haydavies")
    mc.run_model(weather.rename(columns={"T_out": "temp_air"})[["ghi", "dni", "dhi", "temp_air", "wind_speed"]])
    return mc.results.ac.clip(lower=0).fillna(0.0)


@pytest.mark.parametrize("name, lo, hi", [("greensboro-tmy3", 1250, 1700), ("sand-point-tmy3", 550, 950)])
def test_annual_yield_equals_modelchain_and_is_plausible(name, lo, hi):
    weather, site = tmy_hourly(name)
    sun = solar_position(weather.index, site)
    w = complete_irradiance(weather, sun)
    ours = pv_ac_power(w, sun, [PVArray(kwp=1.0, tilt_deg=35, azimuth_deg=180)], Inverter(ac_limit_w=1000))
    ref = modelchain_ac(w, site, 1.0, 35, 180, 1000)
    e_ours, e_ref = ours.sum() / 1000, ref.sum() / 1000  # hourly samples: Wh → kWh
    assert e_ours == pytest.approx(e_ref, rel=1e-3)
    assert lo < e_ours < hi  # kWh/kWp for a south array at 35° at that site (PVWatts ranges)


def test_inverter_clips_at_its_ac_rating():
    weather, site = tmy_hourly("greensboro-tmy3")
    sun = solar_position(weather.index, site)
    w = complete_irradiance(weather, sun)
    arrays = [PVArray(kwp=6.0, azimuth_deg=180), PVArray(kwp=4.0, azimuth_deg=200)]
    ac = pv_ac_power(w, sun, arrays, Inverter(ac_limit_w=7000))
    unclipped = pv_ac_power(w, sun, arrays, Inverter(ac_limit_w=20000))
    assert ac.max() == pytest.approx(7000.0, rel=1e-9) and (ac <= 7000.0 + 1e-9).all()
    assert unclipped.max() > 7500 and (ac >= 7000.0 - 1e-6).sum() > 10  # clipped hours exist
    assert (ac[sun["zenith"] > 95] == 0).all()


def test_tmy_files_are_the_named_sites():
    for name, lat in (("greensboro-tmy3", 36.1), ("sand-point-tmy3", 55.317)):
        w = load_weather(name)
        assert w.site.latitude == pytest.approx(lat)
    assert os.path.basename(pvlib.__file__) == "__init__.py"

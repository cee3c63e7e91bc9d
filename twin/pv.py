"""PV AC power from weather with pvlib's PVWatts chain, composed from pvlib's own functions.

Per array: Hay–Davies transposition to the plane of array, the physical (Fresnel) incidence-angle
modifier on the beam, SAPM cell temperature (open rack, glass/polymer), PVWatts DC power with its
temperature coefficient and system losses. The arrays share one inverter (PVWatts multi-input)
that clips at its AC rating. The result is the same as ``pvlib.modelchain.ModelChain`` with
``with_pvwatts`` settings and ``aoi_model="physical"`` (a test checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import pvlib

from pems.twin.house import Inverter, PVArray, inverter_ac_limit  # noqa: F401 (re-exported)
from pems.twin.solar import plane_irradiance

TEMPERATURE_MODEL = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["open_rack_glass_polymer"]


def array_dc_power(weather: pd.DataFrame, sun: pd.DataFrame, array: PVArray) -> pd.Series:
    """DC power of one array [W] (after system losses, before the inverter)."""
    poa = plane_irradiance(weather, sun, array.tilt_deg, array.azimuth_deg)
    iam = pvlib.iam.physical(poa["aoi"]).fillna(0.0)
    effective = poa["poa_direct"] * iam + poa["poa_diffuse"]
    t_cell = pvlib.temperature.sapm_cell(poa["poa_global"], weather["T_out"], weather["wind_speed"],
                                         **TEMPERATURE_MODEL)
    pdc = pvlib.pvsystem.pvwatts_dc(effective, t_cell, array.kwp * 1000.0, array.gamma_pdc)
    return (pdc * (1.0 - array.losses_pct / 100.0)).clip(lower=0).fillna(0.0)


def pv_ac_power(weather: pd.DataFrame, sun: pd.DataFrame, arrays: Sequence[PVArray],
                inverter: Inverter | None) -> pd.Series:
    """AC power of all arrays through their inverter [W], clipped at the inverter's AC rating.

    Parameters
    ----------
    weather
        ``ghi``, ``dni``, ``dhi`` [W m⁻²], ``T_out`` [°C], ``wind_speed`` [m s⁻¹] at sample times.
    sun
        :func:`pems.twin.solar.solar_position` at the same times.
    """
    if not arrays:
        return pd.Series(0.0, index=weather.index, name="P_pv")
    eta = inverter.efficiency_nom if inverter is not None else 0.96
    pdc0_inverter = inverter_ac_limit(arrays, inverter) / eta  # PVWatts: AC rating = η · pdc0
    pdc = [array_dc_power(weather, sun, a) for a in arrays]
    pac = pvlib.inverter.pvwatts_multi(pdc, pdc0_inverter, eta)
    return pd.Series(pac, index=weather.index, name="P_pv").clip(lower=0).fillna(0.0)

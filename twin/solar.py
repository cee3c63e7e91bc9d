"""Sun and irradiance on tilted planes (pvlib), for PV arrays and windows alike.

All functions take step-mean weather with a UTC index of *sample times* (the middle of each step)
and return numpy-friendly pandas objects [W m⁻²].
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pvlib

from pems.twin.house import Site

ALBEDO = 0.2
TRANSPOSITION = "haydavies"  # pvlib ModelChain's default sky-diffuse model


def solar_position(times: pd.DatetimeIndex, site: Site) -> pd.DataFrame:
    """Apparent zenith, zenith and azimuth [deg], extraterrestrial DNI [W m⁻²], relative airmass."""
    loc = pvlib.location.Location(site.latitude, site.longitude, altitude=site.altitude_m, tz="UTC")
    sp = loc.get_solarposition(times)
    out = sp[["apparent_zenith", "zenith", "azimuth"]].copy()
    out["dni_extra"] = pvlib.irradiance.get_extra_radiation(times)
    out["airmass"] = pvlib.atmosphere.get_relative_airmass(out["apparent_zenith"])
    return out


def complete_irradiance(weather: pd.DataFrame, sun: pd.DataFrame) -> pd.DataFrame:
    """Add ``dni``/``dhi`` where they are missing: the beam from the closure ``ghi = dhi + dni cos z``
    where the diffuse is known, else both decomposed from ``ghi`` (Erbs); whole columns or single values."""
    w = weather.copy()
    w["ghi"] = w["ghi"].clip(lower=0)
    if "dni" not in w or "dhi" not in w or w[["dni", "dhi"]].isna().all().any():
        if "dhi" in w and w["dhi"].notna().any():  # diffuse measured: beam from the closure
            cosz = np.cos(np.radians(sun["zenith"])).clip(lower=0.065)  # zenith < 86.3°
            w["dhi"] = w["dhi"].clip(lower=0).fillna(w["ghi"])
            w["dni"] = ((w["ghi"] - w["dhi"]).clip(lower=0) / cosz).where(sun["zenith"] < 87, 0.0)
        else:
            dec = pvlib.irradiance.erbs(w["ghi"], sun["zenith"], w.index)
            w["dni"], w["dhi"] = dec["dni"].fillna(0.0), dec["dhi"].fillna(0.0)
    gap = w["dni"].isna() | w["dhi"].isna()
    if gap.any():  # single missing values (a logger's outlier, removed): the same completion, row by row
        cosz = np.cos(np.radians(sun["zenith"])).clip(lower=0.065)
        closure = w["dhi"].notna() & w["dni"].isna()
        w.loc[closure, "dni"] = ((w["ghi"] - w["dhi"].clip(lower=0)).clip(lower=0) / cosz).where(
            sun["zenith"] < 87, 0.0)[closure]
        rest = w["dni"].isna() | w["dhi"].isna()
        if rest.any():
            dec = pvlib.irradiance.erbs(w["ghi"][rest], sun["zenith"][rest], w.index[rest])
            w.loc[rest, "dni"] = dec["dni"].fillna(0.0)
            w.loc[rest, "dhi"] = dec["dhi"].fillna(0.0)
    w["dni"] = w["dni"].clip(lower=0)
    w["dhi"] = w["dhi"].clip(lower=0)
    if "wind_speed" not in w:
        w["wind_speed"] = 1.0
    w["wind_speed"] = w["wind_speed"].fillna(1.0)
    return w


def plane_irradiance(weather: pd.DataFrame, sun: pd.DataFrame, tilt_deg: float,
                     azimuth_deg: float) -> pd.DataFrame:
    """Plane-of-array components (``poa_global``, ``poa_direct``, ``poa_diffuse``) and ``aoi``."""
    poa = pvlib.irradiance.get_total_irradiance(
        tilt_deg, azimuth_deg, sun["apparent_zenith"], sun["azimuth"],
        weather["dni"], weather["ghi"], weather["dhi"], dni_extra=sun["dni_extra"],
        airmass=sun["airmass"], albedo=ALBEDO, model=TRANSPOSITION,
    )
    out = poa[["poa_global", "poa_direct", "poa_diffuse"]].fillna(0.0).clip(lower=0)
    out["aoi"] = pvlib.irradiance.aoi(tilt_deg, azimuth_deg, sun["apparent_zenith"], sun["azimuth"])
    return out

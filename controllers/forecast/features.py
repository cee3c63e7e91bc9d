"""Features shared by the forecasters: calendar (local time, holidays) and the sun's position.

Cyclic quantities are encoded as sine/cosine pairs so that 23:45 sits next to 00:00. Holidays come
from the ``holidays`` package for the given country (the home's: CZ by default).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd


@lru_cache(maxsize=16)
def _holiday_calendar(country: str, years: tuple[int, ...]):
    import holidays

    return holidays.country_holidays(country, years=list(years))


def calendar_features(index: pd.DatetimeIndex, tz: str, country: str | None = "CZ") -> pd.DataFrame:
    """Hour of day and day of year (sin/cos), weekday (0 = Monday), weekend/holiday flag.

    Parameters
    ----------
    index
        UTC times (step starts).
    tz
        The home's time zone: people live by local time.
    """
    local = index.tz_convert(tz)
    hour = local.hour + local.minute / 60.0
    doy = local.day_of_year.to_numpy(dtype=float)
    out = pd.DataFrame(index=index)
    out["hour"] = hour
    out["hod_sin"] = np.sin(2 * np.pi * hour / 24)
    out["hod_cos"] = np.cos(2 * np.pi * hour / 24)
    out["doy_sin"] = np.sin(2 * np.pi * doy / 365.25)
    out["doy_cos"] = np.cos(2 * np.pi * doy / 365.25)
    out["weekday"] = local.day_of_week.to_numpy(dtype=float)
    off = local.day_of_week.to_numpy() >= 5
    if country:
        cal = _holiday_calendar(country, tuple(sorted(set(local.year))))
        off = off | np.array([d in cal for d in local.date])
    out["day_off"] = off.astype(float)
    return out


def sun_features(index: pd.DatetimeIndex, latitude: float, longitude: float, step: pd.Timedelta | None = None) -> pd.DataFrame:
    """Solar elevation and azimuth [deg] at the middle of each step, and the clear-sky GHI [W m⁻²]
    (Ineichen with climatological turbidity, pvlib)."""
    import pvlib

    mid = index + (step / 2 if step is not None else pd.Timedelta(0))
    loc = pvlib.location.Location(latitude, longitude)
    sp = loc.get_solarposition(mid)
    cs = loc.get_clearsky(mid, model="ineichen")
    return pd.DataFrame({"sun_elevation": sp["apparent_elevation"].to_numpy(),
                         "sun_azimuth": sp["azimuth"].to_numpy(),
                         "ghi_clear": cs["ghi"].to_numpy(),
                         "dni_clear": cs["dni"].to_numpy(),
                         "dhi_clear": cs["dhi"].to_numpy()}, index=index)

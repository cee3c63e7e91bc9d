"""Forecasts the home already stores in its own InfluxDB (``[forecast] weather = "influx"`` and/or
``prices = "influx"``): the real home's case, whose jobs keep Open-Meteo's forecast in the bucket
``weather_forecast`` and OTE's day-ahead prices in ``ote_prices``.

The series come from the mapping's ``[[forecast]]`` tables (the ``loxone-growatt`` preset has the
home's), read over the coming hours as ``pems history`` reads history (the same URLs, credentials
and queries, :func:`pems.calibration.influx.extract`, never cached): ``T_out``, ``ghi`` (``dni``,
``dhi`` where stored) for the weather, ``spot`` for the prices, which the contract of
``[forecast.tariff]`` turns into import and export prices (:func:`pems.twin.prices.contract_prices`).
Radiation stored as Open-Meteo gives it (the mean of the hour before its stamp) is moved to the
middle of its hour (``radiation_shift_minutes``); prices hold from their hour until the next.
"""

from __future__ import annotations

import pandas as pd

from pems.calibration.mapping import Mapping
from pems.live.fetched import FetchError
from pems.twin.prices import Tariff, contract_prices

WANT = {"weather": ("T_out", "ghi", "dni", "dhi"), "prices": ("spot",)}
NEEDED = {"weather": ("T_out", "ghi"), "prices": ("spot",)}


def fetch_from_influx(url: str, mapping: Mapping, key: str, now: pd.Timestamp, horizon: pd.Timedelta,
                      step: pd.Timedelta, tariff: Tariff, radiation_shift: pd.Timedelta = pd.Timedelta(minutes=-30),
                      ) -> pd.DataFrame:
    """The stored forecast for ``key`` (``weather`` or ``prices``) from a day before ``now`` to the
    horizon's end, read on the grid of ``step`` (the stored series' own resolution), as the table
    :class:`~pems.live.fetched.Fetched` caches.

    Raises
    ------
    FetchError
        The mapping has no such ``[[forecast]]`` series, the server does not answer or refuses, or
        nothing is stored for the coming hours.
    """
    start = (now - pd.Timedelta(days=1)).floor(step)
    stop = (now + horizon + pd.Timedelta(days=1)).ceil(step)  # all it has (a day-ahead market: until tomorrow)
    return stored_forecast(url, mapping, key, start, stop, step, tariff, radiation_shift)


def stored_forecast(url: str, mapping: Mapping, key: str, start: pd.Timestamp, stop: pd.Timestamp,
                    step: pd.Timedelta, tariff: Tariff | None = None,
                    radiation_shift: pd.Timedelta = pd.Timedelta(minutes=-30)) -> pd.DataFrame:
    """What the mapping's ``[[forecast]]`` series hold for ``key`` between ``start`` and ``stop``, on
    the grid of ``step``: the weather (``T_out``, ``ghi`` [, ``dni``, ``dhi``], radiation moved by
    ``radiation_shift`` to the middle of its hour), or the prices through ``tariff``. The live loop
    reads the coming hours; a replay reads a whole period (the archive of what was forecast).

    Raises
    ------
    FetchError
        As :func:`fetch_from_influx`.
    """
    from pems.calibration.influx import extract
    from pems.errors import InputError, ServiceError

    series = [s for s in mapping.forecast if s.column in WANT[key]]
    missing = [c for c in NEEDED[key] if c not in {s.column for s in series}]
    if missing:
        raise FetchError(f"the mapping {mapping.name!r} has no [[forecast]] series for {', '.join(missing)}")
    sub = Mapping(name=f"{mapping.name} ({key} forecast)", currency=mapping.currency, series=series)
    try:
        raw = extract(url, sub, start, stop, step=step, use_cache=False, workers=1,
                      chunk=min(stop - start, pd.Timedelta(days=7)))  # (a replay's months: a week a query)
    except (ServiceError, InputError, OSError) as exc:
        raise FetchError(str(exc)) from None
    if key == "prices":
        hold = int(pd.Timedelta(hours=1) / step) - 1
        spot = raw["spot"].ffill(limit=hold) if hold > 0 else raw["spot"]  # an hourly price holds its hour
        return contract_prices(spot.dropna(), tariff or Tariff())
    out = raw[[c for c in WANT["weather"] if c in raw]].copy()
    rad = [c for c in ("ghi", "dni", "dhi") if c in out]
    if radiation_shift != pd.Timedelta(0) and rad:
        moved = out[rad].set_axis(out.index + radiation_shift)
        out = out.drop(columns=rad).join(moved, how="outer")
    return out.dropna(how="all")

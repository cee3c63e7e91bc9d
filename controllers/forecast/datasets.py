"""Real public data for the load and price forecasters, as UTC-indexed tables.

- :func:`konstanz_household`: the CoSSMic households of Konstanz (Open Power System Data, CC-BY-4.0),
  hourly, household load without heating ``P_load`` [W].
- :func:`entsoe_prices`: ENTSO-E day-ahead prices of a bidding zone, hourly, ``price`` [EUR MWh⁻¹].

``root`` is the shared data folder (``../shared/data`` or ``$PEMS_SHARED/data``, see
:func:`pems.calibration.datasets.shared_data`). A missing folder or file raises
:class:`~pems.errors.InputError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pems.errors import InputError

#: Largest plausible energy through one household meter in one hour [kWh]: a German house connection
#: of 3 × 63 A carries at most ≈ 43 kW. Larger steps are meter jumps after a gap (house 3 has one of
#: 804 kWh in an hour) and are dropped, like negative steps (meter resets).
MAX_KWH_PER_HOUR = 43.0

HOUSEHOLDS = (1, 2, 3, 4, 5, 6)

#: How the load without heating is formed from each house's meters, checked against the data
#: (see :func:`konstanz_household`). ``+`` adds a meter's energy, ``-`` subtracts it.
LOAD_METERS: dict[int, dict[str, int]] = {
    # PV and heat pump on their own meters: at night the household meter reads less than the heat
    # pump half of the time, and it does not drop when the PV produces (full feed-in, no export meter).
    1: {"grid_import": +1},
    2: {"grid_import": +1},                                   # no PV, no heat pump (gas heating)
    3: {"grid_import": +1, "pv": +1, "grid_export": -1},
    # the heat pump and the EV charger are behind the household meter (night import ≥ both)
    4: {"grid_import": +1, "pv": +1, "grid_export": -1, "heat_pump": -1, "ev": -1},
    5: {"grid_import": +1},
    # House 6's balance holds an unmetered consumer that takes the PV surplus up to ≈ 4.4 kW (PV −
    # export saturates there; a battery or a heating rod): kept, it is what the house draws, but this
    # "load" follows the sun and needs a PV forecast to be predicted (see the load backtest's
    # ``pv-oracle`` variant).
    6: {"grid_import": +1, "pv": +1, "grid_export": -1},
}


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(str(path), "", f"{what} not found (set PEMS_SHARED or --data to the shared data folder)")
    return path


def _default_root(root: Path | None) -> Path:
    if root is not None:
        return Path(root)
    from pems.calibration.datasets import shared_data

    return shared_data()


def meter_energy(readings: pd.DataFrame, max_step: float = MAX_KWH_PER_HOUR, spike_factor: float = 3.0) -> pd.DataFrame:
    """Energy per step [kWh] from cumulative meter readings [kWh].

    A step is NaN where either reading is missing (a gap: the energy is not attributable to one
    step), where the meter went backwards (a reset) or jumped by more than ``max_step``, or by more
    than ``spike_factor`` times the meter's 99.9th percentile step (a logger catching up on missed
    counts: house 3's PV meter books 26 kWh at midnight). OPSD stamps
    each hourly reading with the start of the hour it closes (the reading labelled 10:00 is the meter
    at 11:00): checked on the PV meters in June, production starts in the hour labelled 03:00 and
    ends in the one labelled 19:00, symmetric about solar noon (sunrise 03:22, sunset 19:33 UTC in
    Konstanz), and the hour labelled 02:00 is dark. So the difference to the previous reading is the
    energy of the hour starting at the label.
    """
    e = readings.diff().round(6)  # readings have 1 Wh resolution; drop float noise of the difference
    e = e.where((e >= 0) & (e <= max_step))
    cap = spike_factor * e.quantile(0.999)
    return e.where(e.le(cap.fillna(np.inf), axis=1))


def konstanz_household(root: Path | None = None, n: int = 1, include_ev: bool = False) -> pd.DataFrame:
    """One Konstanz household: household load without heating, hourly.

    The CSV holds cumulative meter readings [kWh]. Every meter is differenced (see
    :func:`meter_energy`) and the load is formed per house (:data:`LOAD_METERS`):
    ``grid_import + pv − grid_export − heat_pump − ev`` where the house has those meters behind its
    grid meter. Houses 1, 2 and 5 meter the household alone (house 1's PV feeds the grid directly and
    its heat pump has its own meter). Circulation pumps of gas heating stay in: they are ordinary
    household electricity. The EV charger is left out by default: it is a deferrable load an EMS
    schedules (its own device), and its multi-kW sessions would dominate the error of a household
    forecast.

    Parameters
    ----------
    root
        The shared data folder (default: ``../shared/data`` or ``$PEMS_SHARED/data``).
    n
        Household number, 1–6.
    include_ev
        Keep the EV charging in the load (house 4 only).

    Returns
    -------
    pandas.DataFrame
        Regular hourly UTC index named ``time`` (each row is the hour starting there), columns
        ``P_load`` [W] (mean power over the hour, NaN where a meter is missing) and the energies of
        the meters it was formed from [kWh].
    """
    if n not in LOAD_METERS:
        raise InputError("households-konstanz", "household", f"{n} is not a household; expected 1–6")
    root = _default_root(root)
    path = _need(root / "households-konstanz" / f"power_of_residential_{n}.csv", f"household {n}")
    raw = pd.read_csv(path)
    prefix = f"DE_KN_residential{n}_"
    raw.columns = [c.replace(prefix, "") for c in raw.columns]
    index = pd.DatetimeIndex(pd.to_datetime(raw.pop("utc_timestamp"), utc=True), name="time")
    raw.index = index
    raw = raw[~raw.index.duplicated()].sort_index()
    full = pd.date_range(raw.index[0], raw.index[-1], freq="1h", name="time")
    raw = raw.reindex(full)  # gaps become NaN rows so that no difference spans them
    meters = dict(LOAD_METERS[n])
    if include_ev and "ev" in meters:
        meters.pop("ev")
    missing = [m for m in meters if m not in raw]
    if missing:
        raise InputError(str(path), ", ".join(missing), "meter column missing")
    energy = meter_energy(raw[list(meters)].astype(float))
    load = sum(sign * energy[m] for m, sign in meters.items())  # NaN if any meter is missing
    # A small negative balance is metering noise between meters read a few seconds apart.
    load = load.where(load > -0.05).clip(lower=0.0)
    out = pd.DataFrame({"P_load": 1000.0 * load}, index=full)  # kWh in one hour → mean W
    for m in meters:
        out[f"E_{m}_kwh"] = energy[m]
    return out.loc[out["P_load"].first_valid_index():out["P_load"].last_valid_index()]


def entsoe_prices(root: Path | None = None, zone: str = "CZ") -> pd.DataFrame:
    """Day-ahead prices of one bidding zone, hourly.

    The source stamps each delivery hour's start in local time with its UTC offset (``+01:00`` /
    ``+02:00``); it is converted to UTC. The file's own lag and rolling columns are dropped (they
    are recomputed by the forecaster from what is known at issue time); the ENTSO-E day-ahead load
    and wind/solar forecasts are kept.

    Parameters
    ----------
    root
        The shared data folder.
    zone
        ``CZ``, ``DE_LU`` or ``AT`` (any ``<zone>.csv`` in ``dayahead-prices``).

    Returns
    -------
    pandas.DataFrame
        Regular hourly UTC index ``time``; ``price`` [EUR MWh⁻¹] (negative prices included),
        ``load_forecast``, ``solar``, ``wind_onshore``, ``wind_offshore`` [MW].
    """
    root = _default_root(root)
    folder = _need(root / "dayahead-prices", "the day-ahead price folder")
    path = folder / f"{zone}.csv"
    if not path.exists():
        zones = sorted(p.stem for p in folder.glob("*.csv"))
        raise InputError(str(path), "zone", f"no prices for {zone!r}; expected one of {', '.join(zones)}")
    raw = pd.read_csv(path)
    time = pd.to_datetime(raw.iloc[:, 0], utc=True)
    keep = [c for c in ("price", "load_forecast", "solar", "wind_onshore", "wind_offshore") if c in raw]
    if "price" not in keep:
        raise InputError(str(path), "price", "column missing")
    out = raw[keep].astype(float)
    out.index = pd.DatetimeIndex(time, name="time")
    out = out[~out.index.duplicated()].sort_index()
    full = pd.date_range(out.index[0], out.index[-1], freq="1h", name="time")
    return out.reindex(full)


def summary(frame: pd.DataFrame, column: str) -> dict[str, float]:
    """Span and completeness of one column (for reports)."""
    s = frame[column]
    return {"first": str(s.first_valid_index()), "last": str(s.last_valid_index()),
            "rows": int(len(s)), "valid_share": float(np.mean(np.isfinite(s.to_numpy(dtype=float))))}

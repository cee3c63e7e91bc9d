"""Comfort bands per room and step, from the scenario's schedule and the home's set-points."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pems.scenarios.spec import Comfort, RoomComfort
from pems.twin.house import House, Room

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Band:
    """A room's band by day and by night [°C]."""

    low: float
    high: float
    night_low: float
    night_high: float


def room_band(comfort: Comfort, room: Room) -> Band:
    """Resolve a room's band: scenario per-room entry > the home's set-points > scenario default."""
    own: RoomComfort | None = comfort.rooms.get(room.id)
    if own is not None:
        return Band(own.low, own.high, _or(own.night_low, own.low), _or(own.night_high, own.high))
    if comfort.use_house_setpoints and room.comfort_c is not None:
        low = room.comfort_c - comfort.band_below_setpoint_k
        night_low = _or(room.eco_c, room.comfort_c) - comfort.band_below_setpoint_k
        high = max(comfort.high, low + 1.5)
        return Band(low, high, night_low, _or(comfort.night_high, high))
    return Band(comfort.low, comfort.high, _or(comfort.night_low, comfort.low),
                _or(comfort.night_high, comfort.high))


def comfort_notes(comfort: Comfort, house: House, where: str = "comfort") -> list[str]:
    """What a comfort table says that does not take effect with this house, and which value does.

    The house's set-points win over ``low``/``night_low`` (and a room's own entry over both): a value
    the user wrote that no room uses is not silently dropped. One line per overridden key.
    """
    given = comfort.model_fields_set
    by_house = [r for r in house.rooms if r.id not in comfort.rooms
                and comfort.use_house_setpoints and r.comfort_c is not None]
    own = [r for r in house.rooms if r.id in comfort.rooms]
    notes = []
    for key in ("low", "night_low"):
        if key not in given:
            continue
        users = [r for r in house.rooms if r not in by_house and r not in own]
        if users:
            continue  # some room takes it
        why = []
        if by_house:
            b = room_band(comfort, by_house[0])
            v = b.low if key == "low" else b.night_low
            why.append(f"{len(by_house)} room(s) take theirs from the house's set-points "
                       f"({'comfort_c' if key == 'low' else 'eco_c'} − band_below_setpoint_k, e.g. "
                       f"{by_house[0].id}: {v:g} °C) because use_house_setpoints = true"
                       f"{' (the default)' if 'use_house_setpoints' not in given else ''}")
        if own:
            why.append(f"{len(own)} room(s) have their own band under {where}.rooms")
        notes.append(f"{where}.{key} = {getattr(comfort, key):g} °C is used by no room: " + "; ".join(why)
                     + (". Set use_house_setpoints = false to apply it" if by_house else ""))
    return notes


def warn_comfort(comfort: Comfort, house: House, source: object, where: str = "comfort") -> list[str]:
    """Log :func:`comfort_notes` as warnings naming ``source`` (a file); returns them."""
    notes = comfort_notes(comfort, house, where)
    for n in notes:
        log.warning("%s: %s", source, n)
    return notes


def _or(v: float | None, default: float) -> float:
    return default if v is None else v


def is_day(index: pd.DatetimeIndex, comfort: Comfort, tz: str) -> np.ndarray:
    """True where the local time of day lies in [day_start, night_start)."""
    local = index.tz_convert(tz)
    minutes = local.hour * 60 + local.minute
    d0 = comfort.day_start.hour * 60 + comfort.day_start.minute
    n0 = comfort.night_start.hour * 60 + comfort.night_start.minute
    if d0 <= n0:
        return np.asarray((minutes >= d0) & (minutes < n0))
    return np.asarray((minutes >= d0) | (minutes < n0))


def comfort_bands(comfort: Comfort, house: House, index: pd.DatetimeIndex) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lower and upper band per step (rows) and room (columns) [°C].

    The band in force for a step is the one at the step's start.
    """
    day = is_day(index, comfort, house.site.timezone)
    low, high = {}, {}
    for room in house.rooms:
        b = room_band(comfort, room)
        low[room.id] = np.where(day, b.low, b.night_low)
        high[room.id] = np.where(day, b.high, b.night_high)
    return pd.DataFrame(low, index=index), pd.DataFrame(high, index=index)

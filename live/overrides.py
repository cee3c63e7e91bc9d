"""What the people of the home ask for by hand: a room warmer or a different band until a time, a
battery reserve, or the optimiser paused (the home's own logic runs it). Every override has an expiry, is an event in the
loop's log, shows on the live page, and survives a restart (``overrides.json`` in the state folder,
written atomically).

They act where the controller's wishes come from: a boost or a band replaces the room's comfort
band in the forecast the controller plans with (so the MPC heats ahead for it, as for any band);
a pause hands the home back for the step, with the reason, as the safety layer does. A battery
reserve is a floor on the state of charge the plan may not go below (``Forecast.extras["soc_floor"]``,
which the MPC's LP takes as the SOC's lower bound), and the commanded discharge stops at it whatever
the controller asked (:meth:`Overrides.limit`). Below the reserve the battery is not discharged, and
is charged when the plan finds it worth it. A home handed back (a pause, a fault) runs on the
inverter's own discharge limit, which PEMS does not change.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pems.live.state import write_atomic
from pems.twin.signals import Action, Forecast

KINDS = ("boost", "band", "pause", "reserve")
#: A boost: the room's band raised to this much above its usual lower bound, at least to 22 °C [K].
BOOST_K = 2.0
MAX_HOURS = 7 * 24  # the longest an override may last [h]


class OverrideError(ValueError):
    """An override that cannot be taken (the page shows the message)."""


@dataclass(frozen=True)
class Override:
    """One override."""

    id: str
    kind: str  # boost | band | pause | reserve
    until: str  # ISO 8601 UTC: it ends then
    created: str
    room: str | None = None  # boost, band
    low: float | None = None  # band [°C]
    high: float | None = None  # band [°C]
    by: str = ""  # who asked (the page's user)
    soc: float | None = None  # reserve: the floor on the state of charge [%]

    @property
    def end(self) -> pd.Timestamp:
        return pd.Timestamp(self.until)


class Overrides:
    """The home's overrides (see the module notes); shared by the loop and the web page's threads.

    Parameters
    ----------
    rooms
        The home's room ids.
    path
        ``overrides.json`` (None: kept in memory only).
    events
        The loop's event log (``override`` and ``override_end`` events).
    """

    def __init__(self, rooms: list[str] | tuple[str, ...], path: str | Path | None = None, events: Any = None) -> None:
        self.rooms = list(rooms)
        self.path = None if path is None else Path(path)
        self.events = events
        self._lock = threading.Lock()
        self._items: list[Override] = []
        if self.path is not None and self.path.is_file():
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                self._items = [Override(**o) for o in raw if o.get("kind") in KINDS]
            except (OSError, ValueError, TypeError):
                self._items = []  # a broken file: no overrides (the page shows none; the loop runs on)

    # ------------------------------------------------------------------ changes (the page)
    def add(self, now: pd.Timestamp, kind: str, hours: float, room: str | None = None, low: float | None = None,
            high: float | None = None, by: str = "", soc: float | None = None) -> Override:
        """Take an override lasting ``hours`` from ``now``; :class:`OverrideError` says why not.

        ``soc``: the reserve's floor [%] (``kind="reserve"``)."""
        if kind not in KINDS:
            raise OverrideError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
        if not (isinstance(hours, (int, float)) and 0 < hours <= MAX_HOURS):
            raise OverrideError(f"hours {hours!r}: expected more than 0 and at most {MAX_HOURS}")
        if kind in ("boost", "band") and room not in self.rooms:
            raise OverrideError(f"room {room!r}: expected one of {', '.join(self.rooms)}")
        if kind == "band":
            if low is None or high is None or not (5.0 <= low < high <= 30.0):
                raise OverrideError("a band needs low < high, both within 5–30 °C")
        if kind == "reserve" and not (isinstance(soc, (int, float)) and 0 < soc <= 100):
            raise OverrideError(f"soc {soc!r}: a reserve needs a state of charge above 0 and at most 100 %")
        o = Override(uuid.uuid4().hex[:8], kind, (now + pd.Timedelta(hours=hours)).isoformat(), now.isoformat(),
                     room if kind in ("boost", "band") else None, low if kind == "band" else None,
                     high if kind == "band" else None, by, float(soc) if kind == "reserve" else None)
        with self._lock:
            self._items = [x for x in self._items if not _same_target(x, o)] + [o]
            self._save()
        self._event("override", now, o)
        return o

    def cancel(self, now: pd.Timestamp, oid: str, by: str = "") -> bool:
        with self._lock:
            gone = [x for x in self._items if x.id == oid]
            self._items = [x for x in self._items if x.id != oid]
            if gone:
                self._save()
        for o in gone:
            self._event("override_end", now, o, why=f"cancelled{' by ' + by if by else ''}")
        return bool(gone)

    # ------------------------------------------------------------------ the loop
    def active(self, now: pd.Timestamp) -> list[Override]:
        """The overrides in force at ``now``; the expired ones end (an event each)."""
        with self._lock:
            ended = [x for x in self._items if x.end <= now]
            if ended:
                self._items = [x for x in self._items if x.end > now]
                self._save()
            items = list(self._items)
        for o in ended:
            self._event("override_end", now, o, why="expired")
        return items

    def paused(self, now: pd.Timestamp) -> Override | None:
        return next((o for o in self.active(now) if o.kind == "pause"), None)

    def reserve(self, now: pd.Timestamp) -> float | None:
        """The battery reserve in force at ``now`` [fraction 0–1], or None."""
        o = next((o for o in self.active(now) if o.kind == "reserve"), None)
        return None if o is None or o.soc is None else o.soc / 100.0

    def apply(self, fc: Forecast, now: pd.Timestamp) -> Forecast:
        """``fc`` with the bands of boosted or re-banded rooms replaced while their overrides last, and
        a battery reserve as ``extras["soc_floor"]`` [fraction 0–1]."""
        active = self.active(now)
        reserve = next((o.soc / 100.0 for o in active if o.kind == "reserve" and o.soc is not None), None)
        if reserve is not None:
            fc = replace(fc, extras={**fc.extras, "soc_floor": reserve})
        items = [o for o in active if o.kind in ("boost", "band") and o.room in fc.rooms]
        if not items:
            return fc
        low, high = fc.low.copy(), fc.high.copy()
        idx = pd.DatetimeIndex(fc.index)
        for o in items:
            j = list(fc.rooms).index(o.room)
            on = np.asarray(idx < o.end)
            if o.kind == "band":
                low[on, j], high[on, j] = o.low, o.high
            else:
                target = np.maximum(low[on, j] + BOOST_K, 22.0)
                low[on, j] = target
                high[on, j] = np.maximum(high[on, j], target + 1.0)
        return replace(fc, low=low, high=high)

    def limit(self, action: Action, soc: float | None, now: pd.Timestamp) -> Action:
        """``action`` with no discharge commanded once the battery is at or below the reserve
        (whatever the controller asked: an NLP fallback or a plan on a mistaken estimate)."""
        floor = self.reserve(now)
        if floor is None or soc is None or action.bat_w is None or action.bat_w >= 0 or soc > floor:
            return action
        return replace(action, bat_w=0.0)

    def as_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(o) for o in self._items]

    # ------------------------------------------------------------------ inside
    def _save(self) -> None:
        if self.path is None:
            return
        try:
            write_atomic(self.path, json.dumps([asdict(o) for o in self._items], indent=1))
        except OSError:
            pass  # a full disk: the override holds for this run; the loop's own state reports the disk

    def _event(self, kind: str, now: pd.Timestamp, o: Override, **extra: Any) -> None:
        if self.events is not None:
            self.events.write(kind, now, override=o.kind, id=o.id, room=o.room, until=o.until, low=o.low,
                              high=o.high, soc=o.soc, by=o.by, **extra)


def _same_target(a: Override, b: Override) -> bool:
    """A new override replaces an older one of the same kind for the same room (or the one pause)."""
    return a.kind == b.kind and a.room == b.room

"""One entry point for histories: a CSV/Parquet file or an InfluxDB URL (through a mapping)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pems.calibration.history import History, load_history, prepare_history
from pems.errors import InputError
from pems.twin.house import House


def is_url(source: str) -> bool:
    return "://" in str(source)


def open_history(source: str | Path, house: House | None = None, step: pd.Timedelta = pd.Timedelta(minutes=15),
                 mapping: str | Path | None = None, start: pd.Timestamp | None = None,
                 end: pd.Timestamp | None = None, use_cache: bool = True,
                 progress: Callable[[int, int], None] | None = None, require_rooms: bool = True) -> History:
    """Load a history from a file or extract it from InfluxDB.

    For an InfluxDB source ``start`` and ``end`` are required and the mapping (a preset name or a
    file; default ``loxone-growatt``) says where each column lives; the history then knows, for each
    column, the source series it came from (the quality report names them).
    """
    if not is_url(str(source)):
        h = load_history(Path(source), house, step, require_rooms=require_rooms)
        if start is not None or end is not None:
            h = h.between(start, end)
        return h
    from pems.calibration.influx import extract
    from pems.calibration.mapping import load_mapping

    if start is None or end is None:
        raise InputError("command line", "--start/--end", "an InfluxDB source needs both time bounds")
    m = load_mapping(mapping or "loxone-growatt")
    rooms = list(house.room_ids) if house is not None else None
    if rooms is not None:
        unknown = [r for r in rooms if r not in m.rooms]
        if unknown and m.rooms:
            raise InputError(m.name, "rooms", f"the mapping has no source name for rooms {unknown}")
    raw = extract(str(source), m, start, end, step, rooms=rooms, use_cache=use_cache, progress=progress)
    if require_rooms and (raw.empty or not [c for c in raw if c.startswith("T_room__")]):
        raise InputError(str(source), "T_room__<room>", "no room temperatures in that period")
    if raw.empty:
        raise InputError(str(source), "time", "no data in that period")
    h = prepare_history(raw, str(source), house, step, require_rooms=require_rooms)
    names = {}
    for s in m.expanded(rooms):
        tags = "".join(f",{k}={v}" for k, v in s.tags.items())
        names[s.column] = f"{s.bucket}/{s.measurement}{tags}/{s.field}"
        if s.column.startswith("relay__"):
            names["P_heat__" + s.column.split("__", 1)[1]] = names[s.column]
    h.sources = names
    return h

"""A house description inferred from a history alone, for ``pems calibrate`` without ``--house``."""

from __future__ import annotations

import numpy as np

from pems.calibration.history import History
from pems.twin.house import House

#: Without a house file: the example site of docs/reference/house.md (South Moravia) and electric underfloor heating.
DEFAULT_SITE = {"latitude": 49.19, "longitude": 16.61, "altitude_m": 230, "timezone": "Europe/Prague",
                "country": "CZ"}
W_PER_M2 = 100.0  # electric floor heating is sized at about this much per m² of floor


def house_from_history(history: History, name: str = "from-history") -> House:
    """Rooms from the ``T_room__`` columns; each heater's rating is the largest heating power logged,
    its floor area that rating at 100 W/m² (5–60 m²). No neighbours (a history does not say which
    rooms touch) and no windows (the sun then enters through a horizontal aperture that
    calibration fits)."""
    rooms = []
    for r in history.rooms:
        col = f"P_heat__{r}"
        p = float(np.nanmax(history.data[col].to_numpy())) if col in history.data and \
            history.data[col].notna().any() else 0.0
        area = float(np.clip(p / W_PER_M2, 5.0, 60.0)) if p > 0 else 15.0
        rooms.append({"id": r, "floor_area_m2": round(area, 1), "heater_w": round(max(p, 0.0), 1)})
    return House.model_validate({"name": name, "site": DEFAULT_SITE, "rooms": rooms})

"""What publishing to Home Assistant costs the live loop per control step (the issue's target: ≤ 5 ms).

One step of the 17-room reference home with its 48 h plan, to a real mosquitto on 127.0.0.1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pems.live.home_assistant import HomeAssistant
from pems.twin.house import load_house
from services import mosquitto


@pytest.fixture(scope="module")
def publisher(tmp_path_factory):
    house = load_house("reference")
    with mosquitto(tmp_path_factory.mktemp("broker")) as b:
        ha = HomeAssistant(b.host, b.port, house=house.name, rooms=house.room_ids, has_battery=True)
        ha.connect()
        yield ha, house
        ha.close()


def test_one_step_to_home_assistant(benchmark, publisher):
    ha, house = publisher
    rooms = house.room_ids
    t0 = pd.Timestamp("2024-01-10T06:00Z")
    idx = pd.date_range(t0, periods=192, freq="15min")
    plan = pd.DataFrame({f"P_heat__{r}": np.full(192, 500.0) for r in rooms} | {"P_bat": np.zeros(192)}, index=idx)
    T = np.full(len(rooms), 21.0)
    heat = np.full(len(rooms), 300.0)
    msg = benchmark(lambda: ha.observed(t0, T, 2.0, 0.0, 600.0, 2000.0, 0.0, 0.5, heat, 900.0, "active", plan))
    assert msg["P_heat"] == pytest.approx(300.0 * len(rooms))
    assert benchmark.stats.stats.median < 0.005

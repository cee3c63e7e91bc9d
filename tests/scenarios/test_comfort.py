"""Comfort bands: contradictions refused, overridden values named with the value in force."""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import ValidationError

from pems.scenarios.comfort import comfort_bands, comfort_notes, room_band
from pems.scenarios.spec import Comfort, RoomComfort
from pems.twin.house import load_house


@pytest.mark.parametrize("kw, words", [
    ({"low": 25.5, "high": 24.0}, "low = 25.5 °C must be below high = 24 °C"),
    ({"low": 20.0, "high": 24.0, "night_low": 24.0}, "night_low must be below night_high, from high"),
    ({"low": 20.0, "high": 24.0, "night_high": 19.0}, "night_low, from low must be below night_high"),
    ({"day_start": "22:00", "night_start": "22:00"}, "no night"),
])
def test_a_band_that_contradicts_itself_is_refused(kw, words):
    with pytest.raises(ValidationError, match=words):
        Comfort(**kw)
    if "day_start" not in kw:
        with pytest.raises(ValidationError, match=words):
            RoomComfort(**{"low": 20.0, "high": 24.0, **kw})


def test_values_the_house_overrides_are_named_with_the_value_in_force():
    house = load_house("reference")  # every room has comfort_c and eco_c
    c = Comfort(low=21.5, night_low=19.0)
    notes = comfort_notes(c, house)
    assert len(notes) == 2
    room = house.rooms[0]
    band = room_band(c, room)
    assert band.low == room.comfort_c - c.band_below_setpoint_k != 21.5  # the house's set-point is in force
    assert "comfort.low = 21.5 °C is used by no room" in notes[0] and f"{band.low:g} °C" in notes[0]
    assert "use_house_setpoints = true (the default)" in notes[0]
    # said so, it takes effect, and nothing is left to note
    c2 = Comfort(low=21.5, night_low=19.0, use_house_setpoints=False)
    assert comfort_notes(c2, house) == []
    low, _ = comfort_bands(c2, house, pd.date_range("2024-01-10T12:00", periods=1, freq="h", tz="UTC"))
    assert (low.to_numpy() == 21.5).all()
    assert comfort_notes(Comfort(), house) == []  # nothing given, nothing to say

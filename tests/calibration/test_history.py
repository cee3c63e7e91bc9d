"""History loading: resampling, relays, outliers, gaps; and the quality report on bad data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import TWO_ROOMS, house_from
from pems.calibration.history import load_history, prepare_history
from pems.calibration.quality import assess
from pems.errors import InputError


def raw(n=4 * 24 * 3, freq="15min", **cols) -> pd.DataFrame:
    idx = pd.date_range("2024-01-10", periods=n, freq=freq, tz="UTC")
    base = {"T_out": np.linspace(-2, 2, n), "ghi": 0.0, "T_room__a": 21.0 + 0.3 * np.sin(np.arange(n) / 10),
            "T_room__b": 20.0, "P_heat__a": 500.0, "P_heat__b": 300.0}
    base.update(cols)
    return pd.DataFrame(base, index=idx)


def test_relays_become_power_with_the_house_ratings():
    house = house_from(TWO_ROOMS)
    df = raw().drop(columns=["P_heat__a", "P_heat__b"])
    df["relay__a"] = np.r_[np.ones(100), np.zeros(len(df) - 100)]
    df["relay__b"] = 0.5
    h = prepare_history(df, "x", house)
    assert h.data["P_heat__a"].iloc[0] == pytest.approx(2000.0) and h.data["P_heat__a"].iloc[-1] == 0.0
    assert h.data["P_heat__b"].iloc[5] == pytest.approx(600.0)  # a duty of 0.5 × 1200 W
    with pytest.raises(InputError, match="relay"):
        prepare_history(df, "x", None)


def test_event_data_is_averaged_over_each_step_by_time():
    """A relay logged on change: on for 5 of 15 minutes → one third of the rating."""
    t = pd.to_datetime(["2024-01-10T00:00Z", "2024-01-10T00:05Z", "2024-01-10T00:15Z", "2024-01-10T00:20Z",
                        "2024-01-10T00:30Z", "2024-01-10T00:45Z"])
    df = pd.DataFrame({"T_room__a": [20.0, 20.0, 20.5, 20.5, 21.0, 21.0], "T_room__b": 20.0,
                       "P_heat__a": [0.0, 1500.0, 0.0, 0.0, 0.0, 0.0], "T_out": 0.0, "ghi": 0.0}, index=t)
    h = prepare_history(df, "x", house_from(TWO_ROOMS))
    assert h.data["P_heat__a"].iloc[0] == pytest.approx(1000.0)  # on from :05 to :15 = 2/3 of the step
    assert h.data["T_room__a"].iloc[0] == pytest.approx(20.0 + 0.5 * (7.5 / 15) * (1 - 10 / 15) / 1, abs=0.1)


def test_outliers_and_spikes_are_removed_and_counted():
    df = raw()
    df.iloc[50, df.columns.get_loc("T_room__a")] = 85.0  # out of range
    df.iloc[60, df.columns.get_loc("T_room__a")] = 30.0  # a spike 9 K above its neighbours
    df.iloc[70, df.columns.get_loc("T_out")] = -80.0
    h = prepare_history(df, "x", house_from(TWO_ROOMS))
    assert h.outliers["T_room__a"] == 2 and h.outliers["T_out"] == 1
    assert h.data["T_room__a"].max() < 22.0
    q = assess(h)
    assert any("removed" in p for p in q.signals["T_room__a"].problems)


def test_long_gaps_stay_missing_and_short_ones_are_bridged():
    df = raw()
    df.loc[df.index[10:13], "T_room__a"] = np.nan  # 45 min: bridged
    df.loc[df.index[100:140], "T_room__a"] = np.nan  # 10 h: stays a gap
    h = prepare_history(df, "x", house_from(TWO_ROOMS))
    assert h.data["T_room__a"].iloc[10:13].notna().all()
    assert h.data["T_room__a"].iloc[100:140].isna().all()
    q = assess(h)
    assert all(not (a < df.index[120] < b) for a, b in q.trusted)  # no trusted period across the gap


def test_quality_report_flags_bad_sensors_without_crashing():
    df = raw(n=4 * 24 * 6)
    df["T_room__b"] = 19.7  # stuck for days
    # heated flat out for 7.5 h while the room cools 0.8 K an hour: a relay or sensor fault
    df.loc[df.index[200:230], "T_room__a"] = df["T_room__a"].iloc[200:230] - np.linspace(0, 6, 30)
    df["P_heat__a"] = 0.0
    df.loc[df.index[200:230], "P_heat__a"] = 2000.0
    df["P_pv"] = np.nan  # a dead meter
    h = prepare_history(df, "x", house_from(TWO_ROOMS))
    q = assess(h)
    assert q.signals["T_room__b"].flatline_share > 0.9 and q.signals["T_room__b"].score < 0.2
    assert q.signals["T_room__a"].reasonableness < 0.9
    assert q.signals["P_pv"].completeness == 0.0
    assert q.trusted == []  # room b is never trustworthy, so no period is
    assert 0.0 <= q.score <= 1.0
    frame = q.to_frame()
    assert set(frame.signal) >= {"T_room__a", "T_room__b", "P_pv"}


def test_bad_files_give_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_history(tmp_path / "nope.csv")
    (tmp_path / "no_rooms.csv").write_text("time,T_out\n2024-01-01T00:00Z,1\n2024-01-01T00:15Z,2\n")
    with pytest.raises(InputError, match="T_room"):
        load_history(tmp_path / "no_rooms.csv")
    (tmp_path / "no_time.csv").write_text("when,T_room__a\n1,2\n")
    with pytest.raises(InputError, match="time"):
        load_history(tmp_path / "no_time.csv")
    raw().rename(columns={"T_room__b": "T_room__garage"}).rename_axis("time").reset_index().to_csv(
        tmp_path / "garage.csv", index=False)
    with pytest.raises(InputError, match="garage"):
        load_history(tmp_path / "garage.csv", house_from(TWO_ROOMS))

"""The car's spec and its week on the model's steps: the charger's feasible powers, when it is away,
the energy its trips use and when it must be full (issue: the car in the home, first part)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from pems.twin.ev import Charger, Ev, Trip, ev_signals

TZ = "Europe/Prague"
STEP = pd.Timedelta(minutes=15)
COMMUTE = Ev(capacity_kwh=60, trips=[Trip(days=["mon", "tue", "wed", "thu", "fri"], out="07:00", back="17:30",
                                          drive_kwh=12.0)])


def test_the_charger_never_charges_below_its_minimum_nor_above_its_maximum():
    c = Charger(min_current_a=6, max_current_a=16, phases=3)
    assert c.power_ranges() == [(3 * 230 * 6, 3 * 230 * 16)]
    assert c.feasible(3000) == 0.0 and c.feasible(4140) == 4140 and c.feasible(5000) == 5000
    assert c.feasible(20000) == 11040 and c.feasible(-100) == 0.0 and c.feasible(float("nan")) == 0.0
    s = Charger(min_current_a=6, max_current_a=16, phases=3, phase_switching=True)
    assert s.power_ranges() == [(1380.0, 3680.0), (4140.0, 11040.0)]
    assert s.feasible(1000) == 0 and s.feasible(2000) == 2000 and s.feasible(3900) == 3680 and s.feasible(4200) == 4200
    for p in np.linspace(-500, 15000, 301):  # whatever the command
        f = s.feasible(p)
        assert f == 0 or any(lo <= f <= hi for lo, hi in s.power_ranges())
        assert f <= max(p, 0)
    with pytest.raises(ValidationError, match="above max_current_a"):
        Charger(min_current_a=20, max_current_a=16)


def test_a_weekday_commute_in_winter_and_in_summer_local_time():
    winter = pd.date_range("2024-01-08T00:00Z", periods=7 * 96, freq=STEP)  # Monday
    s = ev_signals(COMMUTE, winter, STEP, TZ)
    mon = s.loc["2024-01-08"]
    away = mon.index[mon["plugged"] < 1]
    assert away[0] == pd.Timestamp("2024-01-08T06:00Z") and away[-1] == pd.Timestamp("2024-01-08T16:15Z")  # 07:00–17:30 CET
    assert mon.loc["2024-01-08T06:00Z", "need_wh"] == pytest.approx(0.8 * 60000)
    assert mon.loc["2024-01-08T16:30Z", "drive_wh"] == pytest.approx(12000.0)  # back at 17:30 CET
    assert s["drive_wh"].sum() == pytest.approx(5 * 12000.0) and (s["need_wh"] > 0).sum() == 5
    weekend = s.loc["2024-01-13":"2024-01-14"]
    assert (weekend["plugged"] == 1).all() and (weekend["drive_wh"] == 0).all()
    summer = pd.date_range("2024-07-01T00:00Z", periods=96, freq=STEP)  # Monday, CEST
    j = ev_signals(COMMUTE, summer, STEP, TZ)
    assert j.index[j["plugged"] < 1][0] == pd.Timestamp("2024-07-01T05:00Z")


def test_a_trip_that_leaves_mid_step_and_the_arrival_soc_drawn_reproducibly():
    ev = Ev(capacity_kwh=50, target_soc=0.9, arrival_soc_mean=0.5, arrival_soc_sd=0.1,
            trips=[Trip(days=["sat"], out="09:40", back="13:05")])
    idx = pd.date_range("2024-01-13T00:00Z", periods=96, freq=STEP)  # Saturday
    a, b = ev_signals(ev, idx, STEP, TZ, seed=3), ev_signals(ev, idx, STEP, TZ, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a.loc["2024-01-13T08:30Z", "plugged"] == pytest.approx(10 / 15)  # leaves at 08:40 UTC
    assert a.loc["2024-01-13T12:00Z", "plugged"] == pytest.approx(10 / 15)  # back at 12:05 UTC
    used = a["drive_wh"].sum() / 1000
    assert 0 <= used <= 0.9 * 50 and used == pytest.approx(a.loc["2024-01-13T12:00Z", "drive_wh"] / 1000)
    many = [ev_signals(ev, idx, STEP, TZ, seed=k)["drive_wh"].sum() / 1000 for k in range(300)]
    assert np.mean(many) == pytest.approx((0.9 - 0.5) * 50, abs=0.5)  # N(0.5, 0.1) on arrival


def test_a_calendar_replaces_the_weeks_trips_on_its_days():
    cal = pd.DataFrame({"time_out": ["2024-01-09 10:00"], "time_back": ["2024-01-11 20:00"], "drive_kwh": [40.0]})
    idx = pd.date_range("2024-01-08T00:00Z", periods=5 * 96, freq=STEP)
    s = ev_signals(COMMUTE, idx, STEP, TZ, calendar=cal)
    assert s.loc["2024-01-09T05:00Z", "plugged"] == 1.0  # Tuesday: the calendar's trip, not the commute
    assert s.loc["2024-01-10T12:00Z", "plugged"] == 0.0  # away for three days: no commute on those days
    assert s.loc["2024-01-11T19:00Z", "drive_wh"] == pytest.approx(40000)
    assert s["drive_wh"].sum() == pytest.approx(40000 + 12000 + 12000)  # and Monday's and Friday's commutes

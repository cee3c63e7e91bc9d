"""The sun rises at the right hour: in every built-in scenario, and for every built-in weather set
replayed at a house anywhere, irradiance and PV peak around local solar noon and are zero at
local solar midnight.

Built-in weather was measured elsewhere (Amsterdam, Piedmont, Holzkirchen, Alaska, North
Carolina); replayed at UTC stamps in another place's calendar its sun lands hours off (Sand Point's
noon is 22:40 in Prague). These tests fail on any such misalignment.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pems.scenarios.spec import builtin_scenarios, load_scenario
from pems.twin.house import Site
from pems.twin.inputs import InputSpec, build_inputs
from pems.twin.weather import BUILTIN_WEATHER, aligned_to, load_weather


def solar_hours(index: pd.DatetimeIndex, step: pd.Timedelta, longitude: float) -> np.ndarray:
    """Local apparent solar time at the middle of each step [h, 0..24)."""
    import pvlib

    mid = index + step / 2
    eot_min = pvlib.solarposition.equation_of_time_spencer71(mid.day_of_year.to_numpy())
    utc_h = (mid - mid.normalize()).total_seconds().to_numpy() / 3600
    return (utc_h + longitude / 15 + eot_min / 60) % 24


def hourly_envelope(values: np.ndarray, hours: np.ndarray) -> pd.Series:
    """Highest value in each hour of solar time over the run (0 = the hour centred on solar midnight).

    The envelope is the shape of the clearest days; a mean profile of one real week can peak at
    10:00 when its afternoons were cloudy, the envelope cannot.
    """
    return pd.Series(values).groupby(np.floor((hours + 0.5) % 24).astype(int)).max()


def assert_sun_at_noon(out: pd.DataFrame, step: pd.Timedelta, longitude: float, what: str) -> None:
    """``ghi`` and ``P_pv`` peak between 11:00 and 14:00 local solar time and are zero at midnight."""
    hours = solar_hours(out.index, step, longitude)
    for col in ("ghi", "P_pv"):
        v = out[col].to_numpy()
        env = hourly_envelope(v, hours)
        if env.max() <= 0:
            continue  # no PV in this house
        peak = int(env.idxmax())
        assert 11 <= peak <= 13, f"{what}: {col} peaks at {peak}:00 solar time ({env.round(0).to_dict()})"
        centroid = float((hours * v).sum() / v.sum())  # when, on average, the energy arrives
        assert 11.0 <= centroid <= 14.0, f"{what}: {col} arrives on average at {centroid:.2f} h solar time"
        midnight = np.abs(((hours + 12) % 24) - 12) < 1.0  # within an hour of solar midnight
        assert (v[midnight] == 0).all(), f"{what}: {col} is {v[midnight].max():.3g} near solar midnight"


@pytest.mark.parametrize("name", builtin_scenarios())
def test_every_builtin_scenario_has_its_sun_at_noon(name):
    sc = load_scenario(name)
    n = min(sc.n_steps, int(pd.Timedelta(days=28) / sc.step))  # the year: its first four weeks
    out = build_inputs(sc.house, sc.input_spec(), sc.start, n, sc.step)
    assert_sun_at_noon(out, sc.step, sc.house.site.longitude, name)


@pytest.mark.slow
def test_the_year_has_its_sun_at_noon_in_every_month():
    sc = load_scenario("year")
    out = build_inputs(sc.house, sc.input_spec(), sc.start, sc.n_steps, sc.step)
    local = out.index.tz_convert(sc.house.site.timezone)
    for month in range(1, 13):
        part = out[local.month == month]
        assert_sun_at_noon(part, sc.step, sc.house.site.longitude, f"year, month {month}")


# Houses far from where the weather was measured, east and west, north and south.
SITES = {
    "Brno": Site(latitude=49.19, longitude=16.61, timezone="Europe/Prague"),
    "Lisbon": Site(latitude=38.7, longitude=-9.1, timezone="Europe/Lisbon"),
    "Tokyo": Site(latitude=35.7, longitude=139.7, timezone="Asia/Tokyo"),
    "Denver": Site(latitude=39.7, longitude=-105.0, timezone="America/Denver"),
}


@pytest.mark.parametrize("weather", sorted(BUILTIN_WEATHER))
@pytest.mark.parametrize("place", sorted(SITES))
def test_builtin_weather_replayed_anywhere_peaks_at_local_solar_noon(weather, place, two_rooms):
    site = SITES[place]
    house = two_rooms.model_copy(update={"site": site})
    day = "2024-09-01" if weather == "holzkirchen-2014-autumn" else "2024-04-20"
    start = pd.Timestamp(day, tz=site.timezone).tz_convert("UTC")
    step = pd.Timedelta(minutes=15)
    out = build_inputs(house, InputSpec(weather=weather, prices="flat"), start, 7 * 96, step)
    assert_sun_at_noon(out, step, site.longitude, f"{weather} at {place}")


def test_alignment_moves_stamps_by_longitude_and_keeps_the_weather():
    w = load_weather("amsterdam-iwec")
    house = Site(latitude=49.19, longitude=16.61, timezone="Europe/Prague")
    a = aligned_to(w, house)
    shift = w.data.index - a.data.index
    assert (shift == shift[0]).all()
    assert shift[0].total_seconds() == pytest.approx((16.61 - w.site.longitude) / 15 * 3600, abs=1)
    np.testing.assert_array_equal(a.data.to_numpy(), w.data.to_numpy())  # no value changes
    assert a.site == house  # used at the house: its sun, its PV, its windows
    assert "solar time" in a.alignment
    csv_like = type(w)("x", w.data, None, False, "x.csv")
    assert aligned_to(csv_like, house) is csv_like  # a CSV is used as given, at the house


@pytest.mark.parametrize("weather", ["amsterdam-iwec", "piedmont-pvgis-tmy"])
def test_european_typical_years_keep_their_irradiation(weather):
    """Step means over a day carry the file's daily irradiation (disaggregation keeps energy)."""
    from pems.twin.weather import weather_at_steps

    w = aligned_to(load_weather(weather), Site(latitude=49.19, longitude=16.61, timezone="Europe/Prague"))
    start = pd.Timestamp("2024-06-01", tz="UTC")
    step = pd.Timedelta(minutes=15)
    index = pd.date_range(start, periods=96 * 10, freq=step)
    steps = weather_at_steps(w, index, step)
    ref = w.data["ghi"].dropna()
    ref = ref[(ref.index > pd.Timestamp("2023-06-01 06:00", tz="UTC")) & (ref.index <= pd.Timestamp("2023-06-10 18:00", tz="UTC"))]
    got = steps["ghi"][(index >= start + pd.Timedelta(hours=6)) & (index < start + pd.Timedelta(days=9, hours=18))]
    # the same dates (the typical year is replayed by calendar date), interior hours only
    assert got.sum() * 0.25 == pytest.approx(ref.sum() * 1.0, rel=0.02)


def test_the_report_says_how_the_weather_was_brought_to_the_house(tmp_path):
    """A user's own scenario on a built-in weather set is shifted: the report must say so."""
    from pems.scenarios.report import render_report
    from pems.scenarios.runner import prepare, run

    sc = load_scenario("winter-week")
    sc.spec = sc.spec.model_copy(update={"days": 0.25})
    r = run(prepare(sc), "rule-based")
    text = render_report([r], "t")
    assert "aligned by local solar time" in text and "47 min earlier in UTC" in text

"""Extraction speed: two years × ~70 series at 15-minute resolution from a local InfluxDB 1.x.

The issue's target: under 60 s cold, under 2 s from the cache.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pems.calibration.influx import extract
from pems.calibration.lineprotocol import write
from pems.calibration.mapping import Mapping, Series, load_mapping
from services import influxdb1

Q = pd.Timedelta(minutes=15)


def wide_mapping() -> Mapping:
    """The loxone-growatt preset plus the home's other logged series (humidity, weather, inverter)."""
    m = load_mapping("loxone-growatt")
    extra = [Series(column=f"humidity__{r}", bucket="loxone", measurement="humidity", field=f"humidity_{r}")
             for r in ("chodba_dole", "hosti", "koupelna_dole", "koupelna_nahore", "kuchyne", "loznice",
                       "obyvak", "pokoj_1", "pokoj_2", "pracovna")]
    extra += [Series(column=f"weather__{f}", bucket="loxone", measurement="current_weather", field=f)
              for f in ("current_temperature", "relative_humidity", "pressure", "wind_direction", "sun_elevation")]
    extra += [Series(column=f"inverter__{f}", bucket="solar", measurement="solar", field=f)
              for f in ("PV1Voltage", "PV2Voltage", "BatteryVoltage", "BatteryTemperature", "InverterTemperature",
                        "OutputPower", "InputPower", "PV1InputCurrent", "PV2InputCurrent", "INVPowerToLocalLoad")]
    return m.model_copy(update={"series": list(m.series) + extra})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("influx")
    m = wide_mapping()
    idx = pd.date_range("2023-01-01", "2025-01-01", freq=Q, inclusive="left", tz="UTC")
    rng = np.random.default_rng(1)
    cols = {s.column for s in m.expanded()}
    table = pd.DataFrame({c: np.round(rng.normal(20, 5, len(idx)), 2) for c in cols}, index=idx)
    with influxdb1(folder) as base:
        url = base.replace("http://", "influx://")
        write(url, m, table)
        yield url, m, idx, len(m.expanded())


def test_extract_two_years_cold(benchmark, server, tmp_path, monkeypatch):
    url, m, idx, n_series = server
    monkeypatch.setenv("PEMS_CACHE", str(tmp_path / "cold"))
    out = benchmark.pedantic(lambda: extract(url, m, idx[0], idx[-1] + Q, use_cache=False), rounds=1, iterations=1)
    benchmark.extra_info.update({"series": n_series, "steps": len(out)})
    assert n_series >= 70 and len(out) == len(idx)
    assert benchmark.stats.stats.max < 60.0


def test_extract_two_years_from_cache(benchmark, server, tmp_path, monkeypatch):
    url, m, idx, _ = server
    monkeypatch.setenv("PEMS_CACHE", str(tmp_path / "warm"))
    extract(url, m, idx[0], idx[-1] + Q)  # fills the cache
    out = benchmark.pedantic(lambda: extract(url, m, idx[0], idx[-1] + Q), rounds=3, iterations=1)
    assert len(out) == len(idx)
    assert benchmark.stats.stats.median < 2.0

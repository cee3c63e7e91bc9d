"""History from InfluxDB: query builders, a recorded Flux response, and real servers on loopback."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from pems.calibration.influx import SourceError, extract, flux, influxql, parse_flux_csv
from pems.calibration.lineprotocol import to_lines, write
from pems.calibration.mapping import load_mapping
from pems.errors import InputError
from services import influxdb1, victoria_metrics

HERE = Path(__file__).parent
Q = pd.Timedelta(minutes=15)
T0, T1 = pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-01-08", tz="UTC")


def source_layout(idx: pd.DatetimeIndex, seed: int = 0) -> pd.DataFrame:
    """Data in the loxone-growatt layout (helper columns included), values exactly representable."""
    rng = np.random.default_rng(seed)
    m = load_mapping("loxone-growatt")
    t = pd.DataFrame(index=idx)
    for r in m.rooms:
        t[f"T_room__{r}"] = np.round(21 + np.sin(np.arange(len(idx)) / 40) + rng.normal(0, 0.3, len(idx)), 2)
        t[f"relay__{r}"] = (rng.random(len(idx)) < 0.3).astype(float)
    t["T_out"] = np.round(rng.normal(0, 3, len(idx)), 2)
    t["ghi"] = np.clip(rng.normal(80, 80, len(idx)), 0, None).round(1)
    for c in ("_pv1", "_pv2", "_charge", "_discharge", "_from_grid", "_to_grid", "P_load_total"):
        t[c] = np.clip(rng.normal(1500, 700, len(idx)), 0, None).round(1)
    t["soc"] = rng.uniform(0.1, 0.9, len(idx)).round(3)
    t["price_import"] = rng.uniform(2, 6, len(idx)).round(3)
    return t


def test_influxql_gives_both_time_bounds_and_the_tags():
    q = influxql("relay", ["obyvak", "kuchyne"], (("type", "heating"),), "mean", T0, T1, Q)
    assert "time >= '2024-01-01T00:00:00Z'" in q and "time < '2024-01-08T00:00:00Z'" in q
    assert '"type" = \'heating\'' in q and "GROUP BY time(15m) fill(none)" in q
    assert 'mean("obyvak") AS "obyvak"' in q


def test_flux_query_and_recorded_response():
    q = flux("loxone", "temperature", ["temperature_obyvak", "temperature_outside"], (), "mean", T0, T1, Q)
    assert "range(start: 2024-01-01T00:00:00Z, stop: 2024-01-08T00:00:00Z)" in q
    assert 'aggregateWindow(every: 15m, fn: mean, createEmpty: false, timeSrc: "_start")' in q
    assert 'r._field == "temperature_obyvak" or r._field == "temperature_outside"' in q
    df = parse_flux_csv((HERE / "data" / "flux_response.csv").read_text())
    assert list(df.columns) == ["temperature_obyvak", "temperature_outside"]
    assert df.loc["2024-01-22T00:15:00Z", "temperature_obyvak"] == 21.35
    assert np.isnan(df.loc["2024-01-22T00:15:00Z", "temperature_outside"])  # a gap stays a gap


def test_line_protocol_escapes_and_inverts_scaling():
    m = load_mapping("loxone-growatt")
    idx = pd.date_range(T0, periods=2, freq=Q)
    lines = to_lines(pd.DataFrame({"soc": [0.5, np.nan], "T_room__obyvak": [21.25, 21.5]}, index=idx), m)
    assert "solar SOC=50 1704067200" in lines["solar"]  # 0–1 back to %; the NaN row is skipped
    assert len(lines["solar"]) == 1
    assert lines["loxone"][1] == "temperature temperature_obyvak=21.5 1704068100"


@pytest.mark.slow
@pytest.mark.service
def test_two_years_round_trip_through_a_real_influxdb1(tmp_path, monkeypatch):
    """Two years of 15-minute data for 17 rooms in the loxone-growatt layout: written, extracted,
    compared value by value; the second extraction comes from the cache."""
    monkeypatch.setenv("PEMS_CACHE", str(tmp_path / "cache"))
    m = load_mapping("loxone-growatt")
    idx = pd.date_range("2023-01-01", "2025-01-01", freq=Q, inclusive="left", tz="UTC")
    table = source_layout(idx)
    with influxdb1(tmp_path) as base:
        url = base.replace("http://", "influx://")
        n = write(url, m, table)
        assert n == 5 * len(idx)  # five measurement/tag groups per step
        out = extract(url, m, idx[0], idx[-1] + Q)
        assert list(out.index) == list(idx)
        for r in m.rooms:
            np.testing.assert_array_equal(out[f"T_room__{r}"].to_numpy(), table[f"T_room__{r}"].to_numpy())
            np.testing.assert_array_equal(out[f"relay__{r}"].to_numpy(), table[f"relay__{r}"].to_numpy())
        for c in ("T_out", "ghi", "price_import", "P_load_total"):
            np.testing.assert_array_equal(out[c].to_numpy(), table[c].to_numpy())
        np.testing.assert_allclose(out["soc"], table["soc"], atol=1e-12)
        np.testing.assert_allclose(out["P_pv"], table["_pv1"] + table["_pv2"], atol=1e-9)
        np.testing.assert_allclose(out["P_bat"], table["_charge"] - table["_discharge"], atol=1e-9)
        np.testing.assert_allclose(out["P_grid"], table["_from_grid"] - table["_to_grid"], atol=1e-9)
        files = list((tmp_path / "cache").rglob("*.parquet"))
        assert len(files) == 105 and not list((tmp_path / "cache").rglob("*.tmp"))
    # the server is gone: everything now comes from the cache, identical
    again = extract(url, m, idx[0], idx[-1] + Q)
    pd.testing.assert_frame_equal(out, again)


@pytest.mark.service
def test_resumes_and_never_caches_a_failed_chunk(tmp_path, monkeypatch):
    monkeypatch.setenv("PEMS_CACHE", str(tmp_path / "cache"))
    m = load_mapping("loxone-growatt")
    idx = pd.date_range(T0, T1 + pd.Timedelta(days=7), freq=Q, inclusive="left")
    with influxdb1(tmp_path) as base:
        url = base.replace("http://", "influx://")
        write(url, m, source_layout(idx))
        first = extract(url, m, T0, T1)  # one week: one chunk cached
        assert len(list((tmp_path / "cache").rglob("*.parquet"))) == 1
    with pytest.raises(SourceError, match="not reachable"):  # the second week needs the server
        extract(url, m, T0, T1 + pd.Timedelta(days=7))
    assert len(list((tmp_path / "cache").rglob("*.parquet"))) == 1  # nothing half-written
    pd.testing.assert_frame_equal(extract(url, m, T0, T1), first)  # the cached week needs no server


class _Broken(http.server.BaseHTTPRequestHandler):
    calls = 0

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer()

    def do_POST(self):  # noqa: N802
        self._answer()

    def _answer(self):
        type(self).calls += 1
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b'{"error":"engine: database is shutting down"}')

    def log_message(self, *a):
        pass


@pytest.mark.service
def test_a_failing_server_gives_a_clear_error_after_retries(tmp_path, monkeypatch):
    monkeypatch.setenv("PEMS_CACHE", str(tmp_path / "cache"))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"influx://127.0.0.1:{srv.server_address[1]}"
        with pytest.raises(SourceError, match="500.*shutting down"):
            extract(url, load_mapping("loxone-growatt"), T0, T1)
        assert _Broken.calls == 4  # one try and three retries with backoff
    finally:
        srv.shutdown()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.parquet"))


def test_bad_urls_and_credentials_in_urls_are_input_errors():
    m = load_mapping("loxone-growatt")
    for url, text in (("influx2://h:8086", "org"), ("influx://user:pw@h:8086/db", "PEMS_INFLUX"),
                      ("mqtt://h:1883", "influx://")):
        with pytest.raises(InputError, match=text):
            extract(url, m, T0, T1)
    with pytest.raises(InputError):
        load_mapping("no-such-mapping")


@pytest.mark.parametrize("url", ["http://pems:s3cr3t@h:8086/db", "pems:s3cr3t@h:8086", "influx://pems:s3cr3t@h:x/db",
                                 "//pems:s3cr3t@h", "ftp://a/b:s3cr3t@h"])
def test_a_url_that_cannot_be_read_never_echoes_its_password(url):
    from pems.calibration.influx import InfluxSource

    with pytest.raises(InputError) as err:
        InfluxSource.parse(url, "home.toml", "influx.url")
    assert "s3cr3t" not in str(err.value) and "***@h" in str(err.value), str(err.value)


@pytest.mark.service
def test_writes_through_the_v2_api_into_victoria_metrics(tmp_path):
    m = load_mapping("loxone-growatt")
    idx = pd.date_range("2024-03-01", periods=8, freq=Q, tz="UTC")
    table = source_layout(idx)[["T_room__obyvak", "T_out", "soc"]]
    with victoria_metrics(tmp_path) as base:
        n = write(base.replace("http://", "influx2://") + "?org=home", m, table)
        assert n == 2 * len(idx)  # temperature (two fields) and solar
        requests.get(f"{base}/internal/force_flush", timeout=10)
        r = requests.get(f"{base}/api/v1/export", params={"match[]": '{__name__="temperature_temperature_obyvak"}'},
                         timeout=10)
        rows = [__import__("json").loads(x) for x in r.text.splitlines() if x.strip()]
        assert rows, r.text
        got = dict(zip(rows[0]["timestamps"], rows[0]["values"]))
        for t, v in table["T_room__obyvak"].items():
            assert got[int(t.timestamp() * 1000)] == pytest.approx(v)


@pytest.mark.skipif(not os.environ.get("PEMS_INFLUX2_URL"), reason="set PEMS_INFLUX2_URL (influx2://HOST:PORT?org=ORG) "
                    "and PEMS_INFLUX_TOKEN to test against a real InfluxDB 2.x")
def test_flux_against_a_real_influxdb2(tmp_path, monkeypatch):
    monkeypatch.setenv("PEMS_CACHE", str(tmp_path / "cache"))
    url = os.environ["PEMS_INFLUX2_URL"]
    m = load_mapping("loxone-growatt")
    idx = pd.date_range("2024-03-01", periods=96, freq=Q, tz="UTC")
    table = source_layout(idx)
    write(url, m, table)
    out = extract(url, m, idx[0], idx[-1] + Q)
    np.testing.assert_allclose(out["T_room__obyvak"], table["T_room__obyvak"])


@pytest.mark.service
def test_pems_history_from_a_real_server(tmp_path):
    import subprocess
    import sys

    m = load_mapping("loxone-growatt")
    idx = pd.date_range(T0, T1, freq=Q, inclusive="left")
    with influxdb1(tmp_path) as base:
        url = base.replace("http://", "influx://")
        write(url, m, source_layout(idx))
        env = dict(os.environ, PEMS_CACHE=str(tmp_path / "cache"))
        r = subprocess.run([sys.executable, "-m", "pems", "history", url, "--start", "2024-01-01", "--end",
                            "2024-01-08", "--house", "reference", "--out", str(tmp_path / "h.parquet")],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
    h = pd.read_parquet(tmp_path / "h.parquet")
    assert len(h) == len(idx) and "P_heat__obyvak" in h and "relay__obyvak" not in h
    assert h["P_heat__obyvak"].isin([0.0, 4800.0]).all()  # relay 0/1 × the living room's 4.8 kW
    assert (h["P_load"] >= 0).all()  # the whole-house meter minus the heating
    r = subprocess.run([sys.executable, "-m", "pems", "history", url, "--start", "2024-02-01", "--end",
                        "2024-02-08", "--out", str(tmp_path / "x.parquet")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 3 and "not reachable" in r.stderr and "Traceback" not in r.stderr

"""The live loop's InfluxDB log: schema, on-disk spool, outages, restarts, a full spool, credentials.

A small in-process HTTP server stands in for InfluxDB where a test needs to see every request (the
order, a resend, a 400 for one line, a 401); the real influxd 1.x and VictoriaMetrics check that the
lines land where ``pems history`` reads them and that an outage of an hour loses nothing.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pytest
import requests

from pems.calibration.influx import extract
from pems.calibration.mapping import load_mapping
from pems.errors import InputError
from helpers import wait_for
from pems.live.influx_log import InfluxLog, read_spool
from services import free_port, influxdb1_restartable, victoria_metrics

T0 = pd.Timestamp("2024-01-15", tz="UTC")
FAST = dict(batch_s=0.05, retry_min_s=0.05, retry_max_s=0.2, timeout_s=2.0)
S15 = pd.Timedelta(seconds=15)


# ---------------------------------------------------------------------------------------------
# a stand-in InfluxDB that records every request
# ---------------------------------------------------------------------------------------------
class FakeInflux:
    """HTTP server on 127.0.0.1 speaking enough of the v1/v2 write API.

    ``status`` answers every write with that code (``None``: accept). Lines containing ``refuse``
    are refused like InfluxDB's partial write (the others are kept, the answer is 400), or with
    ``partial = False`` the whole request is refused and nothing is kept.
    """

    def __init__(self) -> None:
        self.status: int | None = None
        self.refuse: str | None = None
        self.partial = True
        self.body = ""
        self.received: list[tuple[str, str]] = []  # (db or bucket, line), every accepted line, resends too
        self.requests = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                self._reply(204, "") if fake.status is None else self._reply(
                    fake.status, fake.body.replace("{auth}", self.headers.get("Authorization", "")))

            def do_POST(self):  # noqa: N802
                u = urlparse(self.path)
                q = parse_qs(u.query)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if u.path == "/query":
                    return self._reply(200, '{"results":[{"statement_id":0}]}')
                fake.requests += 1
                if fake.status is not None:
                    return self._reply(fake.status, fake.body.replace("{auth}", self.headers.get("Authorization", "")))
                db = (q.get("db") or q.get("bucket") or [""])[0]
                lines = [x for x in body.split("\n") if x]
                bad = [x for x in lines if fake.refuse and fake.refuse in x]
                if fake.partial or not bad:
                    fake.received += [(db, x) for x in lines if x not in bad]
                if bad:
                    err = f"partial write: field type conflict dropped={len(bad)}"
                    return self._reply(400, json.dumps({"error": err}))
                self._reply(204, "")

            def _reply(self, code: int, text: str) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"influx://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def lines(self, db: str | None = None) -> list[str]:
        return [x for d, x in self.received if db is None or d == db]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    f = FakeInflux()
    yield f
    f.close()


def dead_url() -> str:
    return f"influx://127.0.0.1:{free_port()}"  # nothing listens there


def numbered(log: InfluxLog, i0: int, n: int, t0: pd.Timestamp = T0, kind: str = "commanded") -> None:
    """``n`` commands ``seq = i0 … i0+n−1``, one every 15 s of data time."""
    for i in range(i0, i0 + n):
        log.write(t0 + i * S15, {"seq": float(i)}, kind)


def seqs(lines: list[str]) -> list[int]:
    return [int(float(x.split("seq=")[1].split(" ")[0])) for x in lines if "seq=" in x]


# ---------------------------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------------------------
def test_measured_columns_follow_the_mapping_and_the_rest_goes_to_the_pems_measurement(tmp_path, two_rooms):
    log = InfluxLog(dead_url(), "loxone-growatt", tmp_path / "spool", start=False, house=two_rooms)
    try:
        r0 = two_rooms.rooms[0]
        got = log.lines(T0, {"T_room__obyvak": 21.25, "T_out": -3.5, "soc": 0.55, "relay__kuchyne": True,
                             "P_pv": 1200, "_pv1": 600.0, "ghi": np.nan, f"P_heat__{r0.id}": r0.heater_w / 2},
                        "measured")
        ns = T0.value
        assert ("loxone", f"temperature temperature_obyvak=21.25,temperature_outside=-3.5 {ns}") in got
        assert ("solar", f"solar SOC=55,PV1InputPower=600.0 {ns}") in got  # 0–1 back to %, no float noise
        # the home's tags; a bool as a float; heating power → relay duty with the house's rating
        assert ("loxone", f"relay,type=heating kuchyne=1.0,{r0.id}=0.5 {ns}") in got
        assert ("pems", f"pems,kind=measured P_pv=1200.0 {ns}") in got  # derived: not invertible
        assert not any("absolute_solar_irradiance" in x for _, x in got)  # NaN: a gap stays a gap

        est = log.lines(T0, {"T_mass__obyvak": 21.9, "T_room__obyvak": 21.3, "T_mass__kuchyne": 20.5,
                             "P_bat_cmd": -1500}, "estimated")
        assert ("pems", f"pems,kind=estimated,room=obyvak T_mass=21.9,T_room=21.3 {ns}") in est
        assert ("pems", f"pems,kind=estimated,room=kuchyne T_mass=20.5 {ns}") in est
        assert ("pems", f"pems,kind=estimated P_bat_cmd=-1500.0 {ns}") in est  # ints become floats

        ev1 = log.lines(T0, {"message": 'MQTT "broker" lost,\nretrying', "level": "warning"}, "event")
        ev2 = log.lines(T0, {"message": "back"}, "event")
        assert ev1 == [("pems", f'pems,kind=event message="MQTT \\"broker\\" lost, retrying",level="warning" {ns}')]
        assert ev2 == [("pems", f'pems,kind=event message="back" {ns + 1}')]  # not overwriting the first

        plan = pd.DataFrame({"P_heat__obyvak": [0.0, 2400.0, 2400.0], "P_bat": [-500.0, 0.0, 800.0]},
                            index=pd.date_range(T0 - pd.Timedelta(minutes=15), periods=3, freq="15min"))
        assert log.write_plan(T0, plan) == 4  # the row before the issue time is skipped
        spooled = [x for _, x in read_spool(tmp_path / "spool")]
        assert spooled[0] == f"pems,horizon=0,kind=planned,room=obyvak P_heat=2400.0 {ns}"
        assert spooled[-1] == f"pems,horizon=1,kind=planned P_bat=800.0 {ns + 900 * 10**9}"

        with pytest.raises(ValueError, match="kind"):
            log.write(T0, {"x": 1.0}, "guessed")
        with pytest.raises(ValueError, match="time zone"):
            log.write(pd.Timestamp("2024-01-01"), {"x": 1.0}, "estimated")
        with pytest.raises(ValueError, match="set by the log"):
            log.write(T0, {"x": 1.0}, "estimated", tags={"room": "x"})
    finally:
        log.close(0)
    with pytest.raises(InputError, match="PEMS_INFLUX"):
        InfluxLog("influx://user:secret@127.0.0.1:8086/db", None, tmp_path / "other")


def test_one_writer_per_spool_directory(tmp_path):
    a = InfluxLog(dead_url(), None, tmp_path, start=False)
    with pytest.raises(InputError, match="in use"):
        InfluxLog(dead_url(), None, tmp_path, start=False)
    a.close(0)
    InfluxLog(dead_url(), None, tmp_path, start=False).close(0)  # free again


# ---------------------------------------------------------------------------------------------
# the spool, against the stand-in server
# ---------------------------------------------------------------------------------------------
def test_outage_keeps_everything_in_order_and_reports_why(tmp_path, fake, caplog):
    caplog.set_level(logging.INFO, logger="pems.live.influx_log")
    log = InfluxLog(fake.url, None, tmp_path, **FAST)
    try:
        numbered(log, 0, 50)
        assert log.flush(5) and log.status().connected
        fake.status, fake.body = 503, '{"error":"engine: shutting down"}'
        numbered(log, 50, 100)
        assert wait_for(lambda: not log.status().connected)
        st = log.status()
        assert "503" in st.last_error and "shutting down" in st.last_error
        assert st.pending_lines == 100 and st.pending_bytes > 0 and st.down_since is not None
        assert st.oldest_pending == T0 + 50 * S15  # the point's own time
        assert "503" in caplog.text and "keeping" in caplog.text  # the log says why
        assert not log.flush(0.3)  # nothing can be delivered yet
        fake.status = None
        assert log.flush(5)
        st = log.status()
        assert st.connected and st.pending_lines == 0 and st.oldest_pending is None and st.sent_lines == 150
        assert "reachable again" in caplog.text
        assert seqs(fake.lines("pems")) == list(range(150))  # in order, none twice
    finally:
        log.close(1)
    assert len(list(tmp_path.glob("*.seg"))) == 1  # sent segments deleted; one fresh active one


def test_restart_resumes_from_the_cursor_without_resending(tmp_path, fake):
    log = InfluxLog(fake.url, None, tmp_path, **FAST)
    numbered(log, 0, 100)
    assert log.flush(5)
    fake.status = 500
    numbered(log, 100, 60)
    assert not log.close(0.2)  # the writer stops with 60 lines on disk
    log = InfluxLog(fake.url, None, tmp_path, **FAST)
    try:
        # the server still refuses: the new sender cannot have sent the spool before we look
        assert log.status().pending_lines == 60
        fake.status = None
        numbered(log, 160, 40)
        assert log.flush(5)
        assert log.status().sent_lines == 100  # the 60 from the spool and 40 new, nothing resent
        assert seqs(fake.lines()) == list(range(200))
    finally:
        log.close(1)


def test_a_partial_last_line_and_a_corrupt_record_are_discarded_with_a_warning(tmp_path, fake, caplog):
    log = InfluxLog(dead_url(), None, tmp_path, start=False)
    numbered(log, 0, 30)
    log.close(0)
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    lines = bytes(data).split(b"\n")
    k = sum(len(x) + 1 for x in lines[:10])  # record 10: flip a digit of its value
    i = data.index(b"seq=10.0", k)
    data[i + 4] = ord("7")
    data += lines[0][:25]  # a crash in the middle of writing a record
    seg.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="pems.live.influx_log")
    log = InfluxLog(fake.url, None, tmp_path, **FAST)
    try:
        assert "partially written last line" in caplog.text
        try:  # cut off: nothing is ever appended after it
            assert seg.read_bytes().endswith(b"\n")
        except FileNotFoundError:
            pass  # the sender already delivered the segment and removed it (checked below)
        assert log.flush(5)
        assert "corrupt record" in caplog.text
        assert seqs(fake.lines()) == [i for i in range(30) if i != 10]  # no "seq=70" either
        assert log.status().rejected_lines == 2
        rejected = (tmp_path / "rejected.lp").read_text()
        assert "partially written" in rejected and "CRC" in rejected and "seq=70.0" in rejected
    finally:
        log.close(1)


@pytest.mark.parametrize("partial", [True, False], ids=["partial-write", "whole-request-refused"])
def test_a_refused_line_is_isolated_and_does_not_block_the_rest(tmp_path, fake, caplog, partial):
    fake.refuse, fake.partial = "seq=13.0", partial
    log = InfluxLog(fake.url, None, tmp_path, **FAST)
    try:
        numbered(log, 0, 40)
        assert log.flush(5)
        st = log.status()
        assert st.rejected_lines == 1 and st.pending_lines == 0 and st.sent_lines == 39
        expected = [i for i in range(40) if i != 13]
        if partial:  # InfluxDB kept the good lines of the refused request; bisecting sends them again
            assert sorted(set(seqs(fake.lines()))) == expected
        else:  # every good line once, in order
            assert seqs(fake.lines()) == expected
        assert "seq=13.0" in (tmp_path / "rejected.lp").read_text()
        assert "field type conflict" in caplog.text
    finally:
        log.close(1)


def test_credentials_never_appear_in_errors_or_logs(tmp_path, fake, monkeypatch, caplog):
    monkeypatch.setenv("PEMS_INFLUX_USERNAME", "pems")
    monkeypatch.setenv("PEMS_INFLUX_PASSWORD", "s3cr3t-pa55")
    monkeypatch.setenv("PEMS_INFLUX_TOKEN", "tok-XYZ-123")
    fake.status = 401
    fake.body = '{"error":"authorization failed for {auth} (password s3cr3t-pa55, token tok-XYZ-123)"}'
    caplog.set_level(logging.DEBUG, logger="pems.live.influx_log")
    log = InfluxLog(fake.url, None, tmp_path, **FAST)
    try:
        numbered(log, 0, 5)
        assert wait_for(lambda: log.status().last_error is not None)
        err = log.status().last_error
        assert "401" in err and "authorization failed" in err
        basic = base64.b64encode(b"pems:s3cr3t-pa55").decode()
        for secret in ("s3cr3t-pa55", "tok-XYZ-123", basic):
            assert secret not in err and secret not in caplog.text
        assert log.status().pending_lines == 5  # an auth failure keeps the lines for later
    finally:
        log.close(0.2)


def test_a_full_spool_drops_the_oldest_and_logs_the_gap(tmp_path, fake, caplog):
    caplog.set_level(logging.WARNING, logger="pems.live.influx_log")
    log = InfluxLog(dead_url(), None, tmp_path, max_bytes=8192, **FAST)
    numbered(log, 0, 400)  # ~30 kB of records
    st = log.status()
    assert st.dropped_lines > 0 and st.spool_bytes <= 8192 + 2048
    assert "spool full" in caplog.text and "oldest" in caplog.text
    log.close(0)
    log = InfluxLog(fake.url, None, tmp_path, **FAST)
    try:
        assert log.flush(5)
        got = seqs(fake.lines())
        assert got[-1] == 399 and got == list(range(got[0], 400))  # the newest kept, no hole inside
        assert got[0] > 0 and 400 - len(got) <= st.dropped_lines  # what is missing was reported dropped
        events = [x for x in fake.lines() if "spool full" in x]
        assert events and "kind=event" in events[0] and "dropped the" in events[0]
    finally:
        log.close(1)


def test_a_failed_segment_rotation_never_writes_into_a_stranger_file(tmp_path):
    """The next segment's name is taken by a folder (a real EISDIR from the file system): the rotation
    fails after closing the full segment. Later records must not land in whatever file reuses the old
    descriptor's number; they are counted lost until a segment can be opened, then spooled again."""
    log = InfluxLog(dead_url(), None, tmp_path, segment_bytes=4096, max_bytes=10**6, start=False)
    try:
        sp = log._spool
        blocker = sp.path(sp.segments[-1] + 1)
        blocker.mkdir()
        numbered(log, 0, 200)  # several kB: the rotation is due and fails
        assert sp.fd is None
        stranger = tmp_path / "stranger.txt"
        with open(stranger, "w") as f:  # takes the lowest free descriptor number: the old segment's
            numbered(log, 200, 10)
            f.flush()
            assert stranger.read_text() == ""
        lost = log.status().dropped_lines
        assert lost >= 10
        blocker.rmdir()
        numbered(log, 210, 10)
        kept = seqs([x for _, x in read_spool(tmp_path)])
        assert kept[-10:] == list(range(210, 220)) and len(kept) + lost == 220
    finally:
        log.close(0)


def test_a_cursor_past_every_segment_deletes_nothing(tmp_path, caplog):
    log = InfluxLog(dead_url(), None, tmp_path, start=False)
    numbered(log, 0, 50)
    log.close(0)
    (tmp_path / "cursor.json").write_text('{"segment": 999999, "offset": 0}')
    log = InfluxLog(dead_url(), None, tmp_path, start=False)
    try:
        assert log.status().pending_lines == 50
        assert "points past every segment" in caplog.text
    finally:
        log.close(0)


def test_a_clock_that_went_back_overwrites_nothing(tmp_path):
    """Measured points at a time already logged would overwrite it in InfluxDB: kept aside, not sent."""
    log = InfluxLog(dead_url(), None, tmp_path, start=False)
    try:
        assert log.write(T0, {"T_out": 1.0}, "measured") > 0
        assert log.write(T0 + S15, {"T_out": 2.0}, "measured") > 0
        assert log.write(T0, {"T_out": 9.0}, "measured") == 0  # the clock went back by 15 s
        assert log.write(T0, {"seq": 1.0}, "commanded") > 0  # each kind has its own timeline
        assert log.status().pending_lines == 3
        rejected = (tmp_path / "rejected.lp").read_text()
        assert "clock went back" in rejected and "9" in rejected
    finally:
        log.close(0)


def test_drop_newest_refuses_new_lines_instead(tmp_path):
    log = InfluxLog(dead_url(), None, tmp_path, max_bytes=8192, when_full="drop_newest", start=False)
    try:
        numbered(log, 0, 400)
        st = log.status()
        assert st.dropped_lines > 0 and st.spool_bytes <= 8192
        kept = seqs([x for _, x in read_spool(tmp_path)])
        assert kept == list(range(len(kept))) and len(kept) + st.dropped_lines == 400  # the oldest kept
    finally:
        log.close(0)


def test_a_killed_writer_loses_no_line_that_write_returned(tmp_path, fake):
    """SIGKILL mid-stream: every write that returned is on disk; the next writer sends it all."""
    script = textwrap.dedent(f"""
        import sys, pandas as pd
        from pems.live.influx_log import InfluxLog
        log = InfluxLog({dead_url()!r}, None, {str(tmp_path)!r}, segment_bytes=4096, batch_s=0.01,
                        retry_min_s=0.01, retry_max_s=0.05)
        t0 = pd.Timestamp("2024-01-15", tz="UTC")
        for i in range(10**7):
            log.write(t0 + pd.Timedelta(seconds=15 * i), {{"seq": float(i)}}, "commanded")
            print(i, flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    last = -1
    try:
        for line in child.stdout:
            last = int(line)
            if last >= 3000:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert last >= 3000
    log = InfluxLog(fake.url, None, tmp_path, **FAST)
    try:
        assert log.flush(10)
        got = seqs(fake.lines())
        assert got[:last + 1] == list(range(last + 1))  # all that returned, in order
        assert got == list(range(len(got)))  # and perhaps a few written after the last print
    finally:
        log.close(1)


# ---------------------------------------------------------------------------------------------
# real servers
# ---------------------------------------------------------------------------------------------
def influxql(base: str, db: str, q: str) -> list[list]:
    r = requests.post(f"{base}/query", data={"db": db, "q": q, "epoch": "ns"}, timeout=10)
    r.raise_for_status()
    res = r.json()["results"][0]
    assert "error" not in res, res
    return res["series"][0]["values"] if res.get("series") else []


@pytest.mark.service
def test_everything_lands_in_influxdb1_where_pems_history_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PEMS_CACHE", str(tmp_path / "cache"))
    idx = pd.date_range(T0, periods=16, freq="15min")
    rng = np.random.default_rng(1)
    meas = pd.DataFrame({"T_room__obyvak": rng.normal(21, 1, 16).round(2), "T_out": rng.normal(0, 3, 16).round(2),
                         "soc": rng.uniform(0.1, 0.9, 16).round(3), "relay__obyvak": (rng.random(16) < 0.5) * 1.0},
                        index=idx)
    with influxdb1_restartable(tmp_path) as server:
        url = server.url.replace("http://", "influx://") + "/pems_live"
        with InfluxLog(url, "loxone-growatt", tmp_path / "spool", **FAST) as log:
            for t, row in meas.iterrows():
                log.write(t, row.to_dict(), "measured")
                log.write(t, {"T_mass__obyvak": 22.0 + t.minute / 100, "T_room__obyvak": 21.0}, "estimated")
                log.write(t, {"P_heat_cmd__obyvak": 2400.0 * row["relay__obyvak"], "P_bat_cmd": -800.0}, "commanded")
            log.write(idx[3], {"message": "mode pems", "level": "info"}, "event")
            log.write(idx[3], {"message": "second event, same time", "level": "info"}, "event")
            assert log.flush(10)
            assert log.status().sent_lines == 16 * 6 + 2
        est = influxql(server.url, "pems_live", "SELECT \"T_mass\" FROM pems WHERE kind = 'estimated' AND "
                       "room = 'obyvak' AND time >= '2024-01-15T00:00:00Z' AND time < '2024-01-16T00:00:00Z'")
        assert [v[0] for v in est] == list(idx.as_unit("ns").asi8)
        assert [v[1] for v in est] == [22.0 + t.minute / 100 for t in idx]
        cmd = influxql(server.url, "pems_live", "SELECT \"P_bat_cmd\" FROM pems WHERE kind = 'commanded' AND "
                       "time >= '2024-01-15T00:00:00Z' AND time < '2024-01-16T00:00:00Z'")
        assert len(cmd) == 16 and all(v[1] == -800.0 for v in cmd)
        ev = influxql(server.url, "pems_live", "SELECT \"message\" FROM pems WHERE kind = 'event' AND "
                      "time >= '2024-01-15T00:00:00Z' AND time < '2024-01-16T00:00:00Z'")
        assert [v[1] for v in ev] == ["mode pems", "second event, same time"]
        # the measured columns read back through the mapping, as `pems history` does
        back = extract(url, load_mapping("loxone-growatt"), idx[0], idx[-1] + pd.Timedelta(minutes=15),
                       rooms=["obyvak"], use_cache=False)
        for c in meas:
            np.testing.assert_allclose(back[c].to_numpy(), meas[c].to_numpy(), rtol=0, atol=1e-12, err_msg=c)


@pytest.mark.service
def test_an_hour_of_influxdb_outage_and_a_writer_restart_lose_nothing(tmp_path, caplog):
    """InfluxDB down for an hour of data (240 points at 15 s), the writer restarted in the middle:
    every point arrives, none twice, no gap; the outage and the recovery are logged."""
    caplog.set_level(logging.INFO, logger="pems.live.influx_log")
    n_before, n_down, n_after = 40, 240, 20
    spool = tmp_path / "spool"
    with influxdb1_restartable(tmp_path) as server:
        url = server.url.replace("http://", "influx://")

        def write(log, i0, n):
            for i in range(i0, i0 + n):
                t = T0 + i * S15
                log.write(t, {"T_room__obyvak": 20 + i / 1000, "soc": 0.5}, "measured")
                log.write(t, {"seq": float(i)}, "commanded")

        log = InfluxLog(url, "loxone-growatt", spool, **FAST)
        write(log, 0, n_before)
        assert log.flush(10) and log.status().connected

        server.stop()
        t_stop = time.monotonic()
        write(log, n_before, n_down // 2)
        assert wait_for(lambda: not log.status().connected, 3)
        detected = time.monotonic() - t_stop
        st = log.status()
        assert "not reachable" in st.last_error and "InfluxDB log" in caplog.text
        assert st.pending_lines == 3 * (n_down // 2) and st.oldest_pending == T0 + n_before * S15
        assert not log.close(0.2)  # the writer process restarts in the middle of the outage

        log = InfluxLog(url, "loxone-growatt", spool, **FAST)
        assert log.status().pending_lines == 3 * (n_down // 2)
        write(log, n_before + n_down // 2, n_down - n_down // 2)
        assert log.status().pending_lines == 3 * n_down

        server.start()
        write(log, n_before + n_down, n_after)
        assert log.flush(10)
        st = log.status()
        assert st.connected and st.pending_lines == 0 and st.sent_lines == 3 * (n_down + n_after)
        assert "reachable again" in caplog.text
        log.close(1)

        n = n_before + n_down + n_after
        where = f"time >= '{T0:%Y-%m-%dT%H:%M:%SZ}' AND time < '{T0 + 2 * pd.Timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}'"
        rows = influxql(server.url, "loxone", f"SELECT \"temperature_obyvak\" FROM temperature WHERE {where}")
        assert [r[0] for r in rows] == [(T0 + i * S15).value for i in range(n)]  # every 15 s, no gap
        np.testing.assert_allclose([r[1] for r in rows], [20 + i / 1000 for i in range(n)])
        assert influxql(server.url, "loxone", f"SELECT count(\"temperature_obyvak\") FROM temperature WHERE {where}"
                        )[0][1] == n
        assert influxql(server.url, "solar", f"SELECT count(\"SOC\") FROM solar WHERE {where}")[0][1] == n
        cmd = influxql(server.url, "pems", f"SELECT \"seq\" FROM pems WHERE kind = 'commanded' AND {where}")
        assert [r[1] for r in cmd] == list(range(n))
    assert detected < 3  # within a fraction of any control step


@pytest.mark.service
def test_writes_through_the_v2_api_into_victoria_metrics(tmp_path):
    with victoria_metrics(tmp_path) as base:
        url = base.replace("http://", "influx2://") + "?org=home"
        with InfluxLog(url, "loxone-growatt", tmp_path / "spool", **FAST) as log:
            for i in range(8):
                t = T0 + i * pd.Timedelta(minutes=15)
                log.write(t, {"T_room__obyvak": 21 + i / 10}, "measured")
                log.write(t, {"T_mass__obyvak": 22 + i / 10}, "estimated")
            assert log.flush(10)
        requests.get(f"{base}/internal/force_flush", timeout=10)

        def export(match: str) -> dict[int, float]:
            r = requests.get(f"{base}/api/v1/export", params={"match[]": match}, timeout=10)
            rows = [json.loads(x) for x in r.text.splitlines() if x.strip()]
            assert rows, (match, r.text)
            return dict(zip(rows[0]["timestamps"], rows[0]["values"]))

        got = export('{__name__="temperature_temperature_obyvak"}')
        assert [got[(T0 + i * pd.Timedelta(minutes=15)).value // 10**6] for i in range(8)] == \
            pytest.approx([21 + i / 10 for i in range(8)])
        got = export('{__name__="pems_T_mass",kind="estimated",room="obyvak"}')
        assert sorted(got.values()) == pytest.approx([22 + i / 10 for i in range(8)])

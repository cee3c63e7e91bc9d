"""The live page: its data from the loop, the stream that updates it, and the page in headless
Chromium against the live loop on the emulated home (real mosquitto and Modbus TCP)."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parents[1] / "live"))

from pems.browser import Chromium, find_chromium  # noqa: E402
from pems.live.view import LiveView  # noqa: E402
from pems.twin.signals import Observation  # noqa: E402
from pems.web.live_app import Server, live_app  # noqa: E402

T0 = pd.Timestamp("2024-01-10T06:00Z")


def _obs(k: int) -> Observation:
    return Observation(time=T0 + pd.Timedelta(minutes=15 * k), T_room=np.array([21.0 + 0.1 * k, 20.0]), soc=0.5,
                       T_out=1.0, P_pv=100.0 * k, P_load=500.0, P_grid=900.0, P_bat=-100.0,
                       P_heat=np.array([1000.0, 0.0]))


def _plan(k: int) -> pd.DataFrame:
    idx = pd.date_range(T0 + pd.Timedelta(minutes=15 * k), periods=8, freq="15min")
    return pd.DataFrame({"P_heat__a": 800.0, "P_heat__b": 0.0, "T_room__a": 21.5, "T_room__b": 20.1,
                         "P_bat": 300.0, "soc": 0.55}, index=idx)


def test_the_page_gets_what_the_loop_recorded():
    view = LiveView(["a", "b"], 900.0)
    view.health = lambda: {"watchdog": "active", "rooms_bus": {"connected": True}}
    for k in range(3):
        view.on_step(_obs(k), {"state": "active", "solve_s": 0.05}, _plan(k), None)
    view.on_event({"kind": "fallback", "time": "2024-01-10T06:20:00+00:00", "reasons": ["x"], "reason": "sensor stale"})
    c = TestClient(live_app(view, "PEMS live · test"))
    page = c.get("/").text
    assert "/static/plotly.min.js" in page and "EventSource('/api/stream" in page and "PEMS live · test" in page
    js = c.get("/static/plotly.min.js")
    assert js.status_code == 200 and "Plotly" in js.text[:5000] and len(js.text) > 1e6
    s = c.get("/api/state").json()
    assert s["rooms"] == ["a", "b"] and len(s["steps"]) == 3 and s["version"] == 4
    assert s["steps"][-1]["T_room"] == [21.2, 20.0] and s["steps"][-1]["soc"] == 50.0
    assert s["ahead"]["P_heat__a"][0] == 800.0 and s["ahead"]["soc"][0] == 55.0
    assert s["events"][0]["kind"] == "fallback" and s["health"]["watchdog"] == "active"
    assert c.get("/api/state", params={"days": 0}).status_code == 422
    assert c.get("/api/state", params={"days": 0.001}).json()["steps"] == []  # less than a step: none
    assert len(c.get("/api/state", params={"days": 0.011}).json()["steps"]) == 1


def test_a_step_recorded_reaches_an_open_stream():
    view = LiveView(["a", "b"], 900.0)
    view.on_step(_obs(0), {"state": "active"}, None, None)
    c = TestClient(live_app(view))

    def later():
        time.sleep(0.3)
        view.on_step(_obs(1), {"state": "fallback"}, None, None)

    threading.Thread(target=later, daemon=True).start()
    with c.stream("GET", "/api/stream", params={"since": view.version}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                msg = json.loads(line[6:])
                break
    assert msg["steps"][-1]["state"] == "fallback" and msg["steps"][-1]["time"].startswith("2024-01-10T06:15")


@pytest.mark.service
@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (Debian: apt-get install chromium, "
                                                    "or tools/install_services.sh)")
def test_the_page_renders_and_keeps_updating_while_the_emulated_home_runs(prep, broker, tmp_path):
    from helpers import FAST
    from pems.live.emulated_run import EmulatedRun

    run = EmulatedRun(prep, broker.host, broker.port, speed=600.0, hours=2.0, events_path=tmp_path / "ev.jsonl",
                      mqtt_options=FAST)
    run.start()
    server = None
    try:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = Server(live_app(run.loop.view, "PEMS live · emulated"), "127.0.0.1", port).start()
        with Chromium() as b:
            page = b.open(server.url, width=1366)

            def shown() -> int:
                return int(page.evaluate("+document.getElementById('steps').textContent"))

            end = time.monotonic() + 30
            while shown() < 2 and time.monotonic() < end:
                time.sleep(0.2)
            first = shown()
            assert first >= 2
            # the plots have data: measured temperatures and the plan ahead
            n_meas = page.evaluate("document.getElementById('room_plot').data[2].x.length")
            n_plan = page.evaluate("document.getElementById('room_plot').data[3].x.length")
            assert n_meas >= 2 and n_plan > 0, (n_meas, n_plan)
            assert page.evaluate("document.getElementById('power_plot').data.find(d => d.name === 'PV')"
                                 ".y.filter(v => v !== null).length") >= 2
            # why the plan does what it does, and the savings against the rule-based twin so far
            assert page.evaluate("document.getElementById('why_plan').textContent").startswith("The plan heats")
            assert page.evaluate("document.querySelectorAll('#savings tr').length") == 4
            assert "rule-based home (twin)" in page.evaluate("document.getElementById('why_saved').textContent")
            assert page.evaluate("document.getElementById('state').textContent") == "active"
            assert page.evaluate("document.getElementById('live').textContent") == "live"
            # it keeps updating while the emulated clock runs, without a reload
            end = time.monotonic() + 30
            while shown() <= first + 1 and time.monotonic() < end:
                time.sleep(0.2)
            assert shown() > first + 1
            assert page.evaluate("document.querySelectorAll('#rooms tr').length") == 1 + len(prep.model.rooms)
            assert page.layout_problems() == []
    finally:
        if server is not None:
            server.stop()
        run.finish()


def test_the_page_gets_the_cars():
    """With cars: each step's plug, reported SOC (None while the car says nothing) and charging."""
    view = LiveView(["a", "b"], 900.0, cars=["tesla"])
    for k in range(2):
        obs = replace(_obs(k), ev_soc=np.array([0.5 if k else np.nan]), ev_plugged=np.array([bool(k)]),
                      P_ev=np.array([3700.0 * k]))
        view.on_step(obs, {"state": "active"}, None, None)
    s = TestClient(live_app(view)).get("/api/state").json()
    assert s["cars"] == ["tesla"]
    assert [st["ev_soc"] for st in s["steps"]] == [[None], [50.0]]
    assert [st["ev_plugged"] for st in s["steps"]] == [[False], [True]] and s["steps"][1]["P_ev"] == [3700.0]


@pytest.mark.service
@pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (Debian: apt-get install chromium, "
                                                    "or tools/install_services.sh)")
def test_the_page_draws_the_cars_in_a_browser():
    import socket

    view = LiveView(["a", "b"], 900.0, cars=["tesla"])
    for k in range(4):
        view.on_step(replace(_obs(k), ev_soc=np.array([0.4 + 0.05 * k]), ev_plugged=np.array([True]),
                             P_ev=np.array([7000.0])), {"state": "active"}, _plan(k), None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Server(live_app(view, "PEMS live · car"), "127.0.0.1", port).start()
    try:
        with Chromium() as b:
            page = b.open(server.url, width=1366)
            end = time.monotonic() + 20
            while page.evaluate("document.querySelectorAll('#cars tr').length") < 2 and time.monotonic() < end:
                time.sleep(0.2)
            assert page.evaluate("document.querySelector('#cars tr:nth-child(2)').textContent") == "teslaplugged in557000"
            soc = page.evaluate("document.getElementById('battery_plot').data.find(d => d.name.startsWith('tesla')).y")
            assert soc == [40, 45, 50, 55]
            assert page.evaluate("document.getElementById('power_plot').data.find(d => d.name === 'tesla charging')"
                                 ".y.length") == 4
            assert page.layout_problems() == []
    finally:
        server.stop()

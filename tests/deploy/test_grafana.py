"""The Grafana dashboard (deploy/grafana-dashboard.json): the committed file is what
tools/grafana_dashboard.py writes, and every panel's query finds data in a real influxd that the
live loop filled while running the emulated reference home."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests" / "live"))

import grafana_dashboard  # noqa: E402


def test_the_committed_dashboard_is_the_generated_one():
    committed = (ROOT / "deploy" / "grafana-dashboard.json").read_text(encoding="utf-8")
    assert committed == grafana_dashboard.text(), "run: python tools/grafana_dashboard.py"
    d = json.loads(committed)
    assert d["__inputs"][0]["pluginId"] == "influxdb" and d["templating"]["list"][0]["name"] == "room"
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"])


def _influxql(base: str, db: str, q: str) -> list[dict]:
    r = requests.post(f"{base}/query", data={"db": db, "q": q, "epoch": "ns"}, timeout=10)
    r.raise_for_status()
    res = r.json()["results"][0]
    assert "error" not in res, (q, res)
    return res.get("series", [])


@pytest.mark.service
@pytest.mark.slow
def test_every_panel_finds_the_loops_data_in_influxdb(tmp_path):
    from helpers import FAST
    from services import influxdb1, mosquitto

    from pems.live.emulated_run import EmulatedRun
    from pems.live.influx_log import InfluxLog
    from pems.scenarios.runner import prepare
    from pems.scenarios.spec import load_scenario

    prep = prepare(load_scenario("winter-week"))
    with influxdb1(tmp_path) as base, mosquitto(tmp_path) as broker:
        url = base.replace("http://", "influx://") + "/pems"
        log = InfluxLog(url, "loxone-growatt", tmp_path / "spool", house=prep.model.house, batch_s=0.2)
        run = EmulatedRun(prep, broker.host, broker.port, speed=1200.0, hours=3.0, events_path=tmp_path / "ev.jsonl",
                          mqtt_options=FAST, influx=log)
        run.start()
        run.finish()
        assert log.flush(20)
        log.close(2)
        start, end = prep.scenario.start, prep.scenario.start + pd.Timedelta(hours=3)
        # a fallback and a recovery, as the watchdog would write them
        log2 = InfluxLog(url, "loxone-growatt", tmp_path / "spool2", batch_s=0.2)
        log2.write(start + pd.Timedelta(minutes=50), {"state": "fallback", "reason": "stale: T_room__obyvak"}, "event")
        assert log2.flush(20)
        log2.close(2)
        board = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text(encoding="utf-8"))
        rooms = [s["values"] for s in _influxql(base, "pems", board["templating"]["list"][0]["query"])]
        assert {"obyvak", "loznice"} <= {v[1] for v in rooms[0]}
        when = f"time >= '{start:%Y-%m-%dT%H:%M:%SZ}' AND time < '{end:%Y-%m-%dT%H:%M:%SZ}'"
        empty = []
        for panel in board["panels"]:
            for target in panel["targets"]:
                q = (target["query"].replace("$timeFilter", when).replace("$__interval", "15m")
                     .replace("$room", "obyvak"))
                assert not re.search(r"\$[A-Za-z_]", q), q  # every variable substituted
                series = _influxql(base, "pems", q)
                values = [v for s in series for row in s["values"] for v in row[1:] if v is not None]
                if not values:
                    empty.append(f"{panel['title']} / {target['refId']}: {q}")
        assert not empty, "\n".join(empty)

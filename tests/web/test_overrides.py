"""Overrides from the live page: boost a room, change its band, set a battery reserve, pause the
optimiser — with an expiry,
an event each, on the page, across a restart, and only with the page's password."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pems.live.event_log import EventLog
from pems.live.overrides import BOOST_K, OverrideError, Overrides
from pems.live.view import LiveView
from pems.twin.signals import Action, Forecast
from pems.web.live_app import live_app

T0 = pd.Timestamp("2024-01-10T06:00Z")


def _forecast(t: pd.Timestamp, n: int = 16) -> Forecast:
    idx = pd.date_range(t, periods=n, freq="15min")
    return Forecast(idx, np.zeros((n, 1)), ("T_out",), np.full(n, 0.2), np.full(n, 0.05),
                    np.full((n, 2), 20.0), np.full((n, 2), 24.0), ("a", "b"))


def test_a_boost_raises_the_band_until_it_ends_and_says_so(tmp_path):
    ev = EventLog(tmp_path / "events.jsonl")
    ov = Overrides(["a", "b"], tmp_path / "overrides.json", ev)
    o = ov.add(T0, "boost", 1.0, room="b", by="anna")
    fc = ov.apply(_forecast(T0), T0)
    assert (fc.low[:4, 1] == 22.0).all() and (fc.low[4:, 1] == 20.0).all()  # max(20 + 2, 22) for one hour
    assert (fc.low[:, 0] == 20.0).all() and (fc.high[:4, 1] >= 23.0).all()
    assert BOOST_K == 2.0
    # a restart finds it (the loop after it has only the new one)
    ov = Overrides(["a", "b"], tmp_path / "overrides.json", ev)
    assert [x["id"] for x in ov.as_list()] == [o.id]
    # it ends at its time, with an event
    assert ov.apply(_forecast(T0 + pd.Timedelta(hours=1)), T0 + pd.Timedelta(hours=1)).low[0, 1] == 20.0
    assert ov.active(T0 + pd.Timedelta(hours=1)) == []
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert kinds == ["override", "override_end"]
    assert json.loads((tmp_path / "overrides.json").read_text()) == []


def test_a_band_and_a_pause_and_what_is_refused(tmp_path):
    ov = Overrides(["a", "b"], tmp_path / "o.json")
    ov.add(T0, "band", 2.0, room="a", low=18.0, high=19.0)
    fc = ov.apply(_forecast(T0), T0)
    assert (fc.low[:8, 0] == 18.0).all() and (fc.high[:8, 0] == 19.0).all()
    assert ov.paused(T0) is None
    p = ov.add(T0, "pause", 0.5, by="anna")
    assert ov.paused(T0 + pd.Timedelta(minutes=10)) == p and ov.paused(T0 + pd.Timedelta(minutes=30)) is None
    for kw, what in (({"kind": "boost", "hours": 1, "room": "c"}, "room 'c'"),
                     ({"kind": "band", "hours": 1, "room": "a", "low": 25.0, "high": 20.0}, "low < high"),
                     ({"kind": "boost", "hours": 0, "room": "a"}, "hours 0"),
                     ({"kind": "boost", "hours": 1000, "room": "a"}, "at most"),
                     ({"kind": "heat", "hours": 1}, "kind 'heat'")):
        with pytest.raises(OverrideError, match=what):
            ov.add(T0, **kw)


def test_a_reserve_floors_the_plan_and_stops_the_discharge_at_it(tmp_path):
    ov = Overrides(["a", "b"], tmp_path / "o.json")
    assert "soc_floor" not in ov.apply(_forecast(T0), T0).extras and ov.reserve(T0) is None
    ov.add(T0, "reserve", 3.0, soc=40)
    assert ov.apply(_forecast(T0), T0).extras["soc_floor"] == pytest.approx(0.4)
    assert ov.reserve(T0) == pytest.approx(0.4)
    out = Action(heat_w=np.zeros(2), bat_w=-2500.0)
    assert ov.limit(out, 0.41, T0).bat_w == -2500.0  # above it: the controller's command
    assert ov.limit(out, 0.40, T0).bat_w == 0.0 and ov.limit(out, 0.2, T0).bat_w == 0.0
    assert ov.limit(Action(bat_w=1500.0), 0.2, T0).bat_w == 1500.0  # charging is never stopped
    assert ov.limit(Action(), 0.2, T0).bat_w is None  # the inverter's own logic: not PEMS's to change
    later = T0 + pd.Timedelta(hours=3)
    assert ov.limit(out, 0.2, later).bat_w == -2500.0 and "soc_floor" not in ov.apply(_forecast(later), later).extras
    for soc in (None, 0, 120):
        with pytest.raises(OverrideError, match="state of charge"):
            ov.add(T0, "reserve", 1.0, soc=soc)


def _client(tmp_path, credentials=("anna", "s3cret")):
    view = LiveView(["a", "b"], 900.0)
    ov = Overrides(["a", "b"], tmp_path / "o.json", EventLog(tmp_path / "ev.jsonl"))
    view.overrides = ov.as_list
    return TestClient(live_app(view, overrides=ov, credentials=credentials, now=lambda: T0)), ov


def test_the_page_takes_overrides_only_with_its_password(tmp_path):
    c, ov = _client(tmp_path)
    body = {"kind": "boost", "hours": 2, "room": "b"}
    assert c.post("/api/overrides", json=body).status_code == 401  # no password
    r = c.post("/api/overrides", json=body, auth=("anna", "wrong"))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert c.post("/api/overrides", json=body, auth=("bob", "s3cret")).status_code == 401
    assert ov.as_list() == []
    r = c.post("/api/overrides", json=body, auth=("anna", "s3cret"))
    assert r.status_code == 201 and r.json()["by"] == "anna" and r.json()["until"].startswith("2024-01-10T08:00")
    assert c.get("/api/state").json()["overrides"][0]["room"] == "b"  # on the page
    assert c.post("/api/overrides", json={**body, "room": "x"}, auth=("anna", "s3cret")).status_code == 422
    oid = r.json()["id"]
    assert c.delete(f"/api/overrides/{oid}").status_code == 401
    assert c.delete(f"/api/overrides/{oid}", auth=("anna", "s3cret")).status_code == 200
    assert ov.as_list() == []
    events = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [(e["kind"], e.get("why")) for e in events] == [("override", None), ("override_end", "cancelled by anna")]


def test_without_credentials_there_are_no_overrides(tmp_path):
    c, ov = _client(tmp_path, credentials=None)
    r = c.post("/api/overrides", json={"kind": "pause", "hours": 1}, auth=("anna", "anything"))
    assert r.status_code == 403 and "PEMS_WEB_PASSWORD" in r.json()["detail"]


@pytest.mark.service
@pytest.mark.slow
def test_a_boost_from_the_page_changes_what_the_loop_commands(prep, broker, tmp_path):
    """The emulated home twice over the same two hours: with a boost of room b taken on the page
    after the start, the loop heats b more than without, and its log has the override."""
    from helpers import FAST
    from pems.live.emulated_run import EmulatedRun

    def heat_b(boost: bool, folder):
        folder.mkdir()
        run = EmulatedRun(prep, broker.host, broker.port, speed=600.0, hours=2.0, events_path=folder / "ev.jsonl",
                          state_dir=folder / "state", mqtt_options=FAST)
        run.start()
        try:
            if boost:
                c = TestClient(live_app(run.loop.view, overrides=run.loop.overrides, credentials=("anna", "pw"),
                                        now=run.loop.clock.now))
                assert c.post("/api/overrides", json={"kind": "boost", "hours": 3, "room": "b"},
                              auth=("anna", "pw")).status_code == 201
        finally:
            run.finish()
        evs = [json.loads(x) for x in (folder / "ev.jsonl").read_text().splitlines()]
        steps = [e for e in evs if e["kind"] == "step" and e.get("heat_w") is not None]
        i = list(prep.model.rooms).index("b")
        return sum(e["heat_w"][i] for e in steps[2:]), evs

    boosted, evs = heat_b(True, tmp_path / "boost")
    base, _ = heat_b(False, tmp_path / "base")
    assert any(e["kind"] == "override" and e["room"] == "b" and e["by"] == "anna" for e in evs)
    assert boosted > base + 1000.0, (boosted, base)  # W summed over the steps after it took effect
    assert json.loads((tmp_path / "boost" / "state" / "overrides.json").read_text())[0]["room"] == "b"

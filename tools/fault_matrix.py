"""The fault matrix: every fault a real home throws at the live loop, injected through real services.

Each row is one run of the live loop against the emulated home (what ``pems live --emulate`` runs:
:class:`~pems.live.emulated_run.EmulatedRun`) over real sockets: mosquitto, the emulator's Modbus TCP
server and influxd, all on loopback, at 1000× on the two-room battery house of the tests (a January
day, Greensboro TMY3 weather, BDEW H25 load, two-rate tariff). A fault starts after an hour of the
home's time; every run logs to its own InfluxDB database. Measured per row:

- **survived**: the loop ran every step to the end, with one step record each, and (unless the fault
  lasts to the end by design) is back in control at the end;
- **hand-back**: from the fault to the home's own logic in force: the loop's hand-back sent, or the
  emulated home taking its rooms back by itself (status, heartbeat), in seconds and control steps;
- **relay beyond commanded**: relay-on time under PEMS's mode beyond the on-time the loop commanded
  for that step, summed over rooms [s];
- **points missing**: control steps of the run without their ``measured`` point in InfluxDB;
- **writes in dry run**: MQTT commands, Modbus writes and InfluxDB points a dry run caused (0).

Run: ``python tools/fault_matrix.py [--out out/fault-matrix] [--only NAME,...]``. Needs mosquitto
and influxd (``make services`` installs them). Writes ``fault_matrix.md`` and ``fault_matrix.json``.
About five minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SPEED = 1000.0
FAST = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "connect_timeout_s": 5.0, "keepalive_s": 5}
STEP_S = 900.0


@dataclass
class Row:
    fault: str
    survived: bool
    handback_s: float | None  # None: no hand-back was due (or none happened)
    handback_due: bool
    relay_beyond_s: float
    points_missing: int | None
    dry_run_writes: int | None
    note: str = ""
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def handback_steps(self) -> float | None:
        return None if self.handback_s is None else self.handback_s / STEP_S

    @property
    def ok(self) -> bool:
        hb = (self.handback_s is None) if not self.handback_due else (
            self.handback_s is not None and self.handback_s <= STEP_S)
        return self.survived and hb and not self.points_missing \
            and not self.dry_run_writes and all(self.checks.values())


@dataclass
class Fault:
    name: str
    inject: Callable[..., None] | None  # (run, ctx) → None; ctx["t"] gets the fault's time
    handback_due: bool = True
    clears: bool = True  # the fault ends before the run does
    hours: float = 3.0
    run_kw: dict = field(default_factory=dict)
    setup: Callable[..., None] | None = None  # (run, ctx): before start (wrap the controller, ...)
    note: str = ""
    detect_after_s: float = 0.0  # a rule that needs this long to see the fault by design (stuck_s)
    relay_allow_s: float | None = None  # relay-on time beyond commanded allowed [s] (None: a tick a room)


def at(prep, hours: float) -> pd.Timestamp:
    return prep.scenario.start + pd.Timedelta(hours=hours)


# ---------------------------------------------------------------------------------------------
# the faults
# ---------------------------------------------------------------------------------------------
def _wait(run, prep, h: float) -> None:
    if not run.emu.wait_until(at(prep, h), timeout=120):
        raise RuntimeError(f"the emulation did not reach {h} h")


def faults(prep, broker) -> list[Fault]:
    def mark(ctx, run):
        ctx["t"] = run.clock.now()

    def nan(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run); run.emu.nan("a")
        _wait(run, prep, 1.5); run.emu.clear_faults()

    def stuck(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run); run.emu.stuck("b")
        _wait(run, prep, 2.0); run.emu.clear_faults()

    def jump(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run); run.emu.stuck("b", 30.0)
        _wait(run, prep, 1.5); run.emu.clear_faults()

    def broker_restart(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run); broker.stop()
        time.sleep(0.4); broker.start()

    def broker_lost(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run); broker.stop(kill=True)
        _wait(run, prep, 2.0); broker.start()

    def modbus(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run); run.emu.growatt.stop()
        _wait(run, prep, 1.5); run.emu.growatt.start()

    def modbus_gone(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run); run.emu.growatt.stop()

    def clock_jump(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run); ctx["calendar_offset_s"] = 7200.0; run.loop.clock.jump(7200.0)

    def gateway(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run); _publish(broker, "loxberry/mqttgateway/status", "Disconnected")
        _wait(run, prep, 1.5); _publish(broker, "loxberry/mqttgateway/status", "Connected")

    def hostile(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run)
        _publish(broker, "loxone/room/a/temperature", '{"value": 1' + "0" * 400 + "}", retain=False)

    def t_out_500(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run)
        for _ in range(3):
            _publish(broker, "loxone/outdoor/temperature", "500", retain=False)
            _wait(run, prep, 1.0 + 0.25 * (_ + 1))

    def app_change(run, ctx):
        _wait(run, prep, 1.0); mark(ctx, run)
        run.emu.growatt.set_holding(priority=0.0, bat_first_slot1_enable=0.0)

    def hung_solve_setup(run, ctx):
        run.controller = _Scripted(run.controller, at(prep, 1.0), hang_s=1500.0 / SPEED)
        ctx["t"] = at(prep, 1.0)

    def hung_thread_setup(run, ctx):
        ctx["t"] = at(prep, 1.0) + pd.Timedelta(seconds=30)

    def hung_thread(run, ctx):
        loop, read = run.loop, run.loop.home.read

        def hanging():
            if "hung" not in ctx and loop.clock.now() > ctx["t"]:
                ctx["hung"] = True
                time.sleep(600.0 / SPEED)
            return read()

        loop.home.read = hanging

    return [
        Fault("sensor NaN (30 min)", nan),
        Fault("sensor stuck (1 h, stuck_s 30 min)", stuck, detect_after_s=1800.0,
              run_kw={"limits": _limits(stuck_s=1800.0)}, note="latency counted from stuck_s"),
        Fault("sensor jumps to 30 °C (30 min)", jump),
        Fault("broker restart", broker_restart),
        Fault("broker killed for an hour", broker_lost, relay_allow_s=2 * 300.0 + 60.0,
              note="nothing reaches the home: its heartbeat timeout (300 s) ends the pulses"),
        Fault("Modbus server down (30 min)", modbus),
        Fault("inverter gone for good", modbus_gone, clears=False, hours=2.0),
        Fault("clock jumps 2 h forward", clock_jump),
        Fault("gateway offline (30 min)", gateway),
        Fault("InfluxDB down for an hour", None, handback_due=False, hours=4.0),
        Fault("disk full under the event log", None, handback_due=False, hours=2.0,
              run_kw={"events_path": "/dev/full"}),
        Fault("a hung solve (25 min)", None, setup=hung_solve_setup, run_kw={"real_time_solve": False},
              relay_allow_s=2 * 2 * 60.0, note="full-step pulses end two ticks after their step"),
        Fault("the loop's thread hangs (10 min)", hung_thread, handback_due=False, setup=hung_thread_setup,
              run_kw={"deadline_s": 800.0}, note="deadline 800 s: the guard ends the pulses"),
        Fault("a number beyond a float", hostile),
        Fault("T_out = 500 °C", t_out_500, handback_due=False, note="not used: the forecast's value instead"),
        Fault("setting changed in the Growatt app", app_change, handback_due=False),
        Fault("inverter clock an hour behind (no summer time)", None, handback_due=False,
              run_kw={"emulator_options": {"inverter_clock_offset_s": -3600.0}},
              note="slots written in the inverter's time; said once"),
        Fault("kill -9 of the loop", None, hours=2.0, note="no hand-back from the loop: last will, heartbeat, slots"),
        Fault("dry run", None, handback_due=False, hours=1.0, run_kw={"dry_run": True}),
    ]


def _limits(**kw):
    from pems.live.safety import SafetyLimits

    return SafetyLimits(republish_s=900.0, **kw)


def _publish(broker, topic: str, payload: str, retain: bool = True) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fault-{time.monotonic_ns()}")
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


class _Scripted:
    """The run's MPC, whose solve at one step hangs."""

    def __init__(self, inner, at: pd.Timestamp, hang_s: float):
        self.inner, self.at, self.hang_s = inner, at, hang_s

    def reset(self):
        self.inner.reset()

    def act(self, obs, fc):
        a = self.inner.act(obs, fc)
        if obs.time == self.at:
            time.sleep(self.hang_s)
        return a


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------
def run_fault(f: Fault, prep, broker, folder: Path, influx_base: str | None) -> Row:
    from pems.live.influx_log import InfluxLog
    from pems.live.emulated_run import EmulatedRun

    import shutil

    shutil.rmtree(folder, ignore_errors=True)  # a run's log is its own (the event log appends)
    folder.mkdir(parents=True, exist_ok=True)
    db = "fm_" + "".join(c if c.isalnum() else "_" for c in f.name.lower())[:40]
    influx = None
    kw = dict(f.run_kw)
    if influx_base is not None and not kw.get("dry_run"):
        influx = InfluxLog(influx_base.replace("http://", "influx://") + f"/{db}", None, folder / "spool",
                           batch_s=0.05, ping_s=0.2, retry_min_s=0.05, retry_max_s=0.3, timeout_s=1.0)
    kw.setdefault("events_path", folder / "events.jsonl")
    if kw.get("jump_clock") is None and "clock jumps" in f.name:
        kw["jump_clock"] = True
    seen: list[str] = []
    spy = _spy(broker, seen) if kw.get("dry_run") else None
    r = EmulatedRun(prep, broker.host, broker.port, speed=SPEED, hours=f.hours, mqtt_options=FAST,
                    influx=influx, **kw)
    ctx: dict = {}
    if f.setup is not None:
        f.setup(r, ctx)
    influx_stop = None
    if f.name.startswith("InfluxDB down"):
        influx_stop = _influx_outage(r, prep, ctx)
    killed = f.name.startswith("kill -9")
    if killed:
        r.n_steps = 4
    r.start()
    th = None
    if f.inject is not None:
        th = threading.Thread(target=_guarded(f.inject, r, ctx), daemon=True)
        th.start()
    if influx_stop is not None:
        influx_stop.start()
    error = ""
    try:
        if killed:
            r.wait()
            ctx["t"] = r.clock.now()
            r.loop.close(handback=False)  # what kill -9 leaves
            r.loop = None
            r.emu.wait(120)
            r.emu.stop()
            res = None
        else:
            res = r.finish()
    except Exception as exc:  # noqa: BLE001 - a row that failed is a finding, not a crash of the tool
        error = f"{type(exc).__name__}: {exc}"
        res = None
    if th is not None:
        th.join(60)
    if influx_stop is not None:
        influx_stop.join(60)
    if spy is not None:
        spy.loop_stop()
        spy.disconnect()
    if influx is not None:
        influx.flush(10.0)
        influx.close(5.0)
    loop_events = _loop_events(r, kw["events_path"])
    return _measure(f, prep, r, res, loop_events, ctx, error, influx_base, db, seen)


def _guarded(fn, r, ctx):
    def body():
        try:
            fn(r, ctx)
        except Exception as exc:  # noqa: BLE001
            ctx["inject_error"] = f"{type(exc).__name__}: {exc}"
    return body


def _influx_outage(r, prep, ctx):
    srv = ctx.get("influx_server")

    def body():
        _wait(r, prep, 1.0)
        ctx["t"] = r.clock.now()
        srv.stop()
        _wait(r, prep, 2.0)
        srv.start()

    return threading.Thread(target=body, daemon=True)


def _spy(broker, seen: list[str]):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fault-matrix-spy")
    c.on_connect = lambda cl, u, fl, rc, p: cl.subscribe("#", qos=1)
    c.on_message = lambda cl, u, msg: seen.append(msg.topic)
    c.connect(broker.host, broker.port)
    c.loop_start()
    time.sleep(0.2)
    return c


def _loop_events(r, path) -> list[dict]:
    p = Path(path)
    if str(p) != "/dev/full" and p.exists():
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    loop = r.loop
    if loop is None:
        return []
    from pems.live.event_log import jsonable

    return [jsonable(e) for e in loop.events.records]  # as the file would have them


def _measure(f, prep, r, res, evs, ctx, error, influx_base, db, seen) -> Row:
    n_steps = int(round(f.hours * 4)) if not f.name.startswith("kill -9") else 4
    steps = [e for e in evs if e["kind"] == "step"]
    t_fault = ctx.get("t")
    checks: dict[str, bool] = {}
    survived = not error and not ctx.get("inject_error") and [e["step"] for e in steps] == list(range(n_steps))
    if survived and f.clears and f.handback_due and not f.name.startswith("kill -9") and steps:
        survived = steps[-1]["state"] == "active"
    # hand-back: the rooms (the loop's "home" mode sent, or the home taking them back itself) and the
    # inverter (its release sent, or its slot lapsing); the later of the two. The hand-back at the
    # end of the run (close) does not count.
    handback_s = None
    if t_fault is not None:
        t0 = pd.Timestamp(t_fault) + pd.Timedelta(seconds=f.detect_after_s)
        stop = [pd.Timestamp(e["time"]) for e in evs if e["kind"] == "stop"]
        end = stop[-1] - pd.Timedelta(seconds=120) if stop else t0 + pd.Timedelta(hours=1)
        if f.name.startswith("kill -9"):  # its "stop" is the crash itself: what follows is the home's doing
            end = t0 + pd.Timedelta(hours=1)
        if ctx.get("calendar_offset_s"):  # the loop's calendar jumped: its events are that far ahead
            off = pd.Timedelta(seconds=ctx["calendar_offset_s"])
            evs = [{**e, "time": str(pd.Timestamp(e["time"]) - off)} if pd.Timestamp(e["time"]) >= t0 + off else e
                   for e in evs]
            end -= off
        sent = [e for e in evs if e["kind"] == "command" and e.get("fallback") and e.get("sent")
                and t0 <= pd.Timestamp(e["time"]) < end]
        emu = r.emu.events()
        rooms = [pd.Timestamp(e["time"]) for e in sent if e["device"] == "loxone"]
        rooms += [e["time"] for e in emu if e.get("device") == "emulator" and e.get("kind") == "fallback"
                  and e.get("active") and t0 <= e["time"] < end]
        inv = [pd.Timestamp(e["time"]) for e in sent if e["device"] == "growatt"]
        inv += [e["time"] for e in emu if e.get("device") == "inverter" and e.get("mode") == "load_first"
                and t0 <= e["time"] < end]
        if rooms:
            handback_s = (max(min(rooms), min(inv)) if inv else min(rooms)) - t0
            handback_s = max(0.0, handback_s.total_seconds())
    # relay-on time under PEMS's mode beyond what the loop commanded
    beyond = 0.0
    try:
        tab = r.emu.relay_table()
        # each step at the emulator's time: the clock's start plus the step's monotonic time (the loop's
        # calendar may have jumped)
        start = prep.scenario.start
        on_s = {(start + pd.Timedelta(seconds=float(e["mono_s"]))).floor(f"{int(STEP_S)}s"): e.get("on_s")
                for e in steps}
        tick = (tab.index[1] - tab.index[0]).total_seconds() if len(tab) > 1 else 60.0
        for j, room in enumerate(prep.model.rooms):
            under = tab[f"relay__{room}"] * tab[f"pems__{room}"] * tick
            per_step = under.groupby(tab.index.floor(f"{int(STEP_S)}s")).sum()
            for t, actual in per_step.items():
                cmd = on_s.get(t)
                want = float(cmd[j]) if cmd is not None else (STEP_S if _setpoint_step(steps, t) else 0.0)
                beyond += max(0.0, float(actual) - want - tick)  # one tick of slack: the tick's timing
    except Exception as exc:  # noqa: BLE001
        checks["relay table"] = False
        error = error or f"relay table: {exc}"
    points = None
    if influx_base is not None and not f.run_kw.get("dry_run") and res is not None:
        got = _influx_times(influx_base, db)
        want = {pd.Timestamp(e["time"]) for e in steps}
        points = len([t for t in want if t not in got])
    writes = None
    if f.run_kw.get("dry_run"):
        sent = [t for t in seen if t.endswith("/set") or (t.startswith("pems/") and t != "pems/emulator/time")]
        modbus = len(r.emu.growatt.writes)
        influx_pts = 0
        writes = len(sent) + modbus + influx_pts
    note = "; ".join(x for x in (f.note, error, ctx.get("inject_error", "")) if x)
    allow = f.relay_allow_s if f.relay_allow_s is not None else 60.0 * len(prep.model.rooms)
    checks["relay beyond commanded within its bound"] = beyond <= allow
    return Row(f.name, bool(survived), handback_s, f.handback_due, round(beyond, 1), points, writes, note, checks)


def _setpoint_step(steps, t) -> bool:
    return any(pd.Timestamp(e["time"]) == t and "setpoint_c" in e for e in steps)


def _influx_times(base: str, db: str) -> set[pd.Timestamp]:
    import requests

    r = requests.post(f"{base}/query", data={"db": db, "q": 'SELECT * FROM "pems" WHERE "kind" = \'measured\'',
                                             "epoch": "ns"}, timeout=10).json()["results"][0]
    out = set()
    for s in r.get("series", []):
        cols = s["columns"]
        for v in s.get("values", []):
            out.add(pd.Timestamp(v[cols.index("time")], unit="ns", tz="UTC"))
    if not out:  # measured values may go to the mapping's measurements: any point at the step's time
        r = requests.post(f"{base}/query", data={"db": db, "q": "SELECT * FROM /.*/", "epoch": "ns"},
                          timeout=10).json()["results"][0]
        for s in r.get("series", []):
            for v in s.get("values", []):
                out.add(pd.Timestamp(v[0], unit="ns", tz="UTC"))
    return out


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    head = ("| fault | survived | hand-back | relay beyond commanded | points missing | writes in dry run | |\n"
            "|---|---|---|---|---|---|---|")
    out = [head]
    for x in rows:
        if not x.handback_due:
            hb = "none due" + ("" if x.handback_s is None else f", **{x.handback_s:.0f} s**")
        elif x.handback_s is None:
            hb = "**none**"
        else:
            hb = f"{x.handback_s:.0f} s ({x.handback_steps:.2f} steps)"
        out.append(f"| {x.fault} | {'yes' if x.survived else '**no**'} | {hb} | {x.relay_beyond_s:.0f} s | "
                   f"{'—' if x.points_missing is None else x.points_missing} | "
                   f"{'—' if x.dry_run_writes is None else x.dry_run_writes} | "
                   f"{'✓' if x.ok else '✗'} {x.note} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/fault-matrix")
    ap.add_argument("--only", help="comma-separated substrings of the faults to run")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    from helpers import BATTERY_HOUSE, write_scenario
    from services import influxdb1_restartable, mosquitto

    from pems.scenarios.runner import prepare
    from pems.scenarios.spec import load_scenario

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prep = prepare(load_scenario(write_scenario(out, BATTERY_HOUSE, weather="greensboro-tmy3", load="h25",
                                                prices="two-rate")))
    rows: list[Row] = []
    t0 = time.monotonic()
    with influxdb1_restartable(out / "influx") as srv:
        for k, f0 in enumerate(faults(prep, None)):
            if args.only and not any(s.strip().lower() in f0.name.lower() for s in args.only.split(",")):
                continue
            (out / f"broker-{k}").mkdir(exist_ok=True)
            with mosquitto(out / f"broker-{k}") as broker:
                f = next(x for x in faults(prep, broker) if x.name == f0.name)
                print(f"[{time.monotonic() - t0:6.0f} s] {f.name} …", flush=True)
                row = _run_with_server(f, prep, broker, out / f"run-{k:02d}", srv)
                rows.append(row)
                print(f"          {'ok' if row.ok else 'NOT OK'}: {asdict(row)}", flush=True)
    md = table(rows)
    (out / "fault_matrix.md").write_text(md + "\n", encoding="utf-8")
    (out / "fault_matrix.json").write_text(json.dumps([asdict(x) for x in rows], indent=1, default=str))
    print(md)
    print(f"{sum(x.ok for x in rows)} of {len(rows)} rows as they should be; {time.monotonic() - t0:.0f} s")
    return 0 if all(x.ok for x in rows) else 1


def _run_with_server(f, prep, broker, folder, srv) -> Row:
    ctx_server = {"influx_server": srv}
    if f.name.startswith("InfluxDB down"):
        # the outage thread needs the server: pass it through the fault's setup
        orig = f.setup

        def setup(r, ctx):
            ctx.update(ctx_server)
            if orig is not None:
                orig(r, ctx)

        f.setup = setup
    return run_fault(f, prep, broker, folder, srv.url)


if __name__ == "__main__":
    sys.exit(main())

"""Growatt over Modbus TCP against a real pymodbus server on 127.0.0.1, and the inverter's physics.

The adapter gets an injected monotonic clock and wall clock, so the rate limit and the time slots
are tested without sleeping; everything else is real: sockets, pymodbus client and server.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from services import free_port

from pems.errors import InputError
from pems.live.devices import BatteryCommand
from pems.live.growatt import GrowattModbus
from pems.live.inverter_sim import BatteryRatings, InverterLogic
from pems.live.modbus_server import GrowattServer
from pems.live.registers import (
    builtin_maps,
    decode_control,
    decode_slot_start,
    encode_hm,
    encode_slot_start,
    load_map,
)
from pems.live.write_guard import GuardSettings, WriteGuard

TZ = "Europe/Prague"
NOW = pd.Timestamp("2025-01-13T09:07:30Z")  # 10:07:30 in Prague (CET)


class FakeClock:
    """Monotonic seconds and UTC wall time that only move when told (sleep moves them too)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.wall = NOW

    def __call__(self) -> float:
        return self.t

    def now(self) -> pd.Timestamp:
        return self.wall

    def sleep(self, dt: float) -> None:
        self.advance(dt)

    def advance(self, dt: float) -> None:
        self.t += dt
        self.wall += pd.Timedelta(seconds=dt)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sph_server():
    with GrowattServer("growatt-sph", port=free_port()) as srv:
        yield srv


@pytest.fixture
def xh_server():
    with GrowattServer("growatt-mod-xh", port=free_port()) as srv:
        yield srv


def adapter(srv: GrowattServer, clock: FakeClock, **kw) -> GrowattModbus:
    g = GrowattModbus("127.0.0.1", srv.port, map=srv.regmap, timezone=TZ, timeout=1.0, reconnect_backoff_s=0.0,
                      clock=clock, now=clock.now, sleep=clock.sleep, **kw)
    g.connect()
    assert g.connected, g.last_error
    return g


def battery_first(minutes: float = 22.5, **kw) -> BatteryCommand:
    return BatteryCommand(**{"priority": "battery_first", "power_pct": 80.0, "soc_limit": 0.9, "ac_charge": True,
                             "until": NOW + pd.Timedelta(minutes=minutes), **kw})


# ====================================================================== register maps
def test_builtin_maps_carry_the_documented_registers():
    assert {"growatt-sph", "growatt-mod-xh"} <= set(builtin_maps())
    sph = load_map("growatt-sph")
    assert sph.scheme == "sph" and sph.device.sources
    addr = {n: (r.table, r.address, r.words) for n, r in sph.registers.items()}
    assert addr["soc"] == ("input", 1014, 1)
    assert addr["P_discharge"] == ("input", 1009, 2) and addr["P_charge"] == ("input", 1011, 2)
    assert addr["P_import"][1:] == (1021, 2) and addr["P_export"][1:] == (1029, 2) and addr["P_load"][1:] == (1037, 2)
    assert addr["priority"] == ("holding", 1044, 1)
    assert (addr["grid_first_rate"][1], addr["grid_first_stop_soc"][1]) == (1070, 1071)
    assert [addr[n][1] for n in ("bat_first_rate", "bat_first_stop_soc", "ac_charge")] == [1090, 1091, 1092]
    assert [addr[f"bat_first_slot{k}_{p}"][1] for k in (1, 2, 3) for p in ("start", "end", "enable")] == list(range(1100, 1109))
    assert sph.slot_count("battery_first") == 3 and sph.slot_count("grid_first") == 3
    # the allow-list is exactly the writable holding registers; no input register on it
    assert all(r.table == "holding" for r in sph.writable())

    xh = load_map("growatt-mod-xh")
    assert xh.scheme == "tlxh" and xh.slot_count() == 9
    # the TL-XH's own range, and the protocol's clock at holding 45–50 (read only)
    assert all(3000 <= r.address < 3250 for r in xh.registers.values() if not r.name.startswith("clock_"))
    for m in (sph, xh):
        clock = [r for r in m.registers.values() if r.name.startswith("clock_")]
        assert [r.address for r in clock] == list(range(45, 51)) and not any(r.writable for r in clock)
    assert (xh["slot1_start"].address, xh["slot5_start"].address, xh["slot9_end"].address) == (3038, 3050, 3059)
    # reads never span two of Growatt's 125-register ranges
    for m in (sph, xh):
        for table in ("input", "holding"):
            for start, count in m.blocks(table):
                assert start // 125 == (start + count - 1) // 125 and count <= m.device.max_read


GOOD = """
[device]
name = "x"
scheme = "sph"
[registers.P_pv]
address = 1
table = "input"
words = 2
scale = 0.1
"""


@pytest.mark.parametrize(("extra", "key"), [
    ("[registers.soc]\naddress = 1014\ntable = \"input\"\nspeling = 1\n", "registers.soc.speling"),
    ("[registers.soc]\naddress = 1014\ntable = \"input\"\nwritable = true\nrange = [0, 1]\n", "registers.soc"),
    ("[registers.soc]\naddress = 1014\ntable = \"holding\"\nwritable = true\n", "registers.soc"),
    ("[registers.soc]\naddress = 2\ntable = \"input\"\n", "registers.soc.address"),
    ("[registers.soc]\naddress = 1014\ntable = \"input\"\nscale = 0\n", "registers.soc.scale"),
    ("[registers.soc]\naddress = 1014\ntable = \"input\"\n", "registers.P_import"),
    ("[registers.soc\n", ""),
])
def test_bad_map_file_names_the_file_and_key(tmp_path: Path, extra: str, key: str):
    f = tmp_path / "bad.toml"
    f.write_text(GOOD + extra)
    with pytest.raises(InputError) as err:
        load_map(f)
    keys = [p.key for p in err.value.problems]
    assert all(p.source == str(f) for p in err.value.problems)
    assert key in keys, keys


def test_unknown_map_name_is_input_error():
    with pytest.raises(InputError, match="built-in map"):
        load_map("growatt-nonexistent")


def test_time_and_scaling_codecs():
    assert encode_hm(20, 55) == 5175  # the SPH documentation's example (high byte hour, low byte minute)
    assert encode_hm(23, 59) == 5947
    # TL-XH slot start: +32768 enabled, +8192 battery first, +16384 grid first
    assert encode_slot_start(True, "battery_first", 2, 30) == 32768 + 8192 + 2 * 256 + 30
    assert encode_slot_start(False, "grid_first", 23, 0) == 16384 + 23 * 256
    assert decode_slot_start(encode_slot_start(True, "grid_first", 7, 5)) == (True, 2, 7, 5)
    sph, xh = load_map("growatt-sph"), load_map("growatt-mod-xh")
    assert sph["P_pv"].encode(70000.5) == [700005 >> 16, 700005 & 0xFFFF]  # 32-bit, high word first
    assert sph["T_bat"].encode(-4.5) == [65536 - 45]  # signed 16-bit, two's complement
    assert sph["T_bat"].decode([65536 - 45]) == -4.5
    assert xh["I_bat"].decode(xh["I_bat"].encode(-12.3)) == -12.3
    assert sph["soc"].decode([55]) == 0.55


# ====================================================================== readings
def test_readings_round_trip_with_scaling_sph(sph_server: GrowattServer, clock: FakeClock):
    values = dict(P_pv=7123.4, soc=0.55, P_charge=1234.5, P_discharge=0.0, P_import=65540.1, P_export=2000.0,
                  P_load=246.2)
    sph_server.set_measurements(**values, T_bat=-4.5, P_pv1=4000.0, P_pv2=3123.4)
    g = adapter(sph_server, clock)
    r = g.read()
    assert r.ok and r.time == NOW and r.priority == "load_first"
    for k, v in values.items():
        assert getattr(r, k) == pytest.approx(v, abs=1e-6), k
    extra = g.read_values()
    assert extra["T_bat"] == pytest.approx(-4.5)  # signed
    assert extra["P_pv1"] + extra["P_pv2"] == pytest.approx(7123.4)
    # P_import needs both words: 655401 raw does not fit in one register
    assert sph_server.inputs()["P_import"] == pytest.approx(65540.1)
    g.close()


def test_readings_round_trip_mod_xh(xh_server: GrowattServer, clock: FakeClock):
    xh_server.set_measurements(P_pv=9876.5, soc=0.31, P_charge=0.0, P_discharge=4321.0, P_import=12.3,
                               P_export=0.0, P_load=5555.5, I_bat=-40.2)
    g = adapter(xh_server, clock)
    r = g.read()
    assert r.ok and (r.P_pv, r.soc, r.P_discharge, r.P_load) == pytest.approx((9876.5, 0.31, 4321.0, 5555.5))
    assert g.read_values()["I_bat"] == pytest.approx(-40.2)
    assert r.priority == "load_first"


# ====================================================================== commands
def test_battery_first_writes_exactly_the_expected_registers(sph_server: GrowattServer, clock: FakeClock):
    g = adapter(sph_server, clock)
    records = g.command(battery_first())
    sent = {r.target: r.value for r in records if r.sent}
    # 10:07 → 10:30 local (until rounded up to the minute), slot 1 of battery first
    expected = {"bat_first_rate": 80.0, "bat_first_stop_soc": 90.0, "ac_charge": 1.0,
                "bat_first_slot1_start": encode_hm(10, 7), "bat_first_slot1_end": encode_hm(10, 30),
                "bat_first_slot1_enable": 1.0, "priority": 1.0}
    assert sent == expected
    assert {k: v[-1] for k, v in sph_server.written_registers().items()} == expected
    # the other slots already read 0 on connect: not rewritten, and said so
    skipped = {r.target: r.reason for r in records if not r.sent}
    assert set(skipped) == {"bat_first_slot2_enable", "bat_first_slot3_enable", "grid_first_slot1_enable",
                            "grid_first_slot2_enable", "grid_first_slot3_enable"}
    assert all(reason.startswith("unchanged") for reason in skipped.values())
    # consecutive registers go in one request: 1090–1092, 1100–1102, then the priority
    assert [(w.function_code, w.address, len(w.values)) for w in sph_server.writes] == [
        (16, 1090, 3), (16, 1100, 3), (6, 1044, 1)]
    r = g.read()
    assert r.priority == "battery_first"


def test_grid_first_on_mod_xh_packs_priority_and_enable_in_the_slot(xh_server: GrowattServer, clock: FakeClock):
    g = adapter(xh_server, clock)
    cmd = BatteryCommand("grid_first", power_pct=60.0, soc_limit=0.2, until=NOW + pd.Timedelta(hours=2))
    sent = {r.target: r.value for r in g.command(cmd) if r.sent}
    assert sent == {"grid_first_rate": 60.0, "grid_first_stop_soc": 20.0,
                    "slot1_end": encode_hm(12, 8), "slot1_start": 0x8000 | (2 << 13) | encode_hm(10, 7)}
    # the end is written before the start word that switches the slot on
    assert [w.address for w in xh_server.writes] == [3036, 3039, 3038]
    assert g.read().priority == "grid_first"  # read back from the slot in force now


def test_unchanged_values_are_not_rewritten(sph_server: GrowattServer, clock: FakeClock):
    g = adapter(sph_server, clock)
    g.command(battery_first())
    n = len(sph_server.writes)
    clock.advance(5)
    again = g.command(battery_first())
    assert not any(r.sent for r in again)
    assert all(r.reason.startswith("unchanged") for r in again)
    assert len(sph_server.writes) == n
    clock.advance(5)
    changed = g.command(battery_first(power_pct=50.0))
    assert [r.target for r in changed if r.sent] == ["bat_first_rate"]
    assert sph_server.written_registers()["bat_first_rate"] == [80.0, 50.0]


def test_extending_a_running_slot_rewrites_only_its_end(sph_server: GrowattServer, clock: FakeClock):
    g = adapter(sph_server, clock)
    g.command(battery_first(minutes=22.5))
    clock.advance(15 * 60)  # next control step: 10:22:30, slot to 10:45
    sent = [r for r in g.command(battery_first(minutes=37.5)) if r.sent]
    assert [(r.target, r.value) for r in sent] == [("bat_first_slot1_end", encode_hm(10, 45))]


def test_slot_cannot_pass_midnight_and_defaults_when_open(sph_server: GrowattServer, clock: FakeClock):
    g = adapter(sph_server, clock, default_slot_s=1800)
    late = pd.Timestamp("2025-01-13T22:50:00Z")  # 23:50 local
    plan = dict(g.plan(BatteryCommand("battery_first", until=late + pd.Timedelta(hours=3)), now=late))
    assert plan["bat_first_slot1_start"] == encode_hm(23, 50) and plan["bat_first_slot1_end"] == encode_hm(23, 59)
    plan = dict(g.plan(BatteryCommand("grid_first", until=None), now=NOW))
    assert plan["grid_first_slot1_end"] == encode_hm(10, 38)  # now + 30 min, rounded up
    # a slot that already ended is the safe state
    assert dict(g.plan(battery_first(minutes=-1), now=NOW))["priority"] == 0.0


def test_second_command_within_a_second_is_refused_with_a_reason(sph_server: GrowattServer, clock: FakeClock):
    g = adapter(sph_server, clock)
    assert any(r.sent for r in g.command(battery_first()))
    n = len(sph_server.writes)
    clock.advance(0.4)
    refused = g.command(BatteryCommand("grid_first", power_pct=100, soc_limit=0.3, until=NOW + pd.Timedelta(hours=1)))
    to_send = [r for r in refused if not r.reason.startswith("unchanged")]
    assert to_send and not any(r.sent for r in refused)
    assert all("rate limit" in r.reason and "1 s" in r.reason for r in to_send)
    assert len(sph_server.writes) == n  # nothing reached the server
    clock.advance(0.6)
    assert any(r.sent for r in g.command(BatteryCommand("grid_first", power_pct=100, soc_limit=0.3,
                                                         until=NOW + pd.Timedelta(hours=1))))


def test_release_waits_out_the_rate_limit_and_clears_every_slot(sph_server: GrowattServer, clock: FakeClock):
    g = adapter(sph_server, clock)
    g.command(battery_first())
    t0 = clock.t
    records = g.release()
    assert clock.t - t0 == pytest.approx(1.0)  # waited, not refused
    assert {r.target: r.value for r in records if r.sent} == {"priority": 0.0, "bat_first_slot1_enable": 0.0,
                                                             "ac_charge": 0.0}
    held = sph_server.holding()
    assert held["priority"] == 0 and held["ac_charge"] == 0
    assert all(v == 0 for k, v in held.items() if k.endswith("_enable"))
    ctl = decode_control(sph_server.regmap, held)
    assert not any(s.enabled for s in ctl.slots) and ctl.mode_at(10 * 60 + 15) == "load_first"
    assert g.read().priority == "load_first"


def test_release_on_mod_xh_clears_the_on_bits_and_keeps_the_times(xh_server: GrowattServer, clock: FakeClock):
    # a slot the owner set on the panel (slot 3, battery first 02:00–05:00) and ours
    xh_server.set_holding(slot3_start=encode_slot_start(True, "battery_first", 2, 0), slot3_end=encode_hm(5, 0))
    g = adapter(xh_server, clock)
    g.command(battery_first())
    clock.advance(1)
    g.release()
    held = xh_server.holding()
    for k in range(1, 10):
        on, _, _, _ = decode_slot_start(int(held[f"slot{k}_start"]))
        assert not on, k
    assert decode_slot_start(int(held["slot3_start"]))[2:] == (2, 0)
    assert held["ac_charge"] == 0


# ====================================================================== the guard
def test_writes_outside_the_allow_list_or_range_never_reach_the_socket(sph_server: GrowattServer, clock: FakeClock):
    g = adapter(sph_server, clock)
    for cmd in (battery_first(power_pct=150.0), battery_first(soc_limit=0.05), battery_first(soc_limit=float("nan"))):
        records = g.command(cmd)
        assert records and not any(r.sent for r in records)
        assert any("range" in r.reason or "finite" in r.reason for r in records)
        assert all(r.reason for r in records)  # the valid ones say the command was refused
        clock.advance(2)

    def must_not_send(reg, words):
        raise AssertionError(f"sent {reg.name} = {words}")

    guard = WriteGuard(load_map("growatt-sph"), clock=clock, now=clock.now)
    for name, value, why in [("soc", 0.5, "allow-list"), ("P_import", 0.0, "allow-list"),
                             ("holding_608", 20, "allow-list"), ("priority", 3, "allowed values"),
                             ("bat_first_slot1_end", 24 * 256, "range"), ("bat_first_slot1_end", 10 * 256 + 60, "time")]:
        [rec] = guard.submit([(name, value)], must_not_send)
        assert not rec.sent and why in rec.reason, rec
    # one bad write refuses the whole command
    recs = guard.submit([("bat_first_rate", 50), ("soc", 1.0)], must_not_send)
    assert [r.sent for r in recs] == [False, False] and "command refused" in recs[0].reason
    assert sph_server.writes == []


def test_guard_rejects_a_rate_limit_under_one_second():
    with pytest.raises(ValueError):
        GuardSettings(min_interval_s=0.5)


def test_dry_run_sends_nothing(sph_server: GrowattServer, clock: FakeClock):
    before = sph_server.holding()
    g = adapter(sph_server, clock, dry_run=True)
    records = g.command(battery_first())
    assert records and not any(r.sent for r in records)
    would = [r for r in records if r.reason.startswith("dry-run")]
    assert {r.target for r in would} >= {"priority", "bat_first_slot1_enable", "bat_first_rate"}
    clock.advance(2)
    assert all(r.reason.startswith("unchanged") for r in g.command(battery_first()))  # as a live run would
    clock.advance(2)
    g.release()
    assert sph_server.writes == [] and sph_server.holding() == before
    assert g.read().ok  # reads still work


# ====================================================================== faults
def test_server_killed_mid_run_gives_nan_readings_and_the_adapter_reconnects(sph_server: GrowattServer,
                                                                             clock: FakeClock):
    sph_server.set_measurements(P_pv=1000.0, soc=0.5, P_load=300.0)
    g = adapter(sph_server, clock)
    assert g.read().ok
    sph_server.stop()
    r = g.read()
    assert not r.ok and r.priority is None
    assert all(math.isnan(getattr(r, k)) for k in ("P_pv", "soc", "P_charge", "P_discharge", "P_import",
                                                   "P_export", "P_load"))
    down = g.command(battery_first())
    assert down and not any(r.sent for r in down) and all("not connected" in r.reason for r in down)
    # while it was down the owner switched to grid first on the panel
    sph_server.set_holding(priority=2)
    sph_server.start()
    r = g.read()
    assert r.ok and r.P_pv == pytest.approx(1000.0) and r.priority == "grid_first"
    # re-read on connect: the guard knows the device holds 2, so the release really writes 0
    clock.advance(2)
    assert ("priority", 0.0) in [(x.target, x.value) for x in g.release() if x.sent]
    assert sph_server.holding()["priority"] == 0


def test_reconnect_attempts_are_spaced(sph_server: GrowattServer, clock: FakeClock):
    g = adapter(sph_server, clock)
    g.reconnect_backoff_s = 10.0
    sph_server.stop()
    assert not g.read().ok
    sph_server.start()
    clock.advance(5)
    assert not g.read().ok  # too soon to try again
    clock.advance(6)
    assert g.read().ok


# ====================================================================== inverter physics
RATINGS = BatteryRatings(capacity_wh=10_000, max_charge_w=5000, max_discharge_w=4000, soc_min=0.1)


def sph_holding(**kw) -> dict[str, float]:
    m = load_map("growatt-sph")
    h = {r.name: (r.default or 0.0) for r in m.table("holding")}
    h.update(kw)
    return h


def slot(prefix: str, start: tuple[int, int], end: tuple[int, int]) -> dict[str, float]:
    return {f"{prefix}_slot1_start": encode_hm(*start), f"{prefix}_slot1_end": encode_hm(*end),
            f"{prefix}_slot1_enable": 1}


def test_load_first_uses_surplus_and_covers_deficit_within_limits():
    logic = InverterLogic("growatt-sph", RATINGS, TZ)
    h = sph_holding()
    out = logic.step(h, NOW, P_pv=3000, P_load=1000, soc=0.5)
    assert (out.mode, out.P_bat, out.P_grid) == ("load_first", 2000, 0)
    assert logic.step(h, NOW, P_pv=9000, P_load=1000, soc=0.5).P_bat == 5000  # charge rating
    out = logic.step(h, NOW, P_pv=0, P_load=6000, soc=0.5)
    assert out.P_bat == -4000 and out.P_grid == 2000  # discharge rating, grid takes the rest
    assert logic.step(h, NOW, P_pv=0, P_load=1000, soc=0.1).P_bat == 0  # empty: soc_min
    assert logic.step(h, NOW, P_pv=3000, P_load=0, soc=1.0).P_bat == 0  # full


def test_battery_first_charges_at_the_rate_up_to_stop_soc_and_from_the_grid_only_with_ac_charge():
    logic = InverterLogic("growatt-sph", RATINGS, TZ)
    h = sph_holding(bat_first_rate=60, bat_first_stop_soc=90, ac_charge=0, **slot("bat_first", (10, 0), (11, 0)))
    out = logic.step(h, NOW, P_pv=1000, P_load=800, soc=0.5)
    assert out.mode == "battery_first" and out.P_bat == 1000  # PV only; the load from the grid
    assert logic.step(h, NOW, P_pv=0, P_load=800, soc=0.5).P_bat == 0  # no PV, no AC charge: nothing
    assert logic.step(h, NOW, P_pv=8000, P_load=0, soc=0.5).P_bat == 3000  # 60 % of 5 kW
    h_ac = {**h, "ac_charge": 1}
    assert logic.step(h_ac, NOW, P_pv=0, P_load=800, soc=0.5).P_bat == 3000
    assert logic.step(h_ac, NOW, P_pv=0, P_load=800, soc=0.9).P_bat == 0  # stop SOC reached
    assert logic.step(h_ac, NOW, P_pv=0, P_load=800, soc=0.5).P_grid == 3800
    # 11:00 local is past the slot (its end is exclusive); 10:59:59 is inside
    assert logic.step(h_ac, pd.Timestamp("2025-01-13T10:00:00Z"), P_pv=0, P_load=800, soc=0.5).mode == "load_first"
    assert logic.step(h_ac, pd.Timestamp("2025-01-13T09:59:59Z"), P_pv=0, P_load=800, soc=0.5).mode == "battery_first"


def test_grid_first_discharges_at_the_rate_down_to_stop_soc():
    logic = InverterLogic("growatt-sph", RATINGS, TZ)
    h = sph_holding(grid_first_rate=50, grid_first_stop_soc=30, **slot("grid_first", (9, 0), (12, 0)))
    out = logic.step(h, NOW, P_pv=2000, P_load=500, soc=0.8)
    assert out.mode == "grid_first" and out.P_bat == -2000 and out.P_grid == -3500
    assert logic.step(h, NOW, P_pv=2000, P_load=500, soc=0.3).P_bat == 0  # never charges, stops at 30 %


def test_energy_limits_do_not_overshoot_the_soc_limit_within_a_step():
    logic = InverterLogic("growatt-sph", RATINGS, TZ)
    h = sph_holding(ac_charge=1, bat_first_stop_soc=90, **slot("bat_first", (10, 0), (11, 0)))
    dt = 900.0
    p = logic.step(h, NOW, P_pv=0, P_load=0, soc=0.89, dt_s=dt).P_bat
    assert 0 < p < 5000
    assert p * dt / 3600 * RATINGS.eta_charge == pytest.approx(0.01 * RATINGS.capacity_wh)
    p = logic.step(sph_holding(), NOW, P_pv=0, P_load=3000, soc=0.105, dt_s=dt).P_bat
    assert -p * dt / 3600 / RATINGS.eta_discharge == pytest.approx(0.005 * RATINGS.capacity_wh)


def test_powers_stay_within_ratings_and_never_charge_from_the_grid_without_ac_charge(rng):
    ratings = BatteryRatings(capacity_wh=10_000, max_charge_w=5000, max_discharge_w=4000, inverter_ac_w=4500)
    logic = InverterLogic("growatt-sph", ratings, TZ)
    xh = InverterLogic("growatt-mod-xh", ratings, TZ)
    for _ in range(400):
        mode = rng.choice(["none", "bat_first", "grid_first"])
        ac = int(rng.integers(0, 2))
        kw = dict(bat_first_rate=float(rng.integers(0, 101)), grid_first_rate=float(rng.integers(0, 101)),
                  bat_first_stop_soc=float(rng.integers(10, 101)), grid_first_stop_soc=float(rng.integers(10, 101)),
                  ac_charge=ac)
        if mode != "none":
            kw.update(slot(mode, (10, 0), (10, 30)))
        P_pv, P_load, soc = rng.uniform(0, 10_000), rng.uniform(0, 10_000), rng.uniform(0, 1)
        dt = float(rng.choice([60.0, 900.0]))
        out = logic.step(sph_holding(**kw), NOW, P_pv, P_load, soc, dt_s=dt)
        assert -4000 - 1e-9 <= out.P_bat <= 4500 + 1e-9
        assert out.P_grid == pytest.approx(P_load + out.P_bat - P_pv)
        if not ac or out.mode != "battery_first":
            assert out.P_bat <= P_pv + 1e-9  # whatever charges the battery came from PV
        soc_next = soc + (out.P_bat * ratings.eta_charge if out.P_bat > 0 else out.P_bat / ratings.eta_discharge) \
            * dt / 3600 / ratings.capacity_wh
        assert ratings.soc_min - 1e-9 <= soc_next or out.P_bat >= 0
        assert soc_next <= 1.0 + 1e-9
        # the same settings on the TL-XH layout behave the same
        if mode != "none":
            prio = "battery_first" if mode == "bat_first" else "grid_first"
            xkw = {k: v for k, v in kw.items() if "slot" not in k}
            xkw.update(slot1_start=encode_slot_start(True, prio, 10, 0), slot1_end=encode_hm(10, 30))
            assert xh.step(xkw, NOW, P_pv, P_load, soc, dt_s=dt).P_bat == pytest.approx(out.P_bat)


def test_emulated_home_follows_the_adapter_commands(sph_server: GrowattServer, clock: FakeClock):
    """The emulator's side: what the loop wrote over the socket drives InverterLogic."""
    logic = InverterLogic(sph_server.regmap, RATINGS, TZ)
    g = adapter(sph_server, clock)
    g.command(battery_first(power_pct=40.0))
    out = logic.step(sph_server.holding(), NOW, P_pv=0, P_load=500, soc=0.5)
    assert out.mode == "battery_first" and out.P_bat == 2000  # 40 % of 5 kW, from the grid (AC charge)
    sph_server.set_measurements(P_charge=out.P_bat, P_import=out.P_grid, soc=0.5, P_load=500)
    r = g.read()
    assert r.P_charge == 2000 and r.P_import == 2500 and r.priority == "battery_first"
    clock.advance(1)
    g.release()
    assert logic.step(sph_server.holding(), NOW, P_pv=0, P_load=500, soc=0.5).mode == "load_first"


def test_server_binds_loopback_and_restarts_on_the_same_port():
    srv = GrowattServer("growatt-sph").start()
    try:
        port = srv.port
        srv.set_holding(bat_first_rate=42)
        srv.restart()
        assert srv.port == port and srv.running and srv.holding()["bat_first_rate"] == 42
        assert srv.host == "127.0.0.1"
    finally:
        srv.stop()
    assert not srv.running


def test_every_register_value_round_trips_through_a_real_socket(sph_server: GrowattServer, clock: FakeClock):
    g = adapter(sph_server, clock)
    vals = np.array([0.0, 0.1, 6553.5, 6553.6, 429496729.5])  # 32-bit limits of a 0.1 W register
    for v in vals:
        sph_server.set_measurements(P_load=float(v))
        assert g.read().P_load == pytest.approx(v)


def test_naive_until_is_taken_as_utc(sph_server: GrowattServer, clock: FakeClock):
    g = adapter(sph_server, clock)
    plan = dict(g.plan(BatteryCommand("battery_first", until=pd.Timestamp("2025-01-13T09:30:00")), now=NOW))
    assert plan["bat_first_slot1_end"] == encode_hm(10, 30)

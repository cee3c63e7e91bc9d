"""The command line with bad input: one clear message naming the file and key, exit code 2, no traceback.

Every case runs ``python -m pems`` as a subprocess on tiny one-day scenarios written into its own
folder; the subprocesses run side by side, one per CPU (module fixture). Each one pays the
command's start-up (~2 s of imports), so this file takes about 1.5 s × cases / CPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

HOUSE = """\
name = "tiny"
[site]
latitude = 50.0
longitude = 14.4
timezone = "Europe/Prague"
country = "CZ"

[[rooms]]
id = "a"
floor_area_m2 = {area_a}
heater_w = 2000
neighbours = {neighbours_a}
windows = [{{ azimuth_deg = 180, area_m2 = 3.0 }}]
{extra_a}
[[rooms]]
id = "{id_b}"
floor_area_m2 = 12.0
heater_w = 1200
"""

SCENARIO = """\
name = "tiny-day"
house = "house.toml"
start = {start}
days = 1
step_minutes = 15
weather = "weather.csv"
prices = "two-rate"
load = "h25"
{extra}
[forecast]
horizon_hours = 6
"""


def write_house(d: Path, area_a: str = "20.0", neighbours_a: str = '["b"]', extra_a: str = "",
                id_b: str = "b") -> None:
    (d / "house.toml").write_text(HOUSE.format(area_a=area_a, neighbours_a=neighbours_a, extra_a=extra_a,
                                               id_b=id_b), encoding="utf-8")


def write_scenario(d: Path, start: str = '"2024-01-10T00:00:00Z"', extra: str = "", name: str = "sc.toml") -> None:
    (d / name).write_text(SCENARIO.format(start=start, extra=extra), encoding="utf-8")


def write_weather(d: Path, start: str = "2024-01-09", end: str = "2024-01-12", drop: str | None = None) -> None:
    """Hourly weather: a cold January day with a little winter sun."""
    t = pd.date_range(pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC"), freq="1h")
    h = t.hour.to_numpy()
    df = pd.DataFrame({"time": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "T_out": (-3.0 + 3.0 * np.sin((h - 9) / 24 * 2 * np.pi)).round(2),
                       "ghi": np.clip(250.0 * np.sin((h - 7) / 9 * np.pi), 0, None).round(1)})
    if drop:
        df = df.drop(columns=[drop])
    df.to_csv(d / "weather.csv", index=False)


def good_case(d: Path) -> None:
    write_house(d)
    write_scenario(d)
    write_weather(d)


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings stderr must contain: the file (or "command line") and the key
    setup: object = good_case


def _broken_toml(d: Path) -> None:
    good_case(d)
    (d / "sc.toml").write_text('name = "tiny-day"\nhouse = "house.toml"\ndays = = 1\n', encoding="utf-8")


CASES = [
    Case("unknown scenario name", ("simulate", "no-such-scenario"), ("no-such-scenario", "scenario", "winter-week")),
    Case("scenario path missing", ("simulate", "nowhere/missing.toml"), ("missing.toml", "scenario", "not found")),
    Case("broken TOML", ("simulate", "sc.toml"), ("sc.toml", "TOML", "line 3"), _broken_toml),
    Case("negative floor area", ("simulate", "sc.toml"), ("house.toml", "rooms[0].floor_area_m2", "greater than 0"),
         lambda d: (good_case(d), write_house(d, area_a="-5.0"))),
    Case("unknown neighbour", ("simulate", "sc.toml"), ("house.toml", "rooms[0].neighbours[1]", "garage"),
         lambda d: (good_case(d), write_house(d, neighbours_a='["b", "garage"]'))),
    Case("unknown key in house", ("simulate", "sc.toml"), ("house.toml", "rooms[0].heater_kw", "unknown key"),
         lambda d: (good_case(d), write_house(d, extra_a="heater_kw = 2.0"))),
    Case("unknown controller in scenario", ("simulate", "sc.toml"), ("sc.toml", "controller", "nonsense", "rule-based"),
         lambda d: (good_case(d), write_scenario(d, extra='controller = "nonsense"'))),
    Case("--controller nonsense", ("simulate", "sc.toml", "--controller", "nonsense"),
         ("command line", "--controller", "nonsense", "rule-based")),
    Case("weather CSV without ghi", ("simulate", "sc.toml"), ("weather.csv", "ghi"),
         lambda d: (good_case(d), write_weather(d, drop="ghi"))),
    Case("weather CSV too short", ("simulate", "sc.toml"), ("weather.csv", "weather", "2024-01-10 12:00"),
         lambda d: (good_case(d), write_weather(d, end="2024-01-10T12:00"))),
    Case("start without time zone (string)", ("simulate", "sc.toml"), ("sc.toml", "start", "time zone"),
         lambda d: (good_case(d), write_scenario(d, start='"2024-01-10T00:00:00"'))),
    Case("start without time zone (TOML local datetime)", ("simulate", "sc.toml"), ("sc.toml", "start", "time zone"),
         lambda d: (good_case(d), write_scenario(d, start="2024-01-10T00:00:00"))),
    Case("duplicate room ids", ("simulate", "sc.toml"), ("house.toml", "rooms[1].id", "duplicate", "'a'"),
         lambda d: (good_case(d), write_house(d, neighbours_a="[]", id_b="a"))),
    Case("bench with an unknown controller", ("bench", "sc.toml", "--controllers", "mpc,nonsense", "--out", "out"),
         ("command line", "--controllers", "nonsense", "oracle")),
    Case("bench with a broken second scenario", ("bench", "sc.toml", "broken.toml", "--out", "out"),
         ("broken.toml", "mpc.horizon_hours"),
         lambda d: (good_case(d), write_scenario(d, extra="[mpc]\nhorizon_hours = -4", name="broken.toml"))),
    Case("bad mpc weight", ("simulate", "sc.toml"), ("sc.toml", "mpc.comfort_margin", "greater than or equal"),
         lambda d: (good_case(d), write_scenario(d, extra="[mpc]\ncomfort_margin_k = -1"))),
]

GOOD = Case("good path", ("simulate", "sc.toml", "--out", "out"), ())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1", COLUMNS="200")
    return env


@dataclass(frozen=True)
class Ran:
    cwd: Path
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Ran]:
    """Every case (and the good path) as a subprocess, as many at once as there are CPUs."""
    todo = []
    for i, case in enumerate([GOOD, *CASES]):  # the longest first
        d = tmp_path_factory.mktemp(f"cli{i}")
        case.setup(d)
        todo.append((case, d))
    width = max(1, min(len(todo), os.cpu_count() or 1))
    out: dict[str, Ran] = {}
    running: list[tuple[Case, Path, subprocess.Popen]] = []
    while todo or running:
        while todo and len(running) < width:
            case, d = todo.pop(0)
            running.append((case, d, subprocess.Popen([sys.executable, "-m", "pems", *case.args], cwd=d, env=_env(),
                                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        case, d, p = running.pop(0)
        so, se = p.communicate(timeout=300)
        out[case.name] = Ran(d, p.returncode, so, se)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_2_with_one_clear_message(runs, case):
    r = runs[case.name]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("pems: error: ") for ln in lines), r.stderr
    for s in case.expect:
        assert s in r.stderr, f"{s!r} not in {r.stderr!r}"
    assert not (r.cwd / "out").exists()  # nothing was written


@pytest.mark.slow
def test_simulate_tiny_scenario_writes_its_outputs(runs):
    r = runs[GOOD.name]
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = r.cwd / "out"
    for f in ("trajectory.parquet", "kpis.json", "report.html", "events.jsonl"):
        assert (out / f).is_file(), f
    traj = pd.read_parquet(out / "trajectory.parquet")
    assert len(traj) == 96
    assert traj.index[0] == pd.Timestamp("2024-01-10", tz="UTC")
    for c in ("T_room__a", "T_room__b", "P_heat__a", "P_heat__b", "P_grid", "P_load", "P_pv",
              "T_set_low__a", "T_set_high__b", "P_heat_cmd__a", "price_import"):
        assert c in traj.columns, c
    # no PV and no battery: the grid carries the load and the heating, step by step
    heat = traj["P_heat__a"] + traj["P_heat__b"]
    np.testing.assert_allclose(traj["P_grid"], traj["P_load"] + heat + traj["P_bat"] - traj["P_pv"] + traj["P_loss"],
                               atol=1e-6)
    assert (traj[["P_heat__a", "P_heat__b"]] <= [2000 + 1e-6, 1200 + 1e-6]).all().all()
    kpis = json.loads((out / "kpis.json").read_text(encoding="utf-8"))
    assert kpis["scenario"] == "tiny-day" and kpis["controller"] == "rule-based"
    assert kpis["heating_kWh"] == pytest.approx(heat.sum() * 0.25 / 1000, rel=1e-6)
    assert kpis["heating_kWh"] > 0  # a January day at −3 °C needs heat
    for line in (out / "events.jsonl").read_text(encoding="utf-8").splitlines():
        json.loads(line)
    assert "<html" in (out / "report.html").read_text(encoding="utf-8").lower()

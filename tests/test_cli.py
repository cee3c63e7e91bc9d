"""The command line as a user meets it: bad input, unreachable services, outputs that cannot be written.

A table of cases, each run through the installed ``pems`` entry point as a subprocess in its own
folder of tiny one-day inputs. Every case must end with its exit code (2: bad input, 3: a service
did not answer; docs/reference/exit-codes.md), no traceback, and one ``pems: error:`` line naming
the file (or ``command line``) and the key; nothing may be written and no file given may change.
The good paths must print nothing at all on stderr (no blank lines, no library warnings). The
subprocesses run side by side, one per CPU (module fixture); each pays the command's start-up
(~1.5 s of imports), the three broker cases the 10 s a broker is given to answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
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


def write_history(d: Path, name: str = "history.csv", rooms: tuple[str, ...] = ("a", "b"),
                  empty: tuple[str, ...] = (), days: int = 10) -> None:
    """A 15-minute history of the tiny house from 2024-01-01 UTC: rooms, heating, outdoor weather."""
    t = pd.date_range("2024-01-01", periods=96 * days, freq="15min", tz="UTC")
    k = np.arange(len(t))
    df = pd.DataFrame({"time": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "T_out": (2 + 3 * np.sin(k / 15.3)).round(2),
                       "ghi": np.clip(200 * np.sin((k % 96 - 28) / 40 * np.pi), 0, None).round(1)})
    for i, r in enumerate(rooms):
        df[f"T_room__{r}"] = np.nan if r in empty else (21 + np.sin(k / (20 + 3 * i))).round(2)
        df[f"P_heat__{r}"] = (800 + 400 * np.cos(k / 17)).round(0)
    df.to_csv(d / name, index=False)


def history_case(d: Path, **kw) -> None:
    good_case(d)
    write_history(d, **kw)


def duplicate_time(d: Path, file: str) -> None:
    """Row 8 of the CSV gets the time of row 7."""
    df = pd.read_csv(d / file)
    df.loc[6, "time"] = df.loc[5, "time"]
    df.to_csv(d / file, index=False)


def prices_csv(d: Path) -> None:
    t = pd.date_range("2024-01-09", "2024-01-12", freq="1h", tz="UTC")
    pd.DataFrame({"time": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "price_import": 0.2, "price_export": 0.05}
                 ).to_csv(d / "prices.csv", index=False)
    text = (d / "sc.toml").read_text(encoding="utf-8")
    (d / "sc.toml").write_text(text.replace('"two-rate"', '"prices.csv"'), encoding="utf-8")


def live_config(d: Path, port: int = 1) -> None:
    good_case(d)
    (d / "live.toml").write_text(f'house = "house.toml"\n[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
                                 '[forecast]\nweather = "greensboro-tmy3"\nload = "h25"\nprices = "two-rate"\n',
                                 encoding="utf-8")


def replace_in(d: Path, file: str, old: str, new: str) -> None:
    (d / file).write_text((d / file).read_text(encoding="utf-8").replace(old, new), encoding="utf-8")


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings stderr must contain: the file (or "command line") and the key
    setup: Callable[[Path], object] = good_case
    code: int = 2  # docs/reference/exit-codes.md
    absent: tuple[str, ...] = ()  # substrings stderr must not contain
    log: bool = False  # a live home's log (times, sources) may come before the error line
    logs: tuple[str, ...] = ()  # files a run may write even when it fails (a live home's event log)


def _broken_toml(d: Path) -> None:
    good_case(d)
    (d / "sc.toml").write_text('name = "tiny-day"\nhouse = "house.toml"\ndays = = 1\n', encoding="utf-8")


PREDICT = ("predict", "--house", "house.toml", "--history", "history.csv", "--start", "2024-01-08", "--hours", "24")
MQTT = ("--mqtt", "127.0.0.1:1")  # nothing listens there: refused at once

CASES = [
    Case("unknown scenario name", ("simulate", "no-such-scenario"), ("no-such-scenario", "scenario", "winter-week")),
    Case("scenario path missing", ("simulate", "nowhere/missing.toml"), ("missing.toml", "scenario", "not found")),
    Case("broken TOML", ("simulate", "sc.toml"), ("sc.toml", "TOML", "line 3"), _broken_toml),
    Case("negative floor area", ("simulate", "sc.toml"), ("house.toml", "rooms[0].floor_area_m2", "greater than 0"),
         lambda d: (good_case(d), write_house(d, area_a="-5.0"))),
    Case("unknown neighbour", ("simulate", "sc.toml"), ("house.toml", "rooms[0].neighbours[1]", "garage"),
         lambda d: (good_case(d), write_house(d, neighbours_a='["b", "garage"]'))),
    Case("unknown key in house", ("simulate", "sc.toml"),
         ("house.toml", "rooms[0].heater_kw", "unknown key", "docs/reference/house.md"),
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
    # issue 13, part 2: tracebacks and silent acceptances
    Case("calibrate: a room of the house is not in the history",
         ("calibrate", "--history", "history.csv", "--house", "house.toml", "--out", "out"),
         ("history.csv", "T_room__b", "no column"), lambda d: history_case(d, rooms=("a",))),
    Case("calibrate: a room of the house has no values",
         ("calibrate", "--history", "history.csv", "--house", "house.toml", "--out", "out"),
         ("history.csv", "T_room__b", "no values"), lambda d: history_case(d, empty=("b",))),
    Case("calibrate without a house: a room has no values", ("calibrate", "--history", "history.csv", "--out", "out"),
         ("history.csv", "T_room__b", "no values"), lambda d: history_case(d, empty=("b",))),
    Case("predict: a room of the house is not in the history", (*PREDICT, "--out", "out/p.parquet"),
         ("history.csv", "T_room__b"), lambda d: history_case(d, rooms=("a",))),
    Case("live --controller oracle", ("live", "--emulate", "sc.toml", *MQTT, "--controller", "oracle"),
         ("command line", "--controller", "'oracle' cannot run live", "perfect foresight")),
    Case("live --controller foo does not offer the oracle", ("live", "--emulate", "sc.toml", *MQTT, "--controller", "foo"),
         ("command line", "--controller", "'foo'", "mpc"), absent=("oracle",)),
    Case("simulate --out is a file", ("simulate", "sc.toml", "--out", "sc.toml"), ("sc.toml", "--out", "is a file")),
    Case("simulate --out under a file", ("simulate", "sc.toml", "--out", "weather.csv/run"),
         ("weather.csv/run", "--out", "is a file")),
    Case("bench --out is a file", ("bench", "sc.toml", "--controllers", "rule-based", "--out", "house.toml"),
         ("house.toml", "--out", "is a file")),
    Case("demo --out is a file", ("demo", "--days", "1", "--out", "house.toml"), ("house.toml", "--out", "is a file")),
    Case("calibrate --out is a file", ("calibrate", "--history", "history.csv", "--out", "history.csv"),
         ("history.csv", "--out", "is a file"), history_case),
    Case("calibrate --out would overwrite the --house given",
         ("calibrate", "--history", "history.csv", "--house", "house.toml", "--out", "."),
         ("--out", "would overwrite house.toml", "--house"), history_case),
    Case("predict --out is not a Parquet file", (*PREDICT, "--out", "house.toml"), ("house.toml", "--out", ".parquet"),
         history_case),
    Case("predict --out is a folder", (*PREDICT, "--out", "sub.parquet"), ("sub.parquet", "--out", "is a folder"),
         lambda d: (history_case(d), (d / "sub.parquet").mkdir(), (d / "sub.parquet" / "keep").write_text("mine"))),
    Case("history --out is its source", ("history", "h.parquet", "--start", "2024-01-02", "--end", "2024-01-03",
                                         "--out", "h.parquet"), ("h.parquet", "--out", "is the input", "SOURCE"),
         lambda d: (history_case(d), pd.read_csv(d / "history.csv").to_parquet(d / "h.parquet"))),
    Case("forecast backtest --out is a file",
         ("forecast", "backtest", "correctors", "--scenario", "sc.toml", "--out", "sc.toml"),
         ("sc.toml", "--out", "is a file")),
    Case("forecast fit --out is a file",
         ("forecast", "fit", "load", "--history", "history.csv", "--house", "house.toml", "--out", "house.toml"),
         ("house.toml", "--out", "is a file"), history_case),
    Case("emulate --out is a file", ("emulate", "sc.toml", *MQTT, "--out", "sc.toml"), ("sc.toml", "--out", "is a file")),
    Case("live --emulate --out is a file", ("live", "--emulate", "sc.toml", *MQTT, "--out", "sc.toml"),
         ("sc.toml", "--out", "is a file")),
    Case("step_minutes = 7", ("simulate", "sc.toml"), ("sc.toml", "step_minutes", "does not divide the day"),
         lambda d: (good_case(d), replace_in(d, "sc.toml", "step_minutes = 15", "step_minutes = 7"))),
    Case("days not a whole number of steps", ("simulate", "sc.toml"), ("sc.toml", "days", "whole number"),
         lambda d: (good_case(d), replace_in(d, "sc.toml", "days = 1", "days = 0.3"))),
    Case("--step-minutes 7", ("calibrate", "--history", "history.csv", "--out", "out", "--step-minutes", "7"),
         ("command line", "--step-minutes", "divides the day"), history_case),
    Case("weather CSV with a time given twice", ("simulate", "sc.toml"), ("weather.csv", "time", "more than once"),
         lambda d: (good_case(d), duplicate_time(d, "weather.csv"))),
    Case("prices CSV with a time given twice", ("simulate", "sc.toml"), ("prices.csv", "time", "more than once"),
         lambda d: (good_case(d), prices_csv(d), duplicate_time(d, "prices.csv"))),
    Case("weather CSV with an unreadable time", ("simulate", "sc.toml"), ("weather.csv", "time", "row 7", "ISO 8601"),
         lambda d: (good_case(d), replace_in(d, "weather.csv", "2024-01-09T05:00:00Z", "5 o'clock"))),
    Case("history --end before --start", ("history", "history.csv", "--start", "2024-01-05", "--end", "2024-01-02",
                                          "--out", "out/h.parquet"), ("command line", "--end", "not after --start"),
         history_case),
    Case("history range outside the data", ("history", "history.csv", "--start", "2025-01-05", "--end", "2025-01-06",
                                            "--out", "out/h.parquet"), ("history.csv", "--start/--end", "covers"),
         history_case),
    Case("history with an unreadable --start", ("history", "history.csv", "--start", "soon", "--end", "2025-01-06",
                                                "--out", "out/h.parquet"), ("command line", "--start", "ISO 8601"),
         history_case),
    Case("demo --days 0", ("demo", "--days", "0", "--out", "out"), ("command line", "--days")),
    Case("demo --days 0.3", ("demo", "--days", "0.3", "--out", "out"), ("command line", "--days", "15 minutes")),
    Case("live --config with --emulate", ("live", "--config", "live.toml", "--emulate", "sc.toml"),
         ("command line", "--emulate", "not both"), live_config, absent=("belongs to",)),
    Case("live --config with --mqtt", ("live", "--config", "live.toml", *MQTT), ("command line", "--mqtt", "[mqtt]"),
         live_config),
    Case("emulate: no broker", ("emulate", "sc.toml", *MQTT, "--modbus-port", "0", "--out", "out"),
         ("command line", "--mqtt", "127.0.0.1:1"), code=3),
    Case("live --emulate: no broker", ("live", "--emulate", "sc.toml", *MQTT, "--out", "out"),
         ("command line", "--mqtt", "127.0.0.1:1"), code=3),
    Case("live --config: no broker", ("live", "--config", "live.toml", "--hours", "0.1"),
         ("live.toml", "mqtt", "127.0.0.1:1"), live_config, code=3, log=True,
         logs=("events.jsonl", "state/state.lock")),
    # the other commands' bad input (tested in their own files too), here through the entry point
    Case("emulate to a broker that is not this machine", ("emulate", "sc.toml", "--mqtt", "192.0.2.7:1883"),
         ("command line", "--mqtt", "192.0.2.7 is not this machine", "--allow-remote-broker")),
    Case("live --emulate to a broker that is not this machine", ("live", "--emulate", "sc.toml", "--mqtt",
                                                                  "192.0.2.7:1883"),
         ("command line", "--mqtt", "not this machine")),
    Case("live config: port out of range", ("live", "--config", "live.toml"), ("live.toml", "mqtt.port", "65535"),
         lambda d: live_config(d, port=70000)),
    Case("live config: a comfort band upside down", ("live", "--config", "live.toml"),
         ("live.toml", "comfort", "low = 25.5 °C must be below high = 24 °C"),
         lambda d: (live_config(d), replace_in(d, "live.toml", "[forecast]", "[comfort]\nlow = 25.5\nhigh = 24\n[forecast]"))),
    Case("scenario: a room's night band upside down", ("simulate", "sc.toml"),
         ("sc.toml", "comfort.rooms.a", "night_low", "below night_high"),
         lambda d: (good_case(d), write_scenario(d, extra="[comfort.rooms.a]\nlow = 20\nhigh = 23\nnight_low = 24"))),
    Case("live config: a deadline longer than the step", ("live", "--config", "live.toml"),
         ("live.toml", "deadline_seconds = 900", "shorter than the control step"),
         lambda d: (live_config(d), replace_in(d, "live.toml", "[mqtt]", "deadline_seconds = 900\n[mqtt]"))),
    Case("--mqtt without a port number", ("emulate", "sc.toml", "--mqtt", "localhost:http"),
         ("command line", "--mqtt", "not a number")),
    Case("emulate --device-id 300", ("emulate", "sc.toml", *MQTT, "--device-id", "300"),
         ("command line", "--device-id", "247")),
    Case("emulate --hours longer than the scenario", ("emulate", "sc.toml", *MQTT, "--hours", "30"),
         ("command line", "--hours", "longer than the scenario")),
    Case("calibrate --train-fraction 2", ("calibrate", "--history", "history.csv", "--out", "out",
                                          "--train-fraction", "2"), ("command line", "--train-fraction"), history_case),
    Case("calibrate --joint -3", ("calibrate", "--history", "history.csv", "--out", "out", "--joint", "-3"),
         ("command line", "--joint", "between 0"), history_case),
    Case("calibrate: history file missing", ("calibrate", "--history", "nope.csv", "--out", "out"),
         ("nope.csv", "not found")),
    Case("predict --hours 0", (*PREDICT[:-1], "0", "--out", "out/p.parquet"), ("command line", "--hours"), history_case),
    Case("forecast backtest: an unknown household", ("forecast", "backtest", "load", "--household", "9", "--data", ".",
                                                     "--out", "out"), ("command line", "--household", "1–6")),
    Case("forecast backtest: no data folder", ("forecast", "backtest", "load", "--data", "nowhere", "--out", "out"),
         ("nowhere", "--data", "not found")),
    Case("models drift: residuals file missing", ("models", "--registry", "reg", "drift", "load", "--residuals",
                                                  "nope.csv"), ("nope.csv", "file not found")),
    # issue 14: the reviewer's findings
    Case("bench --controllers ''", ("bench", "sc.toml", "--controllers", "", "--out", "out"),
         ("command line", "--controllers", "no controller named", "oracle")),
    Case("history: an InfluxDB URL with a port that is no number",
         ("history", "influx://127.0.0.1:abc/loxone", "--start", "2024-01-01", "--end", "2024-01-02", "--out", "h.parquet"),
         ("command line: SOURCE:", "port 'abc'")),
    Case("history: influx2 without ?org= blames SOURCE", ("history", "influx2://127.0.0.1:8086", "--start", "2024-01-01",
                                                          "--end", "2024-01-02", "--out", "h.parquet"),
         ("command line: SOURCE:", "?org=ORG", "influx2://HOST:PORT?org=ORG"), absent=("--history",)),
    Case("history: influx2 with a bucket in the URL", ("history", "influx2://127.0.0.1:8086/home?org=me", "--start",
                                                       "2024-01-01", "--end", "2024-01-02", "--out", "h.parquet"),
         ("command line: SOURCE:", "no bucket", "influx2://HOST:PORT?org=ORG")),
    Case("calibrate: --history URL with a port out of range", ("calibrate", "--history", "influx://h:70000/db", "--out",
                                                               "out"), ("command line: --history:", "70000")),
    Case("live --emulate --influx with a port that is no number",
         ("live", "--emulate", "sc.toml", *MQTT, "--influx", "influx://x:abc/db", "--out", "lv"),
         ("command line: --influx:", "port 'abc'")),
    Case("live --emulate --influx garbage leaves no folder",
         ("live", "--emulate", "sc.toml", *MQTT, "--influx", "garbage", "--out", "lv3"),
         ("command line: --influx:", "'garbage'", "influx://HOST:PORT[/DATABASE]"), absent=("InfluxDB log URL",)),
    Case("simulate --out where nothing can be created", ("simulate", "sc.toml", "--out", "/proc/pems-x"),
         ("/proc/pems-x", "--out", "cannot write into /proc")),
    Case("unknown house in a scenario", ("simulate", "sc.toml"),
         ("sc.toml: house: unknown house 'referense'", "reference"),
         lambda d: (good_case(d), replace_in(d, "sc.toml", '"house.toml"', '"referense"'))),
    Case("house file of a scenario missing", ("simulate", "sc.toml"), ("sc.toml: house:", "no-house.toml", "not found"),
         lambda d: (good_case(d), replace_in(d, "sc.toml", '"house.toml"', '"no-house.toml"'))),
    Case("unknown weather in a scenario", ("simulate", "sc.toml"),
         ("sc.toml: weather: unknown weather set 'amsterdam'", "amsterdam-iwec"),
         lambda d: (good_case(d), replace_in(d, "sc.toml", '"weather.csv"', '"amsterdam"'))),
    Case("weather file of a scenario missing", ("simulate", "sc.toml"), ("sc.toml: weather:", "w2.csv: file not found"),
         lambda d: (good_case(d), replace_in(d, "sc.toml", '"weather.csv"', '"w2.csv"'))),
    Case("unknown prices in a scenario", ("simulate", "sc.toml"), ("sc.toml: prices:", "'tworate'", "two-rate"),
         lambda d: (good_case(d), replace_in(d, "sc.toml", '"two-rate"', '"tworate"'))),
    Case("--house unknown", ("calibrate", "--history", "history.csv", "--house", "referense", "--out", "out"),
         ("command line: --house: unknown house 'referense'", "reference"), history_case),
    Case("live --config: a forecast file missing", ("live", "--config", "live.toml", "--hours", "0.1"),
         ("live.toml: forecast.weather:", "fc.csv: file not found"),
         lambda d: (live_config(d), replace_in(d, "live.toml", '"greensboro-tmy3"', '"fc.csv"'))),
    Case("live --config: built-in prices that ended before today", ("live", "--config", "live.toml", "--hours", "0.1"),
         ("live.toml: forecast.prices:", "'cz-spot-2024'", "2024-12-31", "does not move with the calendar"),
         lambda d: (live_config(d), replace_in(d, "live.toml", '"two-rate"', '"cz-spot-2024"'))),
    Case("live --config without [forecast]", ("live", "--config", "live.toml", "--hours", "0.1"),
         ("live.toml: forecast: required key is missing",),
         lambda d: (live_config(d), replace_in(d, "live.toml", '[forecast]\nweather = "greensboro-tmy3"\nload = "h25"\n'
                                                              'prices = "two-rate"\n', ""))),
    Case("live --config: an InfluxDB URL that cannot be read", ("live", "--config", "live.toml", "--hours", "0.1"),
         ("live.toml: influx.url:", "'garbage'"),
         lambda d: (live_config(d), (d / "live.toml").write_text((d / "live.toml").read_text(encoding="utf-8")
                                                                 + '[influx]\nurl = "garbage"\n', encoding="utf-8"))),
    Case("predict --start between model steps", (*PREDICT[:5], "--start", "2024-01-08T00:07Z", "--hours", "24",
                                                 "--out", "p.parquet"),
         ("command line: --start:", "not on a 15-minute model step", ":00, :15, :30 or :45"), history_case),
    Case("forecast backtest: the data folder lacks the dataset",
         ("forecast", "backtest", "price", "--data", ".", "--out", "out"),
         ("--data", "dayahead-prices/", "ENTSO-E day-ahead prices", "not shipped")),
]

GOOD = Case("good path", ("simulate", "sc.toml", "--out", "out"), ())
GOOD_CALIBRATE = Case("good calibration", ("calibrate", "--history", "history.csv", "--house", "house.toml",
                                           "--out", "out"), (), history_case)

#: The installed console script beside this interpreter (``make install``).
PEMS = Path(sys.executable).with_name("pems")


def _env(xdg: Path | None = None) -> dict[str, str]:
    """The commands' environment; with ``xdg``, state and data folders of their own there (cases run at
    once: two live loops on the default state folder would, rightly, refuse each other). The cache stays
    shared: a fresh one makes matplotlib build its font cache and say so."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1", COLUMNS="200")
    env.pop("PYTHONWARNINGS", None)
    if xdg is not None:
        env.update(XDG_STATE_HOME=str(xdg / "state"), XDG_DATA_HOME=str(xdg / "data"))
    return env


def _folders(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_dir()}


def _digest(d: Path) -> dict[str, str]:
    """Every file of a case's folder and its content hash: nothing given may change."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


@dataclass(frozen=True)
class Ran:
    cwd: Path
    returncode: int
    stdout: str
    stderr: str
    before: dict[str, str]  # the folder's files before the run, and their hashes
    folders: set[str] = frozenset()  # the folder's folders before the run


def _selected(request) -> set[str] | None:
    """The names of the cases this session runs (``-k`` may pick a few); ``None``: the good paths too."""
    names: set[str] = set()
    for item in request.session.items:
        if item.module is not request.module or "runs" not in getattr(item, "fixturenames", ()):
            continue
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        if case is None:
            return None  # a good-path test is selected: run everything it may need
        names.add(case.name)
    return names


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict[str, Ran]:
    """Every selected case (and the good paths) as a subprocess of the entry point, as many at once
    as there are CPUs."""
    if not PEMS.is_file():
        pytest.skip(f"the pems entry point is not installed beside {sys.executable} (make install)")
    todo = []
    chosen = _selected(request)
    waiting = [c for c in CASES if c.code == 3]  # the longest first
    for i, case in enumerate([*waiting, GOOD, GOOD_CALIBRATE, *[c for c in CASES if c.code != 3]]):
        if chosen is not None and case.name not in chosen:
            continue
        d = tmp_path_factory.mktemp(f"cli{i}")
        case.setup(d)
        todo.append((case, d, (_digest(d), _folders(d)), tmp_path_factory.mktemp(f"xdg{i}")))
    width = max(1, min(len(todo), os.cpu_count() or 1))
    out: dict[str, Ran] = {}
    running: list[tuple[Case, Path, dict, subprocess.Popen]] = []
    while todo or running:
        while todo and len(running) < width:
            case, d, before, xdg = todo.pop(0)
            running.append((case, d, before, subprocess.Popen([str(PEMS), *case.args], cwd=d, env=_env(xdg),
                                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                              text=True)))
        case, d, before, p = running.pop(0)
        so, se = p.communicate(timeout=300)
        out[case.name] = Ran(d, p.returncode, so, se, *before)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_with_one_clear_message(runs, case):
    r = runs[case.name]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert r.returncode == case.code, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert lines and lines[-1].startswith("pems: error: "), r.stderr
    if not case.log:  # the command's own lines only: no library warnings, no blank lines
        assert all(ln.startswith(("pems: error: ", "pems: warning: ")) for ln in lines), r.stderr
    for s in case.expect:
        assert s in r.stderr, f"{s!r} not in {r.stderr!r}"
    for s in case.absent:
        assert s not in r.stderr, f"{s!r} in {r.stderr!r}"
    after = _digest(r.cwd)
    assert {f: h for f, h in after.items() if f in r.before} == r.before  # nothing given was changed
    assert not sorted(set(after) - set(r.before) - set(case.logs))  # nothing was written
    allowed = {str(q) for f in case.logs for q in Path(f).parents if str(q) != "."}
    assert not sorted(_folders(r.cwd) - r.folders - allowed)  # no folder left behind, not even an empty one


@pytest.mark.slow
def test_a_calibration_prints_nothing_on_stderr(runs):
    r = runs[GOOD_CALIBRATE.name]
    assert r.returncode == 0, r.stderr
    # no blank lines, no matplotlib or numpy warnings: only our own verdict on the fit (this history is
    # sinusoids, not physics: the calibration says it is not a good fit, room by room)
    lines = r.stderr.splitlines()
    assert lines and lines[0].startswith("warning: not a good fit: "), r.stderr
    assert all(ln.startswith(("  a: ", "  b: ")) for ln in lines[1:]), r.stderr
    assert (r.cwd / "out" / "house.toml").is_file()


@pytest.mark.slow
def test_simulate_tiny_scenario_writes_its_outputs(runs):
    r = runs[GOOD.name]
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no blank lines, no library warnings
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


def test_a_reader_that_stops_reading_is_no_error():
    """``pems list | head -1``: the pipe closes before pems has written; no traceback, exit 0."""
    r, w = os.pipe()
    os.close(r)  # nobody will read: the first write fails with EPIPE
    try:
        res = subprocess.run([str(PEMS), "list"], stdout=w, stderr=subprocess.PIPE, text=True, env=_env(),
                             timeout=120)
    finally:
        os.close(w)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr


def test_a_disk_that_refuses_an_output_is_one_line_and_a_bug_is_a_traceback(tmp_path, monkeypatch, capsys):
    """An OSError writing a checked output (disk full, folder gone) ends with one line naming the file
    and the flag, exit code 2, and no empty folder left; any other OSError stays a bug (traceback)."""
    import pems.scenarios.outputs as outputs
    from pems.cli import main

    good_case(tmp_path)
    monkeypatch.chdir(tmp_path)

    def full(result, out, **kw):
        raise OSError(28, "No space left on device", str(out / "trajectory.parquet"))

    monkeypatch.setattr(outputs, "write_run", full)
    assert main(["simulate", "sc.toml", "--out", "out/run"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "pems: error: out/run/trajectory.parquet: --out: cannot be written (No space left on device)"
    assert not (tmp_path / "out").exists()  # the folders it made for nothing are gone

    def bug(result, out, **kw):
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/a-data-file-of-pems.csv")

    monkeypatch.setattr(outputs, "write_run", bug)
    with pytest.raises(FileNotFoundError):
        main(["simulate", "sc.toml", "--out", "out/run"])


def test_version_names_pems_and_the_solvers_from_one_source(capsys):
    """``pems --version``: PEMS's version (the package's metadata, from pems/__init__.py alone), then
    the solvers and libraries the numbers depend on."""
    from importlib.metadata import version

    from pems import __version__
    from pems.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["pems"] == __version__ == version("pems")
    assert lines["casadi"] == version("casadi") and lines["highspy"] == version("highspy")
    assert lines["ipopt"].startswith("3.") and "do-mpc" in lines and "pvlib" in lines


def test_log_level_and_json_lines(tmp_path, capsys):
    """``--log-level`` and ``--log-json``: the command's log, one JSON object a line, at the level asked."""
    import logging

    from pems.cli import main

    assert main(["--log-level", "debug", "--log-json", "models", "--registry", str(tmp_path), "list"]) == 0
    capsys.readouterr()
    logging.getLogger("pems.test").debug("the %s", "detail")
    rec = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert rec["level"] == "debug" and rec["logger"] == "pems.test" and rec["message"] == "the detail"
    assert pd.Timestamp(rec["time"]).tzinfo is not None
    assert main(["models", "--registry", str(tmp_path), "list"]) == 0  # without them: warnings, one line each
    capsys.readouterr()
    logging.getLogger("pems.test").info("not shown")
    logging.getLogger("pems.test").warning("shown")
    assert capsys.readouterr().err == "pems: warning: shown\n"

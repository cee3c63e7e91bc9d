"""``pems replay``: the home's history as a scenario on its twin, against what it paid."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import BATTERY_HOUSE, write_scenario  # noqa: E402

from pems.cli import main  # noqa: E402


def twin_history(folder: Path, days: float = 8.0) -> tuple[Path, pd.DataFrame]:
    """The twin's own simulated history of the home's own logic (rule-based), logged as a home logs it:
    the canonical history columns, written as a CSV; and the run's trajectory."""
    from pems.scenarios.runner import prepare, run
    from pems.scenarios.spec import load_scenario

    # the weather as a home logs it (outdoor temperature and global irradiance: the twin splits the
    # irradiance as it does for any such history), taken from a real TMY3 year
    tmy = prepare(load_scenario(write_scenario(folder, BATTERY_HOUSE, weather="greensboro-tmy3", load="h25",
                                               prices="two-rate", days=days))).inputs
    tmy[["T_out", "ghi"]].rename_axis("time").reset_index().to_csv(folder / "weather.csv", index=False)
    sc = write_scenario(folder, BATTERY_HOUSE, weather="weather.csv", load="h25", prices="two-rate", days=days)
    prep = prepare(load_scenario(sc))
    r = run(prep, "rule-based")
    t, inp = r.trajectory, prep.inputs.iloc[: prep.n_steps]
    h = pd.DataFrame(index=t.index)
    for c in ("T_out", "ghi", "dni", "dhi"):
        h[c] = inp[c].to_numpy()
    for c in t.columns:
        if c.startswith(("T_room__", "P_heat__")) and "cmd" not in c:
            h[c] = t[c]
    for c in ("P_pv", "P_grid", "P_bat", "price_import", "price_export"):
        h[c] = t[c]
    h["P_load"] = t["P_load_household"] if "P_load_household" in t else t["P_load"]
    h["soc"] = t["soc"]
    path = folder / "history.csv"
    h.rename_axis("time").reset_index().to_csv(path, index=False)
    return path, r.trajectory


@pytest.mark.slow
def test_replaying_the_twins_own_history_gives_back_its_cost_and_the_oracle_is_a_bound(tmp_path, capsys):
    hist, traj = twin_history(tmp_path)
    out = tmp_path / "replay"
    rc = main(["replay", "--history", str(hist), "--house", str(tmp_path / "house.toml"),
               "--controllers", "mpc,oracle", "--forecast", "perfect", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    rep = json.loads((out / "replay.json").read_text())
    paid = rep["paid"]["cost"]
    # the first day warms the twin's state up; the bill of the week after, as the run logged it
    after = traj[traj.index >= traj.index[0] + pd.Timedelta(days=1)]
    g = after["P_grid"]
    bill = float(((g.clip(lower=0) * after["price_import"] - (-g).clip(lower=0) * after["price_export"]) / 4000).sum())
    assert rep["steps"] == len(after) and paid == pytest.approx(bill, rel=1e-9)
    rows = {r["controller"]: r for r in rep["controllers"]}
    assert set(rows) == {"rule-based", "mpc", "oracle"}
    own = rows["rule-based"]
    assert abs(own["cost"] - paid) <= 0.005 * abs(paid), (own["cost"], paid)  # the twin's own logic: the bill
    assert own["heating_kWh"] == pytest.approx(rep["paid"]["heating_kWh"], rel=0.01)
    frame = pd.read_csv(out / "kpis.csv")
    settled = frame["cost"] + frame["day_after_cost"]
    oracle = float(settled[frame.controller == "oracle"].iloc[0])
    assert all(oracle <= s + 1e-6 for s in settled)  # the bound is never beaten
    assert rows["mpc"]["saving_vs_own_logic"] > 0
    assert "the home paid" in said and "twin's bias" in said
    assert "Against what the home paid" in (out / "report.html").read_text()


def test_a_history_without_what_a_replay_needs_is_refused_with_the_column_named(tmp_path, capsys):
    from helpers import BATTERY_HOUSE as H  # noqa: F401
    import tomli_w

    (tmp_path / "house.toml").write_text(tomli_w.dumps(BATTERY_HOUSE), encoding="utf-8")
    idx = pd.date_range("2024-01-10", periods=96, freq="15min", tz="UTC")
    h = pd.DataFrame({"time": idx, "T_room__a": 21.0, "T_room__b": 20.5, "T_out": 3.0, "ghi": 0.0})
    h.to_csv(tmp_path / "h.csv", index=False)
    args = ["replay", "--history", str(tmp_path / "h.csv"), "--house", str(tmp_path / "house.toml"),
            "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "P_load" in err and "h.csv" in err and "Traceback" not in err
    h["P_load"] = 300.0
    h.to_csv(tmp_path / "h.csv", index=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "price_import" in err and "--prices" in err
    h.loc[10:40, "T_out"] = np.nan  # a gap of 31 steps: not bridged
    h.to_csv(tmp_path / "h.csv", index=False)
    assert main([*args, "--prices", "two-rate"]) == 2
    err = capsys.readouterr().err
    assert "T_out" in err and "gap" in err


def _archive_file(path: Path, hist: Path, dT: float = 0.0, sky: float = 1.0, keep: slice = slice(None)) -> pd.DataFrame:
    """An archive of weather forecasts made from a history: its temperature shifted by ``dT`` [K] and its
    irradiance scaled by ``sky``, stamped at the middle of each step (point samples), rows ``keep``."""
    h = pd.read_csv(hist, parse_dates=["time"]).set_index("time")
    a = pd.DataFrame({"T_out": h["T_out"] + dT, "ghi": h["ghi"] * sky, "dni": h["dni"] * sky, "dhi": h["dhi"] * sky})
    a.index = a.index + pd.Timedelta(minutes=7.5)
    a = a.iloc[keep]
    a.rename_axis("time").reset_index().to_csv(path, index=False)
    return a


def test_the_controllers_plan_on_archived_forecasts_where_the_history_has_them(tmp_path, capsys):
    """``--archive``: the weather a controller plans on is the archive's (a forecast 2 K too warm and half
    the sun gives a forecast 2 K too warm and about half the PV), the load the day before's, the step
    now the measurement; without an archive (or with one covering too little) a forecast model stands
    in and the run says why."""
    from pems.calibration.history import load_history
    from pems.scenarios.forecast import forecast_provider
    from pems.scenarios.replay import Archive, replay_prepared
    from pems.scenarios.spec import ForecastSpec
    from pems.twin.house import load_house
    from pems.twin.tables import read_time_csv

    hist, _ = twin_history(tmp_path, days=4.0)
    house = load_house(tmp_path / "house.toml")
    arch = tmp_path / "archive.csv"
    _archive_file(arch, hist, dT=2.0, sky=0.5)
    h = load_history(hist, house, pd.Timedelta(minutes=15))
    rep = replay_prepared(h, house, ForecastSpec(model="archived"),
                          archive=Archive(read_time_csv(arch, ("T_out", "ghi"), ("dni", "dhi")), str(arch)))
    prep = rep.prep
    fp = forecast_provider(prep.scenario, prep)
    names = prep.model.sym.d.names
    D = prep.inputs[list(names)].to_numpy()
    it, ipv, iload = names.index("T_out"), names.index("P_pv"), names.index("P_load")
    k = 96  # a day in: yesterday's load is in the replay
    f = fp(k)
    h_ = len(f)
    np.testing.assert_allclose(f.d[0], D[k])  # now: measured
    assert np.mean(f.d[1:, it] - D[k + 1:k + h_, it]) == pytest.approx(2.0, abs=0.05)
    pv_f, pv_t = f.d[1:, ipv].sum(), D[k + 1:k + h_, ipv].sum()
    assert pv_t > 1000 and 0.4 * pv_t <= pv_f <= 0.6 * pv_t, (pv_f, pv_t)
    np.testing.assert_allclose(f.d[1:96, iload], D[k + 1 - 96:k + 96 - 96, iload])  # the load a day before
    assert "archived forecasts from" in rep.forecast_note

    out = tmp_path / "out"
    base = ["replay", "--history", str(hist), "--house", str(tmp_path / "house.toml"), "--controllers", "rule-based"]
    assert main([*base, "--archive", str(arch), "--out", str(out / "a")]) == 0
    assert "plan on archived forecasts from" in capsys.readouterr().out
    assert main([*base, "--out", str(out / "b")]) == 0  # auto, no archive: noisy, and why
    said = capsys.readouterr().out
    assert "noisy forecasts" in said and "no archived forecasts: a file history has none" in said
    _archive_file(arch, hist, keep=slice(0, 150))  # a day and a half of four
    assert main([*base, "--archive", str(arch), "--forecast", "archived", "--out", str(out / "c")]) == 2
    err = capsys.readouterr().err
    assert "archive.csv" in err and "cover" in err and "Traceback" not in err
    assert main([*base, "--archive", str(arch), "--out", str(out / "d")]) == 0
    assert "no archived forecasts: they cover" in capsys.readouterr().out


@pytest.mark.service
def test_archived_forecasts_are_read_from_the_homes_influxdb(tmp_path, capsys):
    """The real home's layout: Open-Meteo's hourly forecast in measurement ``weather_forecast`` of its
    bucket (radiation the mean of the hour before its stamp), read through the ``loxone-growatt``
    mapping's ``[[forecast]]`` tables; a database without them is refused when they were asked for."""
    import requests
    from services import influxdb1

    hist, _ = twin_history(tmp_path, days=3.0)
    h = pd.read_csv(hist, parse_dates=["time"]).set_index("time")
    hourly = h[["T_out", "ghi", "dni", "dhi"]].resample("1h").mean()
    lines = []
    for t, row in hourly.iterrows():  # stamped at the hour's end, as Open-Meteo's radiation is
        stamp = t + pd.Timedelta(hours=1)
        lines.append(f"weather_forecast temperature_2m={row['T_out'] + 3.0:.3f},shortwave_radiation={row['ghi']:.2f},"
                     f"direct_normal_irradiance={row['dni']:.2f},diffuse_radiation={row['dhi']:.2f} {stamp.value}")
    base = ["replay", "--history", str(hist), "--house", str(tmp_path / "house.toml"), "--controllers", "rule-based"]
    with influxdb1(tmp_path) as url:
        requests.post(f"{url}/query", data={"q": 'CREATE DATABASE "home"'}, timeout=10).raise_for_status()
        r = requests.post(f"{url}/write", params={"db": "home", "precision": "ns"}, data="\n".join(lines).encode(),
                          timeout=10)
        assert r.status_code == 204, r.text
        src = url.replace("http", "influx") + "/home"
        assert main([*base, "--archive", src, "--forecast", "archived", "--out", str(tmp_path / "a")]) == 0
        said = capsys.readouterr().out
        assert "archived forecasts from influx://" in said and "weather_forecast" in said
        rep = json.loads((tmp_path / "a" / "replay.json").read_text())
        assert rep["forecast"].startswith("archived forecasts")
        requests.post(f"{url}/query", data={"q": 'CREATE DATABASE "empty"'}, timeout=10).raise_for_status()
        empty = url.replace("http", "influx") + "/empty"
        assert main([*base, "--archive", empty, "--forecast", "archived", "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert "/empty" in err and "cover 0%" in err and "Traceback" not in err


def test_a_scenario_file_cannot_ask_for_archived_forecasts(tmp_path, capsys):
    sc = write_scenario(tmp_path, BATTERY_HOUSE, weather="greensboro-tmy3", load="h25", forecast={"model": "archived"})
    assert main(["simulate", str(sc), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "scenario.toml" in err and "forecast.model" in err and "pems replay" in err and "Traceback" not in err

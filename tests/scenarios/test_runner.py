"""The closed loop, KPIs and outputs: the contract of docs/reference (history.md, kpis.md), checked independently."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from helpers import shared_check
from pems.scenarios.kpis import compute_kpis
from pems.scenarios.outputs import write_run
from pems.scenarios.runner import prepare, run
from pems.scenarios.spec import builtin_scenarios, load_scenario


@pytest.fixture(scope="module")
def winter_run():
    prep = prepare(load_scenario("winter-week"))
    return prep, run(prep, "rule-based")


def test_trajectory_has_design_columns_and_closes_the_balance(winter_run):
    prep, r = winter_run
    tr = r.trajectory
    assert len(tr) == 7 * 96 and tr.index.tz is not None
    for room in prep.model.rooms:
        for p in ("T_room", "P_heat", "P_heat_cmd", "T_set_low", "T_set_high"):
            assert f"{p}__{room}" in tr
    heat = tr[[f"P_heat__{room}" for room in prep.model.rooms]].sum(axis=1)
    resid = tr["P_grid"] - (tr["P_load"] + heat + tr["P_bat"] - tr["P_pv"] + tr["P_loss"])
    assert resid.abs().max() < 1e-6
    bat = prep.model.house.battery
    assert tr["soc_end"].between(bat.soc_min - 1e-9, bat.soc_max + 1e-9).all()


def test_kpis_recomputed_by_hand(winter_run):
    _, r = winter_run
    tr, k = r.trajectory, r.kpis
    dt = 0.25
    imp = tr["P_grid"].clip(lower=0)
    exp_ = (-tr["P_grid"]).clip(lower=0)
    assert k["cost"] == pytest.approx(((imp * tr["price_import"] - exp_ * tr["price_export"]) * dt / 1000).sum())
    assert k["energy_import_kWh"] == pytest.approx(imp.sum() * dt / 1000)
    assert k["peak_import_kW"] == pytest.approx(imp.max() / 1000)
    assert 0 <= k["self_consumption"] <= 1 and 0 <= k["self_sufficiency"] <= 1
    # the plain thermostats leave the rooms below their band each morning while the slabs warm up
    # (the underfloor lag), for a few K·h per room a week; never for whole days
    assert 2.0 < k["discomfort_Kh_per_room"] < 30.0
    assert k["heating_kWh"] > 300  # a cold week in a 190 m² house


def test_discomfort_kpi_on_a_constructed_trajectory():
    idx = pd.date_range("2024-01-01", periods=4, freq="15min", tz="UTC")
    tr = pd.DataFrame({"T_room__a": [19.0, 20.0, 25.0, 21.0], "T_set_low__a": 20.0, "T_set_high__a": 24.0,
                       "P_heat__a": [1000.0, 0, 0, 0], "P_grid": [2000.0, -1000.0, 0, 0], "P_pv": [0, 1500.0, 0, 0],
                       "P_load": 500.0, "P_bat": 0.0, "P_loss": 0.0, "price_import": 0.4, "price_export": 0.1},
                      index=idx)
    k = compute_kpis(tr, ["a"], None)
    assert k["discomfort_Kh"] == pytest.approx((1.0 + 1.0) * 0.25)
    assert k["cost"] == pytest.approx(2.0 * 0.25 * 0.4 - 1.0 * 0.25 * 0.1)
    assert k["self_consumption"] == pytest.approx(500 / 1500)


def test_outputs_pass_the_shared_independent_check(winter_run, tmp_path):
    check = shared_check("check_trajectory.py")
    _, r = winter_run
    write_run(r, tmp_path)
    kp = json.loads((tmp_path / "kpis.json").read_text())
    assert kp["cost"] == pytest.approx(r.kpis["cost"])
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html  # offline, self-contained
    res = subprocess.run([sys.executable, str(check), str(tmp_path), "17"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_builtin_scenario_loads():
    names = builtin_scenarios()
    assert {"winter-week", "cold-snap", "shoulder-week", "summer-week", "year"} <= set(names)
    for n in names:
        sc = load_scenario(n)
        assert sc.n_steps > 0 and sc.house.rooms


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cold-snap", "shoulder-week", "summer-week"])
def test_builtin_scenarios_run_and_make_sense(name):
    prep = prepare(load_scenario(name))
    r = run(prep, "rule-based")
    k = r.kpis
    if name == "summer-week":
        assert k["heating_kWh"] == 0.0 and k["pv_kWh"] > 200 and k["energy_export_kWh"] > 0
    elif name == "shoulder-week":
        assert k["heating_kWh"] > 50 and k["energy_export_kWh"] > 0  # heating and PV surplus
    else:
        assert k["heating_kWh"] / 4 > 100  # > 100 kWh a day in grey frost (daily means to −3.4 °C)


def test_forecast_noise_is_reproducible_and_zero_now():
    from pems.scenarios.forecast import ForecastProvider
    from pems.scenarios.spec import ForecastSpec

    prep = prepare(load_scenario("cold-snap"))
    spec = ForecastSpec(model="noisy", seed=7)
    make = lambda: ForecastProvider(spec, prep.inputs, prep.model.sym.d.names, prep.comfort_low,  # noqa: E731
                                    prep.comfort_high, 192, pd.Timedelta(minutes=15))
    a, b = make()(10), make()(10)
    truth = prep.inputs[list(prep.model.sym.d.names)].to_numpy()[10:202]
    np.testing.assert_array_equal(a.d, b.d)
    np.testing.assert_allclose(a.d[0], truth[0])  # lead 0 is a measurement, not a forecast
    err = np.abs(a.column("T_out") - truth[:, 0])
    assert err[-48:].mean() > err[:8].mean()  # errors grow with lead



def test_persistence_forecast_repeats_yesterday():
    from pems.scenarios.forecast import ForecastProvider
    from pems.scenarios.spec import ForecastSpec

    prep = prepare(load_scenario("cold-snap"))
    fp = ForecastProvider(ForecastSpec(model="persistence"), prep.inputs, prep.model.sym.d.names,
                          prep.comfort_low, prep.comfort_high, 192, pd.Timedelta(minutes=15))
    truth = prep.inputs[list(prep.model.sym.d.names)].to_numpy()
    k = 150  # a day and a half in: yesterday exists for every lead
    fc = fp(k)
    np.testing.assert_allclose(fc.d[0], truth[k])
    np.testing.assert_allclose(fc.d[10], truth[k + 10 - 96])  # same time the day before
    np.testing.assert_allclose(fc.d[100], truth[k + 100 - 192])  # two days before: the latest seen
    np.testing.assert_allclose(fc.price_import, prep.inputs["price_import"].to_numpy()[k:k + 192])
    perfect = ForecastProvider(ForecastSpec(), prep.inputs, prep.model.sym.d.names, prep.comfort_low,
                               prep.comfort_high, 192, pd.Timedelta(minutes=15))(k)
    with pytest.raises(ValueError):
        perfect.d[0, 0] = 99.0  # perfect forecasts are read-only views of the run's data


@pytest.mark.slow
def test_bench_writes_kpis_csv_with_distance_to_the_oracle(tmp_path):
    from helpers import TWO_ROOMS, write_constant_inputs, write_scenario
    from pems.scenarios.bench import run_bench

    write_constant_inputs(tmp_path, "2024-01-10T00:00:00Z", 1.0, T_out=-3.0)
    path = write_scenario(tmp_path, TWO_ROOMS, start="2024-01-10T00:00:00Z", days=1.0, prices="two-rate")
    frame = run_bench([str(path)], ["rule-based", "oracle"], tmp_path / "out")
    csv = pd.read_csv(tmp_path / "out" / "kpis.csv")
    assert list(csv.columns[:2]) == ["scenario", "controller"] and len(csv) == 2
    for key in ("cost", "discomfort_Kh", "compute_s_per_step", "compute_s_per_step_max", "cost_gap_to_oracle"):
        assert key in csv.columns
    row = csv.set_index("controller")
    assert row.loc["oracle", "cost_gap_to_oracle"] == 0.0
    assert row.loc["rule-based", "cost_gap_to_oracle"] > 0.0  # the bound is below the thermostats
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "out" / "test" / "oracle" / "trajectory.parquet").exists()
    # the oracle plans once: its mean compute per step is that solve spread over the run's steps
    traj = pd.read_parquet(tmp_path / "out" / "test" / "oracle" / "trajectory.parquet")
    assert row.loc["oracle", "compute_s_mean"] == pytest.approx(traj["compute_s"].mean(), rel=1e-9)
    assert row.loc["oracle", "compute_s_mean"] >= row.loc["oracle", "compute_s_per_step_max"] / len(traj)
    assert row.loc["oracle", "compute_s_mean"] > 10 * row.loc["oracle", "compute_s_per_step"]
    assert frame.shape[0] == 2

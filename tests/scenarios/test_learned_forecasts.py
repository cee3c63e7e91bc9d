"""``[forecast] model = "learned"``: the controllers' PV and load come from forecasters learned on the
weeks before the start and issued at every step from the past alone."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from helpers import BATTERY_HOUSE, house_from, household_load_csv, shared_check, write_scenario
from pems.scenarios.forecast import forecast_provider
from pems.scenarios.runner import prepare
from pems.scenarios.spec import load_scenario


def scenario(folder, model: str, days: float = 2.0):
    household_load_csv(folder / "load.csv", house_from(BATTERY_HOUSE), "2023-11-15", "2024-01-20", seed=4)
    return load_scenario(write_scenario(folder, BATTERY_HOUSE, weather="greensboro-tmy3", load="load.csv",
                                        prices="two-rate", days=days,
                                        forecast={"model": model, "horizon_hours": 24, "learn_days": 42}))


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    sc = scenario(tmp_path_factory.mktemp("learned"), "learned")
    prep = prepare(sc)
    return sc, prep, forecast_provider(sc, prep)


def test_learned_load_beats_persistence_and_the_rest_is_the_truth(learned, tmp_path):
    sc, prep, fp = learned
    names = list(prep.model.sym.d.names)
    truth = prep.inputs[names].to_numpy()
    pers_sc = scenario(tmp_path, "persistence")
    pers = forecast_provider(pers_sc, prepare(pers_sc))
    li, pi = names.index("P_load"), names.index("P_pv")
    err_l, err_p = [], []
    for k in range(0, prep.n_steps, 8):
        f, p = fp(k), pers(k)
        h = len(f.index)
        err_l.append(np.abs(f.d[:, li] - truth[k:k + h, li]).mean())
        err_p.append(np.abs(p.d[:, li] - truth[k:k + h, li]).mean())
        # weather, window gains and prices: the truth (a perfect weather forecast)
        for c in ("T_out", *[c for c in names if c.startswith("I_sol__")]):
            np.testing.assert_allclose(f.d[:, names.index(c)], truth[k:k + h, names.index(c)])
        np.testing.assert_allclose(f.price_import, prep.inputs["price_import"].to_numpy()[k:k + h])
        # PV: zero without light, within the inverter's rating
        pv = f.d[:, pi]
        assert (pv >= 0).all() and pv.max() <= 5000.0 + 1e-6
        assert np.all(pv[prep.inputs["ghi"].to_numpy()[k:k + h] == 0] == 0)
    # a load with day-to-day and hour-to-hour noise: the learned median is the better day-ahead guess
    assert np.mean(err_l) < 0.95 * np.mean(err_p), (np.mean(err_l), np.mean(err_p))


def test_internal_gains_follow_the_learned_load(learned):
    from pems.twin.inputs import internal_gains

    sc, prep, fp = learned
    names = list(prep.model.sym.d.names)
    f = fp(30)
    want = internal_gains(sc.house, f.index + sc.step / 2, f.d[:, names.index("P_load")])
    for rid, q in want.items():
        np.testing.assert_allclose(f.d[:, names.index(f"Q_int__{rid}")], q, rtol=1e-12)


def test_a_learned_forecast_never_sees_the_future(learned):
    """Whatever happens from the issue on, the forecast issued then is the same."""
    sc, prep, fp = learned
    k = 50
    t = prep.inputs.index[k]
    before = fp(k).d.copy()
    table = fp.learned.table
    saved = table.copy()
    try:
        table.loc[table.index >= t, ["P_load", "P_pv"]] *= 3.0
        np.testing.assert_array_equal(fp(k).d, before)
    finally:
        fp.learned.table = saved


def test_learned_forecasts_need_history_before_the_start(tmp_path, capsys):
    from pems.cli import main

    household_load_csv(tmp_path / "load.csv", house_from(BATTERY_HOUSE), "2024-01-01", "2024-01-20")
    path = write_scenario(tmp_path, BATTERY_HOUSE, weather="greensboro-tmy3", load="load.csv", prices="two-rate",
                          days=1.0, forecast={"model": "learned", "learn_days": 42})
    assert main(["simulate", str(path), "--controller", "mpc", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "load.csv" in err and "Traceback" not in err


@pytest.mark.slow
def test_mpc_on_learned_forecasts_runs_a_day_that_passes_the_shared_check(tmp_path):
    from pems.scenarios.outputs import write_run
    from pems.scenarios.runner import run

    check = shared_check("check_trajectory.py")
    sc = scenario(tmp_path, "learned", days=1.0)
    r = run(prepare(sc), "mpc")
    write_run(r, tmp_path / "out")
    res = subprocess.run([sys.executable, str(check), str(tmp_path / "out"), "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert r.kpis["discomfort_Kh"] < 5.0

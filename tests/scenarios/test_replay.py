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

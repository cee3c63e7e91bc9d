"""``pems forecast backtest``: bad input ends with one line naming the key (exit 2); a run writes the
report, metrics and predictions and nothing else."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import shared_data
from pems.cli import main


def _one_error_line(capsys, key: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("pems: error:") and key in lines[0], err
    return lines[0]


def _synthetic_household(root, days: int = 75, n: int = 2) -> None:
    """A household CSV in the OPSD layout: cumulative kWh readings, one meter, a short gap."""
    rng = np.random.default_rng(7)
    t = pd.date_range("2024-01-01", periods=days * 24, freq="1h", tz="UTC")
    h = t.tz_convert("Europe/Berlin").hour.to_numpy()
    kwh = (0.15 + 0.5 * ((h >= 18) & (h < 22)) + 0.3 * ((h >= 6) & (h < 8))) * rng.lognormal(0, 0.3, len(t))
    reading = np.cumsum(kwh)
    reading[100:103] = np.nan
    folder = root / "households-konstanz"
    folder.mkdir(parents=True)
    pd.DataFrame({"utc_timestamp": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  f"DE_KN_residential{n}_grid_import": reading}).to_csv(folder / f"power_of_residential_{n}.csv",
                                                                         index=False)


@pytest.mark.parametrize("argv, key", [
    (["load", "--household", "9"], "--household"),
    (["load", "--household", "two"], "--household"),
    (["load", "--variant", "bogus"], "--variant"),
    (["load", "--days", "0"], "--days"),
    (["price", "--zone", "XX"], "--zone"),
    (["price", "--issue-hour", "25"], "--issue-hour"),
    (["price", "--variant", "fancy"], "--variant"),
])
def test_bad_options_exit_2_naming_the_key(tmp_path, capsys, argv, key):
    _synthetic_household(tmp_path, days=3)
    (tmp_path / "dayahead-prices").mkdir()
    code = main(["forecast", "backtest", *argv, "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2
    _one_error_line(capsys, key)
    assert not (tmp_path / "out").exists()


def test_missing_data_folder_exits_2(tmp_path, capsys):
    code = main(["forecast", "backtest", "load", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "nowhere" in _one_error_line(capsys, "--data")


def test_missing_household_file_names_it(tmp_path, capsys):
    _synthetic_household(tmp_path, days=3, n=2)
    assert main(["forecast", "backtest", "load", "--household", "5", "--data", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    assert "power_of_residential_5.csv" in _one_error_line(capsys, "household 5")


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    _synthetic_household(tmp_path, days=3)
    f = tmp_path / "report"
    f.write_text("mine", encoding="utf-8")
    assert main(["forecast", "backtest", "load", "--household", "2", "--data", str(tmp_path), "--out", str(f)]) == 2
    _one_error_line(capsys, "--out")
    assert f.read_text(encoding="utf-8") == "mine"


def test_load_backtest_writes_report_and_keeps_other_files(tmp_path, capsys):
    _synthetic_household(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    code = main(["forecast", "backtest", "load", "--household", "2", "--days", "4", "--data", str(tmp_path),
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "persistence" in printed and "MAE" in printed and "report.html" in printed
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "notes.txt", "predictions.parquet", "report.html"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["role"] == "load" and m["settings"]["origins"] == 4
    assert set(m["metrics"]) == {"model", "persistence", "last_week", "skill"}
    pred = pd.read_parquet(out / "predictions.parquet")
    assert len(pred) == 4 * 24 and {"issue", "lead_h", "y", "p10", "p50", "p90", "persistence"} <= set(pred.columns)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64") >= 3 and "<script" not in html  # self-contained, offline


# -- real data ------------------------------------------------------------------------------------------

@pytest.mark.data
@pytest.mark.slow
def test_cli_load_and_price_on_real_data(tmp_path, capsys):
    root = shared_data("households-konstanz").parent
    shared_data("dayahead-prices")
    assert main(["forecast", "backtest", "load", "--household", "1", "--days", "7", "--data", str(root),
                 "--out", str(tmp_path / "load")]) == 0
    assert main(["forecast", "backtest", "price", "--zone", "CZ", "--days", "7", "--data", str(root),
                 "--out", str(tmp_path / "price")]) == 0
    for name, role in (("load", "load"), ("price", "price")):
        m = json.loads((tmp_path / name / "metrics.json").read_text(encoding="utf-8"))
        assert m["role"] == role and m["settings"]["origins"] == 7
        assert (tmp_path / name / "report.html").stat().st_size > 50_000
    price = json.loads((tmp_path / "price" / "metrics.json").read_text(encoding="utf-8"))
    assert price["settings"]["passed_through_max_abs_error"] == 0.0
    assert price["metrics"]["model"]["n"] == 7 * 13  # issued 13:00, 48 h: the last 13 h are predicted


# ---------------------------------------------------------------------------------------------
# pems forecast fit: a home's own forecasters from its history
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def home_file(tmp_path_factory):
    """The two-room battery house and 50 days of its measured history (PV at its own site)."""
    import tomli_w

    from helpers import BATTERY_HOUSE, home_history, house_from

    folder = tmp_path_factory.mktemp("home")
    (folder / "house.toml").write_text(tomli_w.dumps(BATTERY_HOUSE), encoding="utf-8")
    hist = home_history(house_from(BATTERY_HOUSE), "2024-03-01", 50, seed=5)
    hist.to_parquet(folder / "history.parquet")
    return folder


def test_fit_learns_the_homes_load_forecaster_and_registers_it_as_champion(home_file, tmp_path, capsys):
    from pems.controllers.forecast.registry import ModelRegistry

    reg, out = tmp_path / "models", tmp_path / "load"
    assert main(["forecast", "fit", "load", "--history", str(home_file / "history.parquet"), "--house",
                 str(home_file / "house.toml"), "--registry", str(reg), "--days", "14", "--out", str(out)]) == 0
    card = ModelRegistry(reg).champion("load")
    assert card is not None and card.kind == "LoadForecaster"
    # the weekday/weekend shape of H25 under 30 % noise: the learned median beats same-time-yesterday
    assert card.metrics["skill"]["mae_vs_persistence"] > 0.15
    assert 0.6 < card.metrics["coverage"] < 0.95
    assert card.data["rows"] == 50 * 96 and card.data["sha256"]
    assert (out / "report.html").is_file() and (out / "metrics.json").is_file()
    model = ModelRegistry(reg).load(card.ref)
    hist = pd.read_parquet(home_file / "history.parquet")
    issue = hist.index[-1] + pd.Timedelta(minutes=15)
    fc = model.predict(hist, issue, pd.date_range(issue, periods=96, freq="15min"))
    assert np.isfinite(fc.values).all() and (fc.values >= 0).all()
    assert "registered load/" in capsys.readouterr().out


def test_fit_pv_deploys_physics_where_the_learned_correction_does_not_beat_it(home_file, tmp_path, capsys):
    """The history's PV *is* the pvlib chain on its measured weather: nothing is left to learn, so
    the backtest picks physics alone and the card carries physics' scores."""
    from pems.controllers.forecast.registry import ModelRegistry

    reg = tmp_path / "models"
    assert main(["forecast", "fit", "pv", "--history", str(home_file / "history.parquet"), "--house",
                 str(home_file / "house.toml"), "--registry", str(reg), "--days", "10", "--out",
                 str(tmp_path / "pv")]) == 0
    card = ModelRegistry(reg).champion("pv")
    metrics = json.loads((tmp_path / "pv" / "metrics.json").read_text())
    physics, learned = metrics["metrics"]["physics"]["mae"], metrics["metrics"]["model"]["mae"]
    if physics < learned:
        assert card.kind == "PVPhysicsForecaster" and card.metrics["mae"] == pytest.approx(physics)
        assert card.metrics["baselines"]["learned"]["mae"] == pytest.approx(learned)
        assert "physics alone" in metrics["settings"]["deployed"]
    else:
        assert card.kind == "PVForecaster" and card.metrics["mae"] == pytest.approx(learned)
    # the deployed array: what the history's pvlib chain produced (5 kWp, AC-limited at 5 kW)
    model = ModelRegistry(reg).load(card.ref)
    assert 0.8 * 5000 < model.physics.ac_limit_w <= 5001
    assert card.metrics["mae"] < 0.2 * metrics["metrics"]["persistence"]["mae"]


@pytest.mark.parametrize("drop, key", [("P_load", "P_load"), ("ghi", "ghi")])
def test_fit_without_the_column_it_learns_from_names_the_file_and_column(home_file, tmp_path, capsys, drop, key):
    hist = pd.read_parquet(home_file / "history.parquet").drop(columns=drop)
    path = tmp_path / "h.csv"
    hist.reset_index().to_csv(path, index=False)
    what = "load" if drop == "P_load" else "pv"
    assert main(["forecast", "fit", what, "--history", str(path), "--house", str(home_file / "house.toml"),
                 "--registry", str(tmp_path / "models"), "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys, key)
    assert "h.csv" in line
    assert not (tmp_path / "models").exists()


def test_fit_refuses_a_history_too_short_to_learn_from(home_file, tmp_path, capsys):
    hist = pd.read_parquet(home_file / "history.parquet").iloc[: 10 * 96]
    path = tmp_path / "short.parquet"
    hist.to_parquet(path)
    assert main(["forecast", "fit", "load", "--history", str(path), "--house", str(home_file / "house.toml"),
                 "--registry", str(tmp_path / "models"), "--out", str(tmp_path / "o")]) == 2
    assert "at least 21" in _one_error_line(capsys, "P_load")

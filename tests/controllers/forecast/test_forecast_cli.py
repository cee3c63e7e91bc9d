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

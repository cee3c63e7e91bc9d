"""The reports as a person sees them: rendered in headless Chromium in a 1366 px wide window.

Each report is opened in a real browser (Debian's ``chromium``, driven over the DevTools pipe by
:mod:`pems.browser`); every table must fit inside its container without a scroll bar of its own,
the page must not be wider than the window, and every figure must have loaded. Without Chromium
(``tools/install_services.sh`` installs it, as ``make test`` does) these tests skip with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pems.browser import Chromium, find_chromium
from pems.cli import main
from pems.scenarios.spec import load_scenario

WIDTH = 1366  # the most common laptop window

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="Chromium not installed (Debian: apt-get install chromium, "
                                       "or tools/install_services.sh)")


@pytest.fixture(scope="module")
def browser():
    # an installed browser that does not start is a failure, not a skip: it is what we test with
    with Chromium() as b:
        yield b


def _one_day(tmp_path: Path) -> Path:
    """The built-in winter week cut to its first day (the same house, weather and prices)."""
    text = load_scenario("winter-week").path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^days\s*=\s*\d+", "days = 1", text)
    text = re.sub(r'(?m)^name\s*=\s*"[^"]*"', 'name = "winter-day"', text)
    path = tmp_path / "winter-day.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _check(browser: Chromium, report: Path, min_images: int) -> None:
    page = browser.open(report, width=WIDTH)
    assert page.layout_problems() == []
    assert page.evaluate("document.images.length") >= min_images
    assert page.evaluate("document.querySelectorAll('table').length") >= 1


def test_single_run_report_fits_a_laptop_window(browser, tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", str(_one_day(tmp_path)), "--controller", "rule-based", "--out", str(out)]) == 0
    _check(browser, out / "report.html", min_images=2)
    text = (out / "report.html").read_text(encoding="utf-8")
    # the period in the house's local time: the winter week starts at local midnight
    assert re.search(r"\d{4}-\d\d-\d\d 00:00 – \d{4}-\d\d-\d\d 00:00 Europe/Prague", text)
    assert "currency" not in text


@pytest.mark.slow
def test_bench_report_of_four_controllers_fits_a_laptop_window(browser, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", str(_one_day(tmp_path)), "--controllers", "rule-based,rule-based-preheat,mpc,oracle",
                 "--out", str(out)]) == 0
    _check(browser, out / "report.html", min_images=4)
    text = (out / "report.html").read_text(encoding="utf-8")
    assert text.count("<li><b>") == 3 and "Relay switches" in text and "EUR/kWh" in text
    # the report of each run of the bench, too
    _check(browser, out / "winter-day" / "mpc" / "report.html", min_images=2)


def _synthetic_household(root: Path, days: int = 60, n: int = 2) -> None:
    """A household CSV in the OPSD layout: cumulative kWh readings of one meter."""
    rng = np.random.default_rng(7)
    t = pd.date_range("2024-01-01", periods=days * 24, freq="1h", tz="UTC")
    h = t.tz_convert("Europe/Berlin").hour.to_numpy()
    kwh = (0.15 + 0.5 * ((h >= 18) & (h < 22)) + 0.3 * ((h >= 6) & (h < 8))) * rng.lognormal(0, 0.3, len(t))
    folder = root / "households-konstanz"
    folder.mkdir(parents=True)
    pd.DataFrame({"utc_timestamp": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  f"DE_KN_residential{n}_grid_import": np.cumsum(kwh)}).to_csv(
        folder / f"power_of_residential_{n}.csv", index=False)


def test_forecast_backtest_report_fits_a_laptop_window(browser, tmp_path, capsys):
    _synthetic_household(tmp_path)
    out = tmp_path / "load"
    assert main(["forecast", "backtest", "load", "--household", "2", "--days", "4", "--data", str(tmp_path),
                 "--out", str(out)]) == 0
    _check(browser, out / "report.html", min_images=3)

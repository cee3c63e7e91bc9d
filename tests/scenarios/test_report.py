"""The words and numbers of the reports: KPI formatting, units, the local period and the "why".

The "why" splits a controller's saving against the rule-based home into importing less, paying
less per kWh and export; here the split is checked against bills recomputed from two trajectories,
so it cannot drift from the KPI definitions.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pems.scenarios.kpis import KPIS, compute_kpis
from pems.scenarios.report_tables import (ROWS, cost_difference, energy, fixed, frame_runs, gap, kpi_table,
                                          milliseconds, period_text, share, why_sentence, why_text)


def test_float_noise_shows_as_zero_without_a_sign():
    assert fixed(1)(4.26e-16) == "0.0"
    assert fixed(2)(-1e-17) == "0.00"
    assert fixed(2)(-0.004) == "0.00"
    assert fixed(0)(1789.4) == "1,789"
    assert fixed(2)(float("nan")) == "–" and fixed(2)(None) == "–"
    assert fixed(0)(np.int64(3)) == "3" and fixed(1)(np.float32(0.5)) == "0.5"


def test_each_unit_gets_the_digits_it_deserves():
    assert energy(738.4) == "738" and energy(3.44) == "3.4" and energy(1e-15) == "0.0"
    assert share(0.9984) == "99.8 %" and share(1.0) == "100.0 %"
    assert gap(0.152) == "+15.2 %" and gap(-0.0) == "0.0 %" and gap(1e-12) == "0.0 %"
    assert milliseconds(2e-5) == "< 0.1" and milliseconds(0.0238) == "23.8" and milliseconds(1.7) == "1,700"


def test_kpi_table_reads_in_the_tariffs_currency_without_scientific_notation():
    kpis = {"cost": 24.2512, "energy_export_kWh": 4.26e-16, "import_price_avg": 0.2187,
            "compute_s_per_step": 1.98e-5, "self_consumption": 1.0, "relay_switches": 114.0}
    text = kpi_table([("rule-based", kpis), ("mpc", {**kpis, "cost": 18.7})], "CZK")
    assert "CZK/kWh" in text and "[CZK]" in text and "currency" not in text
    assert not re.search(r"\de[-+]\d", text), "scientific notation in the table"
    assert "<td>0.0</td>" in text and "<td>24.25</td>" in text and "<td>18.70</td>" in text
    assert "<td>&lt; 0.1</td>" in text and "<td>< " not in text  # escaped: valid HTML
    assert "Relay switches" in text and "Mean import price" in text
    assert "Cost above oracle" not in text  # a KPI no run has is left out
    # one row per KPI, one column per controller (narrow whatever the number of KPIs)
    assert text.count("<tr>") == 1 + 6 and text.count("<th>rule-based</th>") == 1


def test_a_bench_frame_gives_each_controller_its_numbers():
    frame = pd.DataFrame({"scenario": ["w", "w"], "controller": ["rule-based", "oracle"], "cost": [20.0, 18.0],
                          "cost_gap_to_oracle": [0.111, 0.0], "fallbacks": np.array([2, 0], dtype=np.int64)})
    frame.loc[1, "cost"] = np.nan  # a missing value stays missing
    runs = frame_runs(frame)
    assert runs == [("rule-based", {"cost": 20.0, "cost_gap_to_oracle": 0.111, "fallbacks": 2.0}),
                    ("oracle", {"cost_gap_to_oracle": 0.0, "fallbacks": 0.0})]
    text = kpi_table(runs, "EUR")
    assert "<td>+11.1 %</td><td>0.0 %</td>" in text and "<td>20.00</td><td>–</td>" in text
    assert "<td>2</td><td>0</td>" in text


def test_every_kpi_has_a_line_in_the_table():
    assert set(KPIS) <= {r.key for r in ROWS}


def test_period_is_in_the_houses_local_time():
    idx = pd.date_range("2024-01-21 23:00", periods=96, freq="15min", tz="UTC")  # local midnight in Prague
    text = period_text(idx, "Europe/Prague")
    assert text == ("2024-01-22 00:00 – 2024-01-23 00:00 Europe/Prague (UTC+01:00), 96 steps of 15 min")


# -- why ----------------------------------------------------------------------------------------------

def _trajectory(rng: np.random.Generator, p_grid: np.ndarray, heat: np.ndarray) -> pd.DataFrame:
    n = len(p_grid)
    idx = pd.date_range("2024-01-21 23:00", periods=n, freq="15min", tz="UTC")
    return pd.DataFrame({"T_room__a": 21.0, "T_set_low__a": 20.0, "T_set_high__a": 24.0, "P_heat__a": heat,
                         "P_grid": p_grid, "P_pv": 800.0, "P_load": 400.0, "P_bat": 0.0, "P_loss": 0.0,
                         "price_import": rng.uniform(0.08, 0.35, n), "price_export": rng.uniform(0.0, 0.06, n)},
                        index=idx)


def _bill(tr: pd.DataFrame) -> tuple[float, float]:
    """Import cost and export earnings of a trajectory, straight from its steps [currency]."""
    imp, exp_ = tr["P_grid"].clip(lower=0), (-tr["P_grid"]).clip(lower=0)
    return float((imp * tr["price_import"]).sum() / 4000), float((exp_ * tr["price_export"]).sum() / 4000)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_why_parts_add_up_to_the_cost_difference_and_export_is_the_export(seed):
    rng = np.random.default_rng(seed)
    n = 96
    base = _trajectory(rng, rng.normal(1500, 2000, n), rng.uniform(0, 3000, n))
    other = base.copy()  # same prices, another schedule: more export, imports moved around
    other["P_grid"] = rng.normal(1200, 2500, n)
    other["P_heat__a"] = rng.uniform(0, 3000, n)
    kb, ko = compute_kpis(base, ["a"], None), compute_kpis(other, ["a"], None)
    d = cost_difference(kb, ko)
    assert d.saved == pytest.approx(kb["cost"] - ko["cost"], abs=1e-12)
    assert d.volume + d.price + d.export == pytest.approx(d.saved, abs=1e-9)
    (imp_b, exp_b), (imp_o, exp_o) = _bill(base), _bill(other)
    assert d.volume + d.price == pytest.approx(imp_b - imp_o, rel=1e-9)  # the import bill's change
    assert d.export == pytest.approx(exp_o - exp_b, rel=1e-9, abs=1e-12)  # "the rest" is export
    assert d.import_kwh_less == pytest.approx(kb["energy_import_kWh"] - ko["energy_import_kWh"])


def _numbers(sentence: str) -> tuple[float, list[float]]:
    """The total and the parts of a why sentence, those after "minus" subtracted: they add up to the
    total in its own direction (a saving, or a cost)."""
    total = float(re.search(r"(?:saves|costs) ([\d.]+)", sentence).group(1))
    parts = [(-1 if m.group(1) else 1) * float(m.group(2))
             for m in re.finditer(r"(minus )?([\d.]+) (?:from|for) ", sentence)]
    return total, parts


def test_why_says_saves_and_costs_more_in_plain_words():
    # consistent bills: cost = import × mean price − export earnings (0.50 each)
    base = {"cost": 100 * 0.20 - 0.5, "energy_import_kWh": 100.0, "import_price_avg": 0.20, "heating_kWh": 90.0,
            "energy_export_kWh": 2.0}
    cheaper = {"cost": 107 * 0.17 - 0.5, "energy_import_kWh": 107.0, "import_price_avg": 0.17, "heating_kWh": 96.0,
               "energy_export_kWh": 2.0}
    text = why_sentence("mpc", cost_difference(base, cheaper), "EUR")
    assert text == ("<b>mpc</b> saves 1.81 EUR against rule-based: 3.21 from paying 15.0 % less per kWh bought, "
                    "minus 1.40 for importing 7 kWh more (heating 6 kWh more)")
    total, parts = _numbers(text)
    assert sum(parts) == pytest.approx(total, abs=0.015)  # the parts as shown add up, to rounding
    assert "+" not in text and " -" not in text  # no signs that mean "saved"

    dearer = {"cost": 112 * 0.19 - 0.5, "energy_import_kWh": 112.0, "import_price_avg": 0.19, "heating_kWh": 101.0,
              "energy_export_kWh": 2.0}
    text = why_sentence("rule-based-preheat", cost_difference(base, dearer), "EUR")
    assert text == ("<b>rule-based-preheat</b> costs 1.28 EUR more than rule-based: 2.40 for importing 12 kWh more "
                    "(heating 11 kWh more), minus 1.12 from paying 5.0 % less per kWh bought")
    total, parts = _numbers(text)
    assert sum(parts) == pytest.approx(total, abs=0.015)


def test_why_names_export_and_leaves_out_what_made_no_difference():
    base = {"cost": 10.0, "energy_import_kWh": 50.0, "import_price_avg": 0.2, "heating_kWh": 40.0,
            "energy_export_kWh": 5.0}
    run = {**base, "cost": 9.5, "energy_export_kWh": 9.0}  # same imports, 0.50 more earned for export
    text = why_sentence("mpc", cost_difference(base, run), "EUR")
    assert text == ("<b>mpc</b> saves 0.50 EUR against rule-based: "
                    "0.50 from earning more for export (4 kWh more exported)")
    assert why_sentence("x", cost_difference(base, base), "EUR") == "<b>x</b> costs the same as rule-based"


def test_why_text_lists_every_controller_but_the_baseline():
    frame = pd.DataFrame([
        {"controller": "rule-based", "cost": 20.0, "energy_import_kWh": 100.0, "import_price_avg": 0.2,
         "heating_kWh": 90.0, "energy_export_kWh": 0.0, "discomfort_Kh_per_room": 1.5},
        {"controller": "mpc", "cost": 18.0, "energy_import_kWh": 100.0, "import_price_avg": 0.18,
         "heating_kWh": 90.0, "energy_export_kWh": 0.0, "discomfort_Kh_per_room": 0.0}])
    text = why_text(frame, "EUR")
    assert text.count("<li>") == 1 and "<b>mpc</b> saves 2.00 EUR" in text and "(rule-based 1.50)" in text
    assert why_text(frame[frame.controller == "mpc"], "EUR") == ""


def test_reports_say_when_they_were_made_in_a_named_zone():
    from pems.reporting import footer, generated_text, page

    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d Europe/Prague \(UTC\+0[12]:00\)", generated_text("Europe/Prague"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d Asia/Kolkata \(UTC\+05:30\)", generated_text("Asia/Kolkata"))
    # without a house: this machine's wall clock, with its zone
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d (UTC|\S+ \(UTC[+-]\d\d:\d\d\))", generated_text())
    assert "Asia/Kolkata" in footer("Asia/Kolkata")
    assert "Asia/Kolkata (UTC+05:30)" in page("t", "s", "b", tz="Asia/Kolkata")

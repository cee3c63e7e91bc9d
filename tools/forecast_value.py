"""What forecasts are worth to the MPC: the winter week with a household a forecast cannot know.

The reference house's winter week, its household load replaced by a noisy one (the H25 shape with
±15 % day to day and ±25 % AR(1) noise: :func:`pems.twin.load.noisy_household`), run by the MPC on
``perfect``, ``learned`` and ``persistence`` forecasts (48 h, the scenario's own weather and
prices). Prints the README's table and writes each run under ``--out``::

    python tools/forecast_value.py [--out out/forecast-value] [--days 7]

The learned forecasters are fitted on the 42 days before the start, from the same noisy household.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pandas as pd

from pems.scenarios.bench import run_bench
from pems.threads import limit_threads
from pems.scenarios.spec import library_dir
from pems.twin.house import load_house
from pems.twin.load import noisy_household

MODELS = ("perfect", "learned", "persistence")


def write_scenarios(out: Path, days: float) -> list[Path]:
    """The winter week on a noisy household, once per forecast model; returns the scenario files."""
    spec = tomllib.loads((library_dir() / "winter-week.toml").read_text())
    house = load_house(spec["house"])
    start = pd.Timestamp(spec["start"]).tz_convert("UTC")
    step = pd.Timedelta(minutes=15)
    idx = pd.date_range(start - pd.Timedelta(days=50), start + pd.Timedelta(days=days + 3), freq=step,
                        name="time")
    load = noisy_household(idx, step, house.site, float(spec.get("load_kwh_per_year", 4000.0)), seed=4)
    load.reset_index().to_csv(out / "load.csv", index=False)
    paths = []
    for model in MODELS:
        lines = [f'name = "winter-week-{model}"', f'house = "{spec["house"]}"', f'start = "{spec["start"]}"',
                 f"days = {days}", f'weather = "{spec["weather"]}"', f'prices = "{spec["prices"]}"',
                 'load = "load.csv"', "[comfort]", f'high = {spec["comfort"]["high"]}',
                 "[forecast]", f'model = "{model}"', "horizon_hours = 48", "learn_days = 42"]
        path = out / f"winter-week-{model}.toml"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/forecast-value"))
    ap.add_argument("--days", type=float, default=7.0)
    args = ap.parse_args()
    limit_threads()  # as `pems` does: scikit-learn's OpenMP spinning made each learned issue 12× slower
    args.out.mkdir(parents=True, exist_ok=True)
    paths = write_scenarios(args.out, args.days)
    frame = run_bench([str(p) for p in paths], ["mpc"], args.out / "runs")
    print("| forecasts | cost [EUR] | discomfort [K·h] | heating [kWh] | import [kWh] |")
    print("|---|---|---|---|---|")
    for _, r in frame.iterrows():
        print(f"| {r['scenario'].removeprefix('winter-week-')} | {r['cost']:.2f} | {r['discomfort_Kh']:.1f} | "
              f"{r['heating_kWh']:.0f} | {r['energy_import_kWh']:.0f} |")


if __name__ == "__main__":
    main()

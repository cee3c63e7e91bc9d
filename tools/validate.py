"""Calibrate on part of each public measured building and predict the rest (``make validate``).

usage: python tools/validate.py [DATASET ...] [--out DIR]

Prints a Markdown table of the validation errors (the README's) and writes each calibration's
outputs (house.toml, calibration.json, report.html) under DIR/<dataset>/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from pems.calibration.calibrate import calibrate
from pems.calibration.datasets import DATASETS, shared_data
from pems.calibration.history import prepare_history
from pems.calibration.outputs import write_calibration


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--out", default="out/validate")
    ap.add_argument("--train-fraction", type=float, default=0.7)
    args = ap.parse_args()
    if not shared_data().exists():
        print(f"validation data not found at {shared_data()} (set PEMS_SHARED): nothing to do")
        return 0
    rows = []
    for name in args.datasets:
        ds = DATASETS[name]()
        hist = prepare_history(ds.history, name, ds.house, pd.Timedelta(minutes=ds.step_minutes))
        res = calibrate(ds.house, hist, train_fraction=args.train_fraction)
        write_calibration(res, Path(args.out) / name, f"{name}: {ds.description}")
        s = res.summary
        per_room = ", ".join(f"{r} {m.rmse_24h_k:.2f}" for r, m in res.metrics.items())
        train_days = (res.train[1] - res.train[0]) / pd.Timedelta(days=1)
        rows.append(f"| {name} | {len(res.metrics)} | {train_days:.1f} | {s['validation_days']} | "
                    f"{s['rmse_1step_k_mean']:.3f} | **{s['rmse_24h_k_mean']:.2f}** | {per_room} | {res.wall_s:.0f} s |")
        print(rows[-1], flush=True)
    print("\n| dataset | rooms | training days | validation days | one-step RMSE [K] | 24 h-ahead RMSE [K] "
          "| per room (24 h) [K] | time |\n|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

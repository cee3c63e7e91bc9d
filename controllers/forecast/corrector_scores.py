"""How much a residual corrector improves the twin's room predictions, and its report.

A corrector (:mod:`pems.controllers.forecast.correctors`) is scored on held-out days: 24 h-ahead
predictions of every room from origins a few hours apart, by the twin alone and by the twin with
the corrector's learned heat. The same scoring serves a home's history (``pems forecast fit
correctors``) and a scenario's simulated one (``pems forecast backtest correctors``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pems.twin.model import HouseModel


@dataclass
class CorrectorBacktest:
    """24 h-ahead room-temperature errors of the twin alone and with a learned corrector."""

    scenario: str
    rooms: pd.DataFrame  # per room: rmse_physics, rmse_corrected [K], reduction [-], enabled
    rmse_physics: float  # pooled over rooms and origins [K]
    rmse_corrected: float
    corrector: object
    train: tuple[str, str]
    test: tuple[str, str]
    gains_true: pd.DataFrame | None = None  # the unmodelled heat over the test days [W]
    gains_learned: pd.DataFrame | None = None  # the corrector's forecast of it [W]
    mae_physics: float = float("nan")  # pooled mean absolute 24 h-ahead error [K]
    mae_corrected: float = float("nan")

    @property
    def reduction(self) -> float:
        """Share of the twin's pooled RMSE the corrector removes [-]."""
        return 1.0 - self.rmse_corrected / self.rmse_physics


def score_corrector(name: str, model: HouseModel, corr, history: pd.DataFrame, step: pd.Timedelta,
                    start: pd.Timestamp, every: pd.Timedelta = pd.Timedelta(hours=6)) -> CorrectorBacktest:
    """Score a fitted corrector on the held-out part of a history.

    Parameters
    ----------
    name
        What was scored (a scenario's or a house's name), for the report.
    model
        The twin whose residuals the corrector learned.
    corr
        A fitted :class:`~pems.controllers.forecast.correctors.ResidualCorrector`.
    history
        The canonical history table on ``step``; rows from ``start`` on are held out.
    step
        The history's step.
    start
        First held-out time (UTC): the first prediction origin.
    every
        Time between prediction origins.

    Returns
    -------
    CorrectorBacktest
        Per-room and pooled 24 h-ahead errors [K], twin alone and corrected.
    """
    from pems.calibration.predict import ahead_errors

    learned = corr.gains_for_history(history)
    phys = ahead_errors(model, history, step, start=start, every=every)
    both = ahead_errors(model, history, step, start=start, every=every, gains=learned)
    rooms = list(model.rooms)
    rm = lambda e: np.sqrt(np.nanmean(e ** 2, axis=0))  # noqa: E731
    a, b = rm(phys[rooms].to_numpy()), rm(both[rooms].to_numpy())
    table = pd.DataFrame({"rmse_physics": a, "rmse_corrected": b, "reduction": 1 - b / a,
                          "enabled": [corr.rooms[r].enabled for r in rooms]}, index=pd.Index(rooms, name="room"))
    pooled = lambda e: float(np.sqrt(np.nanmean(e[rooms].to_numpy() ** 2)))  # noqa: E731
    train = corr.trained_on
    held = history.loc[history.index >= start]
    return CorrectorBacktest(name, table, pooled(phys), pooled(both), corr,
                             (str(train.get("start", "")), str(train.get("end", ""))),
                             (str(start), str(history.index[-1] + step)), None, learned.loc[held.index],
                             float(np.nanmean(np.abs(phys[rooms].to_numpy()))),
                             float(np.nanmean(np.abs(both[rooms].to_numpy()))))


def write_corrector_report(bt: CorrectorBacktest, out: Path) -> Path:
    """Write ``out/report.html`` (per-room errors, learned against true unmodelled heat where known)
    and ``out/metrics.json``; return the report's path."""
    import matplotlib.pyplot as plt

    from pems.reporting import img, page

    out.mkdir(parents=True, exist_ok=True)
    metrics = {"scenario": bt.scenario, "rmse_24h_physics_K": bt.rmse_physics,
               "rmse_24h_corrected_K": bt.rmse_corrected, "reduction": bt.reduction,
               "mae_24h_physics_K": bt.mae_physics, "mae_24h_corrected_K": bt.mae_corrected,
               "train": list(bt.train), "test": list(bt.test),
               "rooms": json.loads(bt.rooms.to_json(orient="index"))}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    fig, ax = plt.subplots(figsize=(11, 3.6))
    x = np.arange(len(bt.rooms))
    ax.bar(x - 0.2, bt.rooms["rmse_physics"], 0.4, label="twin alone", color="#999")
    ax.bar(x + 0.2, bt.rooms["rmse_corrected"], 0.4, label="twin + corrector", color="#2a7ab9")
    ax.set_xticks(x, bt.rooms.index, rotation=45, ha="right")
    ax.set_ylabel("24 h-ahead RMSE [K]")
    ax.legend()
    body = [f"<p>24 h-ahead room temperature RMSE over {len(bt.rooms)} rooms, origins every 6 h over "
            f"the held-out days {bt.test[0]} .. {bt.test[1]}: twin alone <b>{bt.rmse_physics:.3f} K</b>, "
            f"twin + corrector <b>{bt.rmse_corrected:.3f} K</b> (−{100 * bt.reduction:.0f} %). "
            f"Learned from {bt.train[0]} .. {bt.train[1]}.</p>", img(fig, "RMSE per room")]
    if bt.gains_true is not None and bt.gains_learned is not None:
        active = bt.gains_true.abs().mean().sort_values(ascending=False).index[:4]
        fig, axes = plt.subplots(len(active), 1, figsize=(11, 2.2 * len(active)), sharex=True)
        for a, r in zip(np.atleast_1d(axes), active):
            a.plot(bt.gains_true.index, bt.gains_true[r], color="#c0392b", lw=1, label="true unmodelled heat")
            a.plot(bt.gains_learned.index, bt.gains_learned[r], color="#2a7ab9", lw=1, label="corrector's forecast")
            a.set_ylabel(f"{r} [W]")
        np.atleast_1d(axes)[0].legend(loc="upper right")
        body += ["<h2>What was learned</h2>", img(fig, "learned against true gains")]
    table = bt.rooms.copy()
    table["reduction"] = (100 * table["reduction"]).round(0).astype(int).astype(str) + " %"
    body += ["<h2>Per room</h2>", table.to_html(float_format=lambda v: f"{v:.3f}")]
    path = out / "report.html"
    path.write_text(page(f"Residual correctors — {bt.scenario}", "24 h-ahead predictions, twin alone and corrected",
                         "\n".join(body)), encoding="utf-8")
    return path

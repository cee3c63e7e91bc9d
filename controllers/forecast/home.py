"""A home's own PV and load forecasters, learned from its history (``pems forecast fit``).

The public-data backtests (``pems forecast backtest``) show what the forecasters can do; a home
runs on forecasters learned from *its* meters. :func:`fit_home` takes the canonical history table
(a file, or InfluxDB through a mapping), scores a rolling-origin day-ahead backtest on it (honest
skill against persistence before anything is deployed), then refits on the latest year for
deployment. ``pems live`` uses the registry's champions (``[forecast] learned``).

A history rarely holds an archive of the weather *forecasts* it lived through; the measured weather
stands in for them, so the PV backtest is an upper bound of the day-ahead skill (the report says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pems.controllers.forecast.backtest import BacktestResult
from pems.errors import InputError

#: Roles ``pems forecast fit`` learns, and the history columns each needs.
NEEDS: dict[str, tuple[str, ...]] = {"pv": ("P_pv", "ghi", "T_out"), "load": ("P_load",)}

#: Time zones → public-holiday country, where a house file does not say ``site.country``.
ZONE_COUNTRY: dict[str, str] = {
    "Europe/Prague": "CZ", "Europe/Bratislava": "SK", "Europe/Berlin": "DE", "Europe/Vienna": "AT",
    "Europe/Warsaw": "PL", "Europe/Budapest": "HU", "Europe/Zurich": "CH", "Europe/Paris": "FR",
    "Europe/Amsterdam": "NL", "Europe/Brussels": "BE", "Europe/Copenhagen": "DK", "Europe/Rome": "IT",
    "Europe/Madrid": "ES", "Europe/London": "GB", "Europe/Stockholm": "SE", "Europe/Oslo": "NO",
    "Europe/Helsinki": "FI", "Europe/Ljubljana": "SI",
}

#: The deployed model learns from at most this much of the latest history (as in the backtests).
TRAIN_WINDOW = pd.Timedelta(days=365)
#: Shortest history worth a forecaster: three weeks (a week of level, two of weekdays).
MIN_SPAN = pd.Timedelta(days=21)


@dataclass
class HomeFit:
    """A forecaster learned from a home's history, with its backtest on that history."""

    role: str
    model: Any  # fitted on the latest TRAIN_WINDOW of the history: what is deployed
    backtest: BacktestResult
    trained_on: dict = field(default_factory=dict)  # start, end, rows, sha256 of the deployed fit
    deployed: str = "model"  # which of the backtest's forecasts was deployed: "model" or "physics"

    def card_metrics(self) -> dict:
        """The registry card's scores: those of the forecast that was deployed, with its skill."""
        from pems.controllers.forecast.metrics import skill

        out = self.backtest.card_metrics()
        if self.deployed != "model":
            m = self.backtest.metrics
            out.update(m[self.deployed])
            out["coverage"] = None  # a point forecast has no interval
            out["skill"] = {f"{k}_vs_{b}": skill(m[self.deployed][k], m[b][k])
                            for b in m if b not in ("model", "skill", self.deployed) for k in ("mae", "rmse", "pinball")
                            if k in m[b] and k in m[self.deployed]}
            out["baselines"] = {**out["baselines"], "learned": m["model"]}
            out["baselines"].pop(self.deployed, None)
        return out


def country_of(site: Any) -> str | None:
    """The site's public-holiday country: ``site.country`` or a guess from its time zone."""
    return getattr(site, "country", None) or ZONE_COUNTRY.get(site.timezone)


def forecaster_table(role: str, data: pd.DataFrame, source: str) -> pd.DataFrame:
    """The columns ``role`` learns from, checked: present and with data.

    Raises
    ------
    InputError
        Naming the source and the missing or empty column.
    """
    if role not in NEEDS:
        raise InputError("command line", "role", f"unknown forecaster {role!r}; expected one of {', '.join(NEEDS)}")
    for c in NEEDS[role]:
        if c not in data:
            raise InputError(source, c, f"the {role} forecaster needs a {c!r} column (see docs/reference/history.md)")
        if not np.isfinite(data[c].to_numpy(dtype=float)).any():
            raise InputError(source, c, "has no values")
    extra = ("T_out", "ghi") if role == "load" else ()
    cols = list(NEEDS[role]) + [c for c in extra if c in data and c not in NEEDS[role]]
    table = data[cols].astype(float)
    both = table[list(NEEDS[role])].dropna()
    if both.empty:
        raise InputError(source, ", ".join(NEEDS[role]), "no time step has all of them")
    first, last = both.index[[0, -1]]
    table = table.loc[first:last]
    if last - first < MIN_SPAN:
        raise InputError(source, NEEDS[role][0], f"holds {(last - first) / pd.Timedelta(days=1):.1f} days of data; "
                                                  f"a forecaster needs at least {MIN_SPAN.days}")
    return table


def fit_home(role: str, data: pd.DataFrame, site: Any, source: str = "history", *, days: int | None = 90,
             progress: Callable[[int, int], None] | None = None) -> HomeFit:
    """Backtest and fit the ``role`` forecaster (``pv`` or ``load``) on a home's history.

    Parameters
    ----------
    data
        The canonical history table (UTC index, regular step); see :data:`NEEDS`.
    site
        The house's :class:`~pems.twin.house.Site` (time zone, holidays, sun).
    days
        Score the last ``days`` day-ahead origins (earlier data still train); ``None``: all.
    progress
        Called with (done, total) after each backtest origin.

    Returns
    -------
    HomeFit
        The deployed model (refitted on the latest year) and the backtest behind its scores.
    """
    from pems.controllers.forecast.correctors import data_hash

    table = forecaster_table(role, data, source)
    deployed = "model"
    span = table.index[-1] - table.index[0]
    tz, country = site.timezone, country_of(site)
    # Two months before the first origin where the history allows (a week left to score), at least a fortnight.
    spare_days = (span - pd.Timedelta(days=7)) / pd.Timedelta(days=1)
    if role == "load":
        from pems.controllers.forecast.load import LoadForecaster, LoadSettings, backtest_load

        min_train = float(np.clip(spare_days, 14.0, 56.0))
        res = backtest_load(table, tz, country, LoadSettings(), days=days, refit_days=28.0,
                            min_train_days=min_train, train_days=TRAIN_WINDOW.days, progress=progress)
        make: Callable[[], Any] = lambda: LoadForecaster(tz, country)  # noqa: E731
    else:
        from pems.controllers.forecast.pv import PVForecaster, PVPhysicsForecaster, backtest_pv

        min_train = pd.Timedelta(days=float(np.clip(spare_days, 14.0, 60.0)))
        res = backtest_pv(table, site, days=days, min_train=min_train, train_window=TRAIN_WINDOW,
                          progress=progress)
        res.settings["weather"] = ("the history's measured weather stands in for the weather forecasts: "
                                   "the scores are an upper bound of the day-ahead skill")
        make = lambda: PVForecaster(site)  # noqa: E731
        # The learned correction earns its place on the backtest: where the calibrated physics alone
        # scored the lower MAE (a short history, a weather source the correction cannot improve),
        # physics is deployed and its card carries physics' scores (the report shows both).
        learned, physics = res.metrics["model"]["mae"], res.metrics["physics"]["mae"]
        if np.isfinite(physics) and not learned <= physics:
            make = lambda: PVPhysicsForecaster(site)  # noqa: E731
            deployed = "physics"
            res.settings["deployed"] = (f"physics alone: its backtest MAE {physics:.4g} W beat the learned "
                                        f"correction's {learned:.4g} W")
    train = table.loc[table.index >= table.index[-1] - TRAIN_WINDOW]
    model = make().fit(train)
    trained_on = {"start": str(train.index[0]), "end": str(train.index[-1]), "rows": int(len(train)),
                  "sha256": data_hash(train), "source": source}
    res.settings.update({"source": source, "country": country})
    res.settings.setdefault("deployed", type(model).__name__)
    return HomeFit(role, model, res, trained_on, deployed)


def register_fit(fit: HomeFit, registry: Any, name: str, promote: bool = False) -> Any:
    """Store a :class:`HomeFit` in a :class:`~pems.controllers.forecast.registry.ModelRegistry`
    with its backtest scores; ``promote`` makes it its role's champion. Returns the card."""
    desc = fit.model.describe() if hasattr(fit.model, "describe") else {}
    card = registry.register(fit.model, fit.role, name, data=fit.trained_on, metrics=fit.card_metrics(),
                             features=list(desc.get("features", [])), settings=desc.get("settings") or {})
    if promote:
        card = registry.promote(card.ref)
    return card


#: The residual correctors learn from at least this much history before the held-out days.
MIN_CORRECTOR_TRAIN = pd.Timedelta(days=14)


def fit_home_correctors(house: Any, data: pd.DataFrame, step: pd.Timedelta, source: str = "history", *,
                        holdout: pd.Timedelta = pd.Timedelta(days=14), every: pd.Timedelta = pd.Timedelta(hours=6)
                        ) -> Any:
    """Learn the per-room residual correctors of a (calibrated) house from its history.

    The correctors are learned on the history before the last ``holdout`` and scored there: 24 h-ahead
    room predictions from origins ``every`` apart, by the twin alone and with the correction. The
    deployed correctors are then learned on the whole history (each room's own hold-out gate still
    switches off a room whose correction does not help).

    Parameters
    ----------
    house
        The house the twin is built from (a calibrated ``house.toml``: the correctors learn what
        *its* physics misses).
    data
        The canonical history table on ``step``: ``T_room__<room>`` and ``P_heat__<room>`` for every
        room, ``T_out`` (``ghi``, ``P_load`` where logged).

    Returns
    -------
    pems.controllers.forecast.corrector_scores.CorrectorBacktest
        Scores of the held-out days; ``corrector`` is the deployed one.
    """
    from pems.controllers.forecast.correctors import CorrectorSettings, ResidualCorrector
    from pems.controllers.forecast.corrector_scores import score_corrector
    from pems.twin.model import build_model

    model = build_model(house)
    for c in ("T_out", *(f"{k}__{r}" for k in ("T_room", "P_heat") for r in model.rooms)):
        if c not in data:
            raise InputError(source, c, f"the correctors of house {house.name!r} need a {c!r} column")
        if not np.isfinite(data[c].to_numpy(dtype=float)).any():
            raise InputError(source, c, "has no values")
    end = data.index[-1] + step
    split = (end - holdout).floor(step)
    if split - data.index[0] < MIN_CORRECTOR_TRAIN:
        days = (end - data.index[0]) / pd.Timedelta(days=1)
        raise InputError(source, "time", f"holds {days:.1f} days; the correctors need "
                                         f"{MIN_CORRECTOR_TRAIN.days} to learn from and "
                                         f"{holdout / pd.Timedelta(days=1):g} more to be scored on")
    country = country_of(house.site)
    settings = CorrectorSettings()
    trial = ResidualCorrector(model, step, settings, country).fit(data.loc[data.index < split])
    bt = score_corrector(house.name, model, trial, data, step, split, every)
    bt.corrector = ResidualCorrector(model, step, settings, country).fit(data)
    return bt


def corrector_card_metrics(bt: Any) -> dict:
    """A corrector's registry scores: 24 h-ahead room errors [K], twin alone and corrected (``mae``
    is the corrected one: the level live residuals are compared with)."""
    return {"mae": bt.mae_corrected, "mae_24h_physics_K": bt.mae_physics, "rmse_24h_physics_K": bt.rmse_physics,
            "rmse_24h_corrected_K": bt.rmse_corrected, "reduction": bt.reduction,
            "held_out": list(bt.test), "rooms_corrected": int(bt.rooms["enabled"].sum())}

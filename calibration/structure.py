"""Each room's structure chosen from the data: where the heater's heat and the sun go.

The house file's heating kind sets the share of heater output that enters the slab (underfloor: all
of it; convectors: a tenth), and a fixed half of the sun lands on the floor. A house file can be
wrong about either, and a wrong share ruins a fit. But estimating the shares always is no cure on
real buildings: the extra freedom then absorbs what the model cannot explain (the Twin Houses'
24 h-ahead RMSE got worse, 0.20 → 0.28 K), so the structure is **selected per room** from three:

- ``kind``: both shares as the house file says;
- ``heat``: the heater's share estimated (bounded to [0, 1], the kind's value as a weak prior);
- ``heat+sun``: both shares estimated.

As Bacher & Madsen (2011) select RC structures from the data, but with the criterion the twin is
used for: each candidate is fitted on the first three quarters of the training period (at most the
four weeks before the rest) and predicts the last quarter (at most two weeks) 24 h ahead: the
training period only, the final validation never takes part. Each room is judged on its own (its
candidate beside every other room's kind), and takes a larger structure only when it predicts
better by more than ``margin`` and consistently over the days (a paired t statistic of at least
``t_min``): an estimated share must earn its place. Then every room is fitted on the whole
training period with its structure. Likelihood-ratio tests on the fit residuals were not used: the
residuals of an output-error fit are strongly autocorrelated, which makes such tests pick the larger
structure almost always.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pems.calibration.fit import FitSettings

if TYPE_CHECKING:
    from pems.calibration.history import History
    from pems.twin.house import House


@dataclass(frozen=True)
class Structure:
    """One candidate: the shares into the slab it estimates."""

    name: str
    shares: tuple[str, ...]
    description: str


STRUCTURES = (
    Structure("kind", (), "heat and sun shares as the heating kind says"),
    Structure("heat", ("f_heat_mass",), "the heater's share into the slab estimated"),
    Structure("heat+sun", ("f_heat_mass", "f_sol_mass"), "the heater's and the sun's shares estimated"),
)
BY_NAME = {s.name: s for s in STRUCTURES}


@dataclass
class RoomStructure:
    """The structure chosen for one room, and why."""

    room: str
    chosen: str
    scores: dict[str, float] = field(default_factory=dict)  # 24 h-ahead RMSE on the selection days [K]
    why: str = ""

    @property
    def shares(self) -> tuple[str, ...]:
        return BY_NAME[self.chosen].shares


def daily_errors(model: Any, history: History, selection: np.ndarray) -> dict[str, np.ndarray]:
    """Each room's 24 h-ahead RMSE per selection day [K] (days from the house's local midnight),
    from the Kalman-filtered state at each midnight, as the validation predicts."""
    from pems.calibration.predict import HistoryFilter, day_ahead

    f = HistoryFilter(model, history.step)
    ahead = day_ahead(f, f.run(history.data), history.data, selection)
    e = ahead.predicted - ahead.measured  # (days, steps, rooms)
    ok = np.isfinite(e)
    mse = np.nansum(np.where(ok, e, 0.0) ** 2, axis=1) / np.maximum(ok.sum(axis=1), 1)
    rmse = np.where(ok.mean(axis=1) > 0.5, np.sqrt(mse), np.nan)  # a day more than half unmeasured: none
    return {r: rmse[:, i] for i, r in enumerate(model.rooms)}


def _beats(new: np.ndarray, old: np.ndarray, margin: float, t_min: float) -> bool:
    """``new`` predicts better than ``old``: by more than ``margin`` of the mean error, and consistently
    (the paired t statistic of the daily improvements at least ``t_min``: a week of days decides
    between structures, and one good day must not)."""
    ok = np.isfinite(new) & np.isfinite(old)
    if ok.sum() < 3:
        return False
    gain = old[ok] - new[ok]
    sd = float(gain.std(ddof=1))
    t = float(gain.mean() / (sd / np.sqrt(len(gain)))) if sd > 0 else (np.inf if gain.mean() > 0 else 0.0)
    return bool(new[ok].mean() <= (1 - margin) * old[ok].mean() and t >= t_min)


def select_structures(house: House, train: History, rooms: list[str], settings: FitSettings,
                      fit: Any, selection_fraction: float = 0.25, margin: float = 0.05,
                      t_min: float = 2.0, min_days: float = 3.0, max_selection_days: float = 14.0,
                      max_fit_days: float = 28.0) -> tuple[dict[str, RoomStructure], pd.Timestamp | None]:
    """Choose each room's structure on the training history (see the module notes).

    Each room is judged on its own: the candidate house has this room's fit from the candidate
    structure and every other room's from the house file's kind, so a neighbour's better structure
    cannot make a room look better.

    Parameters
    ----------
    train
        The training period only.
    fit
        ``(house, history, settings, shares_per_room) → (fits, couplings)``: the calibration's
        per-room fits (:func:`pems.calibration.calibrate.fit_house`).
    selection_fraction
        Share of the training days predicted to choose [-].
    margin, t_min
        A structure with more estimated shares must predict better than the simpler one by more
        than ``margin`` of its mean error, with a paired t statistic of its daily improvements of at
        least ``t_min`` [-].
    min_days
        Fewer selection days than this: no choice, the house file's kind for every room.
    max_selection_days, max_fit_days
        At most this many selection days, and candidate fits on at most this many days before them
        (a year of history chooses as well from four weeks and two as from all of it, at a fraction
        of the cost).

    Returns
    -------
    The choice per room, and where the selection days start (None: too little data to choose).
    """
    from pems.calibration.calibrate import calibrated_house, combine_couplings
    from pems.twin.model import build_model

    data = train.data
    days = (data.index[-1] - data.index[0]) / pd.Timedelta(days=1) if len(data) else 0.0
    sel_days = min(days * selection_fraction, max_selection_days)
    cut = (data.index[-1] - pd.Timedelta(days=sel_days)).ceil("D") if len(data) else None
    if cut is None or (data.index[-1] - cut) / pd.Timedelta(days=1) < min_days:
        why = f"too little training data to choose ({days:.1f} days): the heating kind's shares"
        return {r: RoomStructure(r, "kind", why=why) for r in rooms}, None
    fit_part = train.between(cut - pd.Timedelta(days=max_fit_days), cut)
    # the filter needs a week before the selection days to find the slabs' temperatures, not more
    scored = train.between(cut - pd.Timedelta(days=7), None)
    selection = np.asarray(scored.data.index >= cut)
    fits = {s.name: fit(house, fit_part, replace(settings, shares=s.shares), None)[0] for s in STRUCTURES}

    memo: dict[tuple[tuple[str, str], ...], dict[str, np.ndarray]] = {}

    def errors(context: dict[str, str], room: str | None = None, structure: str = "") -> dict[str, np.ndarray]:
        """Daily errors with every room at its structure in ``context``, ``room`` at ``structure``."""
        which = {r: context.get(r, "kind") for r in fits["kind"]}
        if room is not None:
            which[room] = structure
        key = tuple(sorted(which.items()))
        if key not in memo:
            chosen = {r: fits[st][r] for r, st in which.items()}
            model = build_model(calibrated_house(house, chosen, combine_couplings(chosen)))
            memo[key] = daily_errors(model, scored, selection)
        return memo[key]

    def judge(r: str, context: dict[str, str]) -> RoomStructure:
        daily = {"kind": errors(context, r, "kind").get(r, np.zeros(0))}
        for s in STRUCTURES[1:]:
            daily[s.name] = errors(context, r, s.name).get(r, np.zeros(0))
        scores = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in daily.items()}
        chosen = "kind"
        for s in STRUCTURES[1:]:  # in order of size: each must beat the one chosen so far
            if _beats(daily[s.name], daily[chosen], margin, t_min):
                chosen = s.name
        parts = ", ".join(f"{k} {v:.3f} K" for k, v in scores.items() if np.isfinite(v))
        n_days = int(np.isfinite(daily["kind"]).sum())
        why = (f"24 h-ahead RMSE over {n_days} selection days at the end of training: {parts}; a structure "
               f"with more estimated shares is taken when it is better by more than {100 * margin:.0f} %, "
               f"consistently over the days (paired t ≥ {t_min:g})")
        return RoomStructure(r, chosen, scores, why)

    # First every room beside its neighbours at the house file's kind; then, where a neighbour's
    # structure changed, again beside the neighbours' choices: a neighbour predicted with the wrong
    # structure spoils a room's own comparison (its air is the room's boundary in the prediction).
    out = {r: judge(r, {}) for r in rooms}
    changed = {r for r, st in out.items() if st.chosen != "kind"}
    if changed:
        context = {r: st.chosen for r, st in out.items()}
        for r in rooms:
            if changed & set(fits["kind"][r].neighbours):
                out[r] = judge(r, context)
    return out, cut

"""Honest warnings about a calibration: when the twin does not fit, say so, and say why it likely does not.

A fit is not called a success when any of these holds (each is a :class:`FitWarning` in the report,
``calibration.json`` and on the command line):

- **poor predictions**: a room's 24 h-ahead validation RMSE above :data:`POOR_24H_K`;
- **autocorrelated residuals**: a room's one-step prediction errors with a lag-1 autocorrelation
  above :data:`ACF_LIMIT`: the filter's innovations of a model that fits are close to white (sensor
  noise), so errors that persist from step to step are structure the model misses (heat it does not
  know of, a wrong heating kind, a missing neighbour);
- **a parameter at its bound**: the data pushed it as far as allowed (a share into the slab at 0 or 1
  is a physical answer, not a bound);
- **heating that never switches** in the training data (a rated heater whose power is missing,
  empty or constant): its room's capacities and heater efficiency cannot be seen, and stay at their
  priors;
- **a room the fit could not do** (too little data, or the solver did not converge).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pems.calibration.fit import LOG_PARAMS, SHARE_PARAMS, Estimate

if TYPE_CHECKING:
    from pems.calibration.calibrate import CalibrationResult

POOR_24H_K = 0.5  # a 24 h-ahead RMSE above this is a poor fit [K]
ACF_LIMIT = 0.6  # lag-1 autocorrelation of one-step errors above this: structure the model misses [-] (twin-made fits: 0.1–0.25)
SOLVED = ("Solve_Succeeded", "Solved_To_Acceptable_Level")


@dataclass(frozen=True)
class FitWarning:
    """One reason not to trust a calibration as it stands."""

    room: str | None  # None: the whole house
    kind: str  # "poor predictions", "autocorrelated residuals", "at bound", "heating never switches", "not fitted"
    message: str  # what was found and its likely cause

    def text(self) -> str:
        return f"{'room ' + self.room + ': ' if self.room else ''}{self.message}"

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def by_room(warnings: list[FitWarning]) -> dict[str | None, list[FitWarning]]:
    """The warnings grouped by room (None: the house), rooms in order of first mention."""
    out: dict[str | None, list[FitWarning]] = {}
    for w in warnings:
        out.setdefault(w.room, []).append(w)
    return out


def heating_never_switches(train: pd.DataFrame, room: str) -> str | None:
    """Why a room's heating cannot be seen in ``train`` (None: it switches)."""
    col = f"P_heat__{room}"
    if col not in train:
        return "the history has no heating power for it"
    p = train[col].to_numpy(dtype=float)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return "its heating power is empty"
    if np.ptp(p) < 1.0:
        return f"its heating power never changes ({p[0]:.0f} W throughout)"
    return None


def diagnose(result: CalibrationResult, train: pd.DataFrame) -> list[FitWarning]:
    """Every warning about ``result`` (see the module notes); ``train``: the training history."""
    out: list[FitWarning] = []
    silent_heat: dict[str, str] = {}
    for room in result.house.rooms:
        if room.heater_w > 0 and room.id in result.fits:
            why = heating_never_switches(train, room.id)
            if why is not None:
                silent_heat[room.id] = why
                out.append(FitWarning(room.id, "heating never switches",
                                      f"{why} in the training period: its capacities and heater efficiency "
                                      "cannot be seen and stay at their priors; log its heating (relay or power)"))
    for r, f in result.fits.items():
        if f.n_segments == 0 or f.status not in SOLVED:
            out.append(FitWarning(r, "not fitted", f"not fitted ({f.status}): its parameters are the priors"))
            continue
        bound = [n.split("__", 1)[0] if not n.startswith("H__") else "H " + " ↔ ".join(n.split("__")[1:])
                 for n, e in f.estimates.items() if _search_bound(n, e)]
        if bound:
            out.append(FitWarning(r, "at bound", f"{', '.join(bound)} at the bound of the search (a factor of "
                                  "ten from the prior): the data ask for more than the model allows; check the house "
                                  "file (area, windows, neighbours) and the heating's logged power"))
    for r, m in result.metrics.items():
        cause = _likely_cause(r, m.innovation_acf1, silent_heat, result)
        if np.isfinite(m.rmse_24h_k) and m.rmse_24h_k > POOR_24H_K:
            out.append(FitWarning(r, "poor predictions", f"24 h-ahead RMSE {m.rmse_24h_k:.2f} K (above "
                                  f"{POOR_24H_K:g} K): {cause}"))
        if np.isfinite(m.innovation_acf1) and m.innovation_acf1 > ACF_LIMIT:
            out.append(FitWarning(r, "autocorrelated residuals", f"one-step errors persist from step to step "
                                  f"(lag-1 autocorrelation {m.innovation_acf1:.2f}, above {ACF_LIMIT:g}): {cause}"))
    return out


def _search_bound(name: str, e: Estimate) -> bool:
    """At a bound of the search, not at a physical limit: capacities, conductances and the heater's
    efficiency at either end of their range (a factor of ten from the prior), the solar aperture at
    the floor's area. A share at 0 or 1, or an aperture of 0 (no sun), is an answer."""
    base = name.split("__", 1)[0]
    if not e.at_bound or base in SHARE_PARAMS:
        return False
    if base == "A_sol":
        return abs(e.value - e.upper) <= abs(e.value - e.lower)
    return base in LOG_PARAMS


def _likely_cause(room: str, acf1: float, silent_heat: dict[str, str], result: CalibrationResult) -> str:
    if room in silent_heat:
        return "likely because its heating is not seen (" + silent_heat[room] + ")"
    st = result.structures.get(room)
    if np.isfinite(acf1) and acf1 > ACF_LIMIT:
        kind = result.house.heating.kind
        tried = "" if st is None or not st.scores else f" (structures tried: {st.why.split(': ', 1)[-1].split(';')[0]})"
        return ("likely heat the model does not know of (occupants, cooking, appliances, another heat source), "
                f"or a structure the model lacks (heating kind {kind!r}{tried}, a missing neighbour or "
                "exterior wall)")
    return "likely the data (sensor placement, gaps, a changed use of the room) or too short a history"

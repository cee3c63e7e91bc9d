"""Data-quality report of a history: per signal completeness, consistency, regularity and
reasonableness, scored 0–1, and the periods a fit can trust. Bad data gives a report, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pems.calibration.history import RANGES, History, kind

#: Signals a thermal calibration needs (per room: T_room and P_heat).
REQUIRED = ("T_out", "ghi")


@dataclass
class SignalQuality:
    """Quality of one column."""

    name: str
    completeness: float  # share of steps with a value
    outliers: int  # values removed while loading (range, spikes)
    flatline_share: float  # share of steps inside a run of identical values longer than 6 h
    jumps: int  # step-to-step changes beyond what the physics allows
    regularity: float  # share of the source's intervals close to its median spacing
    reasonableness: float  # temperatures: share of heated hours in which the room did not cool
    score: float
    problems: list[str] = field(default_factory=list)


@dataclass
class QualityReport:
    """Per-signal quality, missing columns and the trusted periods."""

    signals: dict[str, SignalQuality]
    missing: list[str]
    trusted: list[tuple[pd.Timestamp, pd.Timestamp]]
    step: pd.Timedelta

    @property
    def score(self) -> float:
        """Overall score: the mean of the signals' scores, zero if a required signal is missing."""
        if self.missing or not self.signals:
            return 0.0
        return float(np.mean([s.score for s in self.signals.values()]))

    @property
    def trusted_days(self) -> float:
        return float(sum((b - a) / pd.Timedelta(days=1) for a, b in self.trusted))

    def to_frame(self) -> pd.DataFrame:
        rows = [{"signal": s.name, "score": s.score, "completeness": s.completeness, "outliers": s.outliers,
                 "flat-line share": s.flatline_share, "jumps": s.jumps, "regularity": s.regularity,
                 "reasonableness": s.reasonableness, "problems": "; ".join(s.problems)}
                for s in self.signals.values()]
        return pd.DataFrame(rows)

    def trusted_mask(self, index: pd.DatetimeIndex) -> np.ndarray:
        ok = np.zeros(len(index), dtype=bool)
        for a, b in self.trusted:
            ok |= (index >= a) & (index < b)
        return ok


JUMP_LIMIT = {"T_room": 3.0, "T_out": 8.0}  # K per step (15 min); more is a sensor or logging fault


def assess(history: History, min_trusted: pd.Timedelta = pd.Timedelta(days=1),
           raw_index: pd.DatetimeIndex | None = None) -> QualityReport:
    """Score every column of ``history`` and find the periods where all needed signals are good."""
    d = history.data
    step_h = history.step / pd.Timedelta(hours=1)
    needed = list(REQUIRED) + [f"T_room__{r}" for r in history.rooms] + [f"P_heat__{r}" for r in history.rooms]
    missing = [c for c in needed if c not in d.columns]
    signals: dict[str, SignalQuality] = {}
    flat_steps = int(round(6.0 / step_h))
    regularity = 1.0
    if raw_index is not None and len(raw_index) > 2:
        dt = raw_index.to_series().diff().dropna()
        med = dt.median()
        regularity = float(((dt - med).abs() <= 0.1 * med).mean())
    for c in d.columns:
        v = d[c]
        k = kind(c)
        problems = []
        completeness = float(v.notna().mean())
        if completeness < 0.9:
            problems.append(f"{100 * (1 - completeness):.0f} % missing")
        out = history.outliers.get(c, 0)
        if out:
            lo, hi = RANGES.get(k, (-np.inf, np.inf))
            problems.append(f"{out} values outside {lo:g}…{hi:g} or spikes removed")
        # flat lines: a sensor stuck at one value (powers and states may legitimately sit at 0)
        flat = 0.0
        if k in ("T_room", "T_out"):
            same = v.diff().abs() < 1e-9
            runs = same.groupby((~same).cumsum()).transform("sum")
            flat = float(((runs >= flat_steps) & same).mean())
            if flat > 0.01:
                problems.append(f"stuck for more than 6 h ({100 * flat:.0f} % of the time)")
        jumps = 0
        if k in JUMP_LIMIT:
            jumps = int((v.diff().abs() > JUMP_LIMIT[k] * step_h / 0.25).sum())
            if jumps:
                problems.append(f"{jumps} jumps over {JUMP_LIMIT[k]:g} K per 15 min")
        reason = 1.0
        if k == "T_room":
            room = c.split("__", 1)[1]
            heat = d.get(f"P_heat__{room}")
            if heat is not None and heat.notna().any():
                # over an hour of strong heating the room should not cool markedly
                n = max(1, int(round(1.0 / step_h)))
                on = heat.rolling(n).mean() > 0.5 * max(heat.max(), 1.0)
                cooled = v.diff(n) < -0.5
                heated = int(on.sum())
                if heated:
                    reason = 1.0 - float((on & cooled).sum()) / heated
                    if reason < 0.95:
                        problems.append(f"cooled while heated in {100 * (1 - reason):.0f} % of heated hours")
        score = completeness * (1.0 - flat) * reason * regularity * np.exp(-jumps / max(1, len(v)) * 100)
        score *= 1.0 if not out else max(0.5, 1.0 - out / max(1, len(v)) * 10)
        src = history.sources.get(c)
        if src and problems:  # say where to look: the source series behind the column
            problems = [f"{p} [{src}]" for p in problems]
        signals[c] = SignalQuality(c, completeness, out, flat, jumps, regularity, reason, float(score), problems)
    trusted = _trusted_periods(d, [c for c in needed if c in d.columns], signals, min_trusted)
    return QualityReport(signals, missing, trusted, history.step)


def _trusted_periods(d: pd.DataFrame, needed: list[str], signals: dict[str, SignalQuality],
                     min_len: pd.Timedelta) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Contiguous stretches where every needed signal has a value and is not stuck."""
    if not needed:
        return []
    ok = d[needed].notna().all(axis=1).to_numpy().copy()
    for c in needed:
        if c.startswith(("T_room__", "T_out")):
            v = d[c]
            same = (v.diff().abs() < 1e-9).to_numpy()
            runs = pd.Series(same).groupby((~pd.Series(same)).cumsum()).transform("sum").to_numpy()
            ok &= ~(same & (runs >= 24))
    periods = []
    step = d.index[1] - d.index[0] if len(d) > 1 else pd.Timedelta(minutes=15)
    start = None
    for t, good in zip(d.index, ok):
        if good and start is None:
            start = t
        elif not good and start is not None:
            if t - start >= min_len:
                periods.append((start, t))
            start = None
    if start is not None and d.index[-1] + step - start >= min_len:
        periods.append((start, d.index[-1] + step))
    return periods

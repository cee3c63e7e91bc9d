"""P10–P90 bands of the live forecasts, from the loop's own forecast errors by lead time.

A forecast file or a weather service gives one value per step, no spread. The loop, though, knows
how wrong its past forecasts were: each step it keeps what was forecast (PV, household load,
outdoor temperature over the horizon), and once the steps have passed it has what was measured.
The 10th and 90th percentiles of the errors at each lead (pooled in lead bands: the first hour, 1–3,
3–6, 6–12, 12–24 and 24–48 h) added to today's forecast give an empirical band, for any source. It
is an honest band: it is what this loop's forecasts actually missed by, here, lately (the last
:data:`KEEP_DAYS` days); a lead band with fewer than :data:`MIN_SAMPLES` errors has no band yet.
PV's errors are taken only where the sun was forecast to be up; where it is not, the band is zero
(pooled errors would put a band at night), and elsewhere it is kept within zero and the largest PV
measured.

A learned forecaster's own P10/P90 (:mod:`pems.live.learned`, ``Forecast.extras["quantiles"]``) is
taken instead where there is one.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pandas as pd

#: The forecast columns given bands.
COLUMNS = ("P_pv", "P_load", "T_out")
#: Lead bands [h]: errors are pooled within each.
LEAD_EDGES_H = (0.0, 1.0, 3.0, 6.0, 12.0, 24.0, 48.0)
KEEP_DAYS = 7.0
MIN_SAMPLES = 24
#: Forecasts kept: one every this many control steps (the errors of neighbouring issues are alike).
EVERY = 4


class ForecastErrors:
    """The loop's forecasts and what was measured, for the bands (see the module notes).

    Parameters
    ----------
    step_s
        Control step [s].
    horizon_h
        The longest lead kept [h].
    """

    def __init__(self, step_s: float, horizon_h: float = 48.0) -> None:
        self.step_s = float(step_s)
        self.n = int(round(horizon_h * 3600 / step_s))
        keep = int(KEEP_DAYS * 86400 / step_s)
        self._issued: deque[tuple[int, dict[str, np.ndarray]]] = deque(maxlen=max(1, keep // EVERY))
        self._measured: dict[str, dict[int, float]] = {c: {} for c in COLUMNS}
        self._keep = keep + self.n
        lead_h = np.arange(self.n) * self.step_s / 3600.0
        self._bucket = np.searchsorted(np.asarray(LEAD_EDGES_H), lead_h, side="right") - 1

    def copy(self) -> ForecastErrors:
        """A copy to compute bands from while the loop records on (the arrays are never changed)."""
        new = ForecastErrors.__new__(ForecastErrors)
        new.__dict__.update(self.__dict__)
        new._issued = deque(self._issued, maxlen=self._issued.maxlen)
        new._measured = {c: dict(m) for c, m in self._measured.items()}
        return new

    def _slot(self, t: pd.Timestamp) -> int:
        return int(pd.Timestamp(t).value // int(round(self.step_s * 1e9)))

    def record(self, t: pd.Timestamp, forecast: dict[str, np.ndarray], measured: dict[str, float]) -> None:
        """Step ``t``: the forecast issued at it (column → values from ``t`` on) and what was measured
        over the step before it (column → mean)."""
        k = self._slot(t)
        for c, v in measured.items():
            if c in self._measured and v is not None and np.isfinite(v):
                m = self._measured[c]
                m[k - 1] = float(v)
                if len(m) > self._keep:
                    for old in sorted(m)[: len(m) - self._keep]:
                        del m[old]
        if k % EVERY == 0 and forecast:
            self._issued.append((k, {c: self._padded(v) for c, v in forecast.items() if c in COLUMNS}))

    def _padded(self, v: np.ndarray) -> np.ndarray:
        """The first :attr:`n` values of a forecast (NaN past its end)."""
        out = np.full(self.n, np.nan)
        v = np.asarray(v[: self.n], dtype=float)
        out[: len(v)] = v
        return out

    def bands(self, t: pd.Timestamp, forecast: dict[str, np.ndarray]) -> dict[str, dict[str, list]]:
        """Column → {"p10": [...], "p90": [...]} over ``forecast``'s steps from ``t`` (None where a
        lead band has too few errors), and "samples" per lead band."""
        out: dict[str, dict[str, list]] = {}
        n_b = len(LEAD_EDGES_H) - 1
        for c, f in forecast.items():
            if c not in COLUMNS:
                continue
            meas = self._measured[c]
            issued = [(k0, v[c]) for k0, v in self._issued if c in v]
            q: list = [None] * n_b
            if issued and meas:
                # what was measured at every (issue, lead), as one array: vectorised (a week of issues)
                slots = np.fromiter(meas.keys(), dtype=np.int64, count=len(meas))
                base = int(slots.min())
                M = np.full(int(slots.max()) - base + 1, np.nan)
                M[slots - base] = np.fromiter(meas.values(), dtype=float, count=len(meas))
                K = np.array([k0 for k0, _ in issued], dtype=np.int64)[:, None] + np.arange(self.n)[None, :] - base
                V = np.vstack([v for _, v in issued])
                Y = np.where((K >= 0) & (K < len(M)), M[np.clip(K, 0, len(M) - 1)], np.nan)
                E = Y - V
                if c == "P_pv":
                    E[V <= 0.0] = np.nan
                for b in range(n_b):
                    e = E[:, self._bucket == b]
                    e = e[np.isfinite(e)]
                    if e.size >= MIN_SAMPLES:
                        q[b] = (np.percentile(e, [10, 90]), e.size)
            f = np.asarray(f, dtype=float)
            n = min(len(f), self.n)
            lo, hi = np.full(len(f), np.nan), np.full(len(f), np.nan)
            for j in range(n):
                qj = q[self._bucket[j]]
                if qj is not None:
                    lo[j], hi[j] = f[j] + qj[0][0], f[j] + qj[0][1]
            if c == "P_pv":
                top = max(meas.values()) if meas else np.inf
                night = f <= 0.0
                lo, hi = np.clip(lo, 0.0, top), np.clip(hi, 0.0, top)
                lo[night], hi[night] = 0.0, 0.0  # no sun forecast: none, surely (not a pooled artefact)
            elif c == "P_load":
                lo, hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
            out[c] = {"p10": lo, "p90": hi, "samples": [0 if qb is None else qb[1] for qb in q]}
        return out

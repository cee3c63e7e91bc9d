"""Learned PV and load forecasts in the live loop (``[forecast] learned = ["pv", "load"]``).

The forecast of a control step starts from the configured sources (a weather file through the
twin's pvlib chain for ``P_pv``, a standard profile or a file for ``P_load``); for each role named
in ``learned`` the model registry's champion (``pems forecast fit … --registry``) replaces that
column with its median, and the internal gains that follow the household load with it. A learned
forecaster works from what the home did lately: the load's lags need a week of measured load, the
PV correction yesterday's yield. The loop keeps those step means in :class:`MeasuredHistory`
(in its state folder, so that a restart keeps them; a history file can seed it). Where a champion
cannot forecast (too little history, a failure, a non-finite value) the configured source stands
and the forecast says why (:attr:`~pems.twin.signals.Forecast.extras` ``["sources"]``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pems.errors import InputError

log = logging.getLogger(__name__)

#: Roles the live forecast can learn, and the model column each replaces.
ROLES: dict[str, str] = {"pv": "P_pv", "load": "P_load"}
#: Suffix of the day-ahead forecasts kept beside what was measured (live residuals, drift).
DAY_AHEAD = "_day_ahead"
#: Columns kept: measured PV and household load [W]; the weather forecast of each step as issued
#: (``ghi`` [W m⁻²], ``T_out`` [°C]: the PV correction compares yesterday's yield with it); the
#: champions' day-ahead medians of PV and load [W].
COLUMNS: tuple[str, ...] = ("P_pv", "P_load", "ghi", "T_out", *(c + DAY_AHEAD for c in ROLES.values()))
#: The load forecaster's level is the mean of the last week: it needs most of one.
MIN_LOAD_HISTORY = pd.Timedelta(days=7)
MIN_LOAD_SHARE = 0.5
#: How a role whose champion could not forecast is reported: ``f"{FALLBACK}: <why>"``.
FALLBACK = "configured source"


class MeasuredHistory:
    """Step means of the home's PV, load and forecast weather over the last ``keep``.

    Parameters
    ----------
    path
        Parquet file it is kept in (written atomically by :meth:`save`), or None.
    seeds
        Canonical history tables (CSV/Parquet, docs/reference/history.md) read first; what the loop measures
        later wins where both have a value.
    step
        The control step (seed tables are averaged onto it).
    keep
        How much history is kept [time].
    """

    def __init__(self, path: Path | None, seeds: Iterable[Path] = (), step: pd.Timedelta = pd.Timedelta(minutes=15),
                 keep: pd.Timedelta = pd.Timedelta(days=40)) -> None:
        self.path, self.step, self.keep = path, step, keep
        self.saving = True  # False: record in memory only (a loop that does not hold the state lock yet)
        self.meta: dict[str, str] = {}  # column → what wrote it (the day-ahead forecasts: the model's ref)
        frames = [self._read_seed(p) for p in seeds]
        if path is not None and path.is_file():
            frames.append(self._read_own(path))
        self.data = pd.DataFrame(columns=list(COLUMNS), dtype=float, index=pd.DatetimeIndex([], tz="UTC", name="time"))
        for f in frames:
            if f is not None and len(f):
                self._merge(f)
        self._trim()

    @property
    def meta_path(self) -> Path | None:
        return None if self.path is None else self.path.with_suffix(".json")

    def _read_own(self, path: Path) -> pd.DataFrame | None:
        """The loop's own file: on the control step's grid, UTC, numbers. One that cannot be read
        (damaged, another version) is moved aside, never overwritten: it costs history, not the loop."""
        try:
            f = pd.read_parquet(path)
            if not isinstance(f.index, pd.DatetimeIndex):
                raise ValueError("no time index")
            f.index = f.index.tz_localize("UTC") if f.index.tz is None else f.index.tz_convert("UTC")
            f = f.reindex(columns=list(COLUMNS)).apply(pd.to_numeric, errors="coerce").astype(float)
            f = f.resample(self.step, label="left", closed="left").mean()
            if self.meta_path is not None and self.meta_path.is_file():
                import json

                self.meta = {str(k): str(v) for k, v in json.loads(self.meta_path.read_text()).items()}
            return f
        except Exception as exc:  # noqa: BLE001 - see the docstring
            aside = path.with_name(f"{path.name}.unreadable-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}")
            log.warning("the measured history %s cannot be read (%s); kept as %s, starting anew", path, exc, aside.name)
            try:
                os.replace(path, aside)
            except OSError:
                pass
            return None

    def _read_seed(self, path: Path) -> pd.DataFrame:
        """A history table, cleaned and averaged onto the step as ``pems calibrate`` reads it
        (time-weighted, gaps up to an hour bridged): an hourly or on-change log fills every step."""
        from pems.calibration.history import prepare_history, read_table

        raw = read_table(path)
        # a whole-house meter (P_load_total) is the household load once the heating is subtracted
        cols = [c for c in raw if c in COLUMNS or c == "P_load_total" or c.startswith("P_heat__")]
        if not cols:
            raise InputError(path, "forecast.history", f"no column of {', '.join(COLUMNS[:4])}")
        data = prepare_history(raw[cols], str(path), None, self.step, require_rooms=False).data
        return data.reindex(columns=[c for c in COLUMNS if c in data])

    def _merge(self, frame: pd.DataFrame) -> None:
        f = frame.reindex(columns=list(COLUMNS)).astype(float)
        self.data = f.combine_first(self.data) if len(self.data) else f
        self.data.index.name = "time"

    def _trim(self) -> None:
        if len(self.data):
            self.data = self.data.loc[self.data.index >= self.data.index[-1] - self.keep].sort_index()

    def record(self, t: pd.Timestamp, **values: float) -> None:
        """Set the finite ``values`` of the step starting at ``t`` (UTC); :meth:`save` writes them."""
        vals = {k: float(v) for k, v in values.items() if k in COLUMNS and v is not None and np.isfinite(v)}
        if not vals:
            return
        t = pd.Timestamp(t)
        if t not in self.data.index:
            self.data.loc[t] = np.nan
            self.data = self.data.sort_index()
        for k, v in vals.items():
            self.data.loc[t, k] = v
        self._trim()

    def keep_missing(self, column: str, values: pd.Series) -> None:
        """Set ``column`` where it has no value yet (a forecast first made is the one kept)."""
        idx = self.data.index.union(pd.DatetimeIndex(values.index))
        d = self.data.reindex(idx)
        d[column] = d[column].fillna(values.reindex(idx).astype(float))
        d.index.name = "time"
        self.data = d
        self._trim()

    def save(self) -> None:
        """Write the file atomically (a temporary file of its own, fsync, rename)."""
        if self.path is None or not self.saving:
            return
        import json
        import tempfile

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for target, write in ((self.path, lambda f: self.data.to_parquet(f)),
                                  (self.meta_path, lambda f: f.write(json.dumps(self.meta).encode()))):
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
                try:
                    with os.fdopen(fd, "wb") as f:
                        write(f)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        except (OSError, ValueError) as exc:  # a full disk must not stop the control of the home
            log.error("cannot save the measured history: %s", exc)

    def forget(self, column: str, writer: str) -> None:
        """Drop ``column`` unless ``writer`` wrote it (a new champion starts its own record)."""
        if self.meta.get(column) != writer:
            self.data[column] = np.nan
            self.meta[column] = writer

    def frame(self) -> pd.DataFrame:
        return self.data

    def covered(self, column: str, until: pd.Timestamp, span: pd.Timedelta) -> float:
        """Share of the steps in ``[until − span, until)`` with a value of ``column``."""
        d = self.data
        sel = d.loc[(d.index >= until - span) & (d.index < until), column] if column in d else pd.Series(dtype=float)
        return float(np.isfinite(sel.to_numpy(dtype=float)).sum() / max(1, int(round(span / self.step))))


class LearnedForecasts:
    """The registry's champion forecasters for ``roles``, applied to a live forecast table.

    Raises
    ------
    InputError
        A role without a champion in the registry, or a champion of the wrong kind.
    """

    def __init__(self, roles: Iterable[str], registry_root: Path, where: Path, history: MeasuredHistory,
                 tz: str = "UTC", record_drift: bool = True) -> None:
        from pems.controllers.forecast.registry import ModelRegistry

        reg = ModelRegistry(registry_root)
        self.registry, self.tz, self.record_drift = reg, tz, record_drift
        self.history = history
        self.models: dict[str, tuple[str, Any]] = {}
        self._checked_day: Any = None  # the local date of the last drift check
        self.quantiles: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # column → (P10, P90) of the last table
        for role in roles:
            card = reg.champion(role)
            if card is None:
                raise InputError(where, "forecast.learned", f"no champion {role} forecaster in {registry_root}; learn "
                                                            f"one with `pems forecast fit {role} --registry DIR`")
            try:
                model = reg.load(card.ref)
            except Exception as exc:  # noqa: BLE001 - a truncated file, another library version
                raise InputError(where, "forecast.learned", f"cannot load the champion {card.ref}: "
                                                            f"{type(exc).__name__}: {exc}") from None
            if getattr(model, "target", None) != ROLES[role] or not hasattr(model, "predict"):
                raise InputError(where, "forecast.learned", f"the champion {card.ref} does not forecast {ROLES[role]}")
            step = getattr(model, "step", None)
            if step is not None and pd.Timedelta(step) != history.step:
                raise InputError(where, "forecast.learned", f"the champion {card.ref} was fitted on "
                                                            f"{pd.Timedelta(step).total_seconds() / 60:g}-minute steps, "
                                                            f"the loop's are {history.step.total_seconds() / 60:g} minutes")
            self.models[role] = (card.ref, model)
            history.forget(ROLES[role] + DAY_AHEAD, card.ref)

    def _data(self, tab: pd.DataFrame, t: pd.Timestamp) -> pd.DataFrame:
        """The past (measured, before ``t``) and the weather forecast over the table's steps."""
        past = self.history.frame()
        past = past.loc[past.index < t]
        future = pd.DataFrame({c: tab[c] for c in ("ghi", "T_out") if c in tab}, index=tab.index)
        return pd.concat([past, future.reindex(columns=past.columns)]) if len(past) else future

    def apply(self, tab: pd.DataFrame, t: pd.Timestamp) -> dict[str, str]:
        """Replace the learned columns of ``tab`` (in place) by the champions' medians.

        Returns
        -------
        dict
            Role → the champion's reference, or ``"<configured source>: <why>"`` where it stood.
        """
        data = self._data(tab, t)
        used: dict[str, str] = {}
        self.quantiles: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # column → (P10, P90) of this table
        for role, (ref, model) in self.models.items():
            col = ROLES[role]
            try:
                if role == "load":
                    share = self.history.covered("P_load", t, MIN_LOAD_HISTORY)
                    if share < MIN_LOAD_SHARE:  # (the reason stays the same while the week fills)
                        raise ValueError(f"less than {100 * MIN_LOAD_SHARE:.0f} % of the last "
                                         f"{MIN_LOAD_HISTORY.days} days of household load measured")
                qf = model.predict(data, t, pd.DatetimeIndex(tab.index))
                p50 = np.asarray(qf.median, dtype=float)
                if p50.shape != (len(tab),) or not np.isfinite(p50).all():
                    raise ValueError("a non-finite forecast")
            except Exception as exc:  # noqa: BLE001 - a learned forecast that fails leaves the configured one
                used[role] = f"{FALLBACK}: {exc}"
                continue
            tab[col] = np.maximum(p50, 0.0)
            used[role] = ref
            try:  # its own P10–P90 for the live page (a forecaster without those levels has none)
                self.quantiles[col] = (np.maximum(qf.q(0.1), 0.0), np.maximum(qf.q(0.9), 0.0))
            except (KeyError, AttributeError):
                pass
            self._keep_day_ahead(col, tab[col], t)
        return used

    # ------------------------------------------------------------------ live residuals and drift
    def _next_midnight(self, t: pd.Timestamp) -> pd.Timestamp:
        local = pd.Timestamp(t).tz_convert(self.tz)
        nxt = (local.tz_localize(None).normalize() + pd.Timedelta(days=1))
        return nxt.tz_localize(self.tz, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC")

    def _keep_day_ahead(self, col: str, forecast: pd.Series, t: pd.Timestamp) -> None:
        """Keep the median first forecast for each step up to the next local midnight: issued at
        midnight, that is the whole coming day, with the leads (0–24 h) the fit was scored on."""
        self.history.keep_missing(col + DAY_AHEAD, forecast.loc[forecast.index < self._next_midnight(t)])

    def residuals(self, role: str) -> np.ndarray:
        """|measured − day-ahead median| [W] over the kept history."""
        col = ROLES[role]
        d = self.history.frame()
        e = np.abs(d[col].to_numpy(dtype=float) - d[col + DAY_AHEAD].to_numpy(dtype=float))
        return e[np.isfinite(e)]

    def check_drift(self, t: pd.Timestamp) -> dict[str, Any]:
        """Once a local day (the first call on it): a Page–Hinkley test of the load champion's live
        day-ahead residuals against the MAE it was accepted with, recorded on its registry card
        (``pems models list`` shows "retrain due"). Returns role →
        :class:`~pems.controllers.forecast.registry.DriftReport` for the roles checked now (with at
        least a day of residuals).

        PV is not checked: its accepted MAE comes from a backtest on the *measured* weather (an
        upper bound of the skill, see :mod:`pems.controllers.forecast.home`), against which live
        residuals on forecast weather would raise false alarms.
        """
        from pems.controllers.forecast.registry import page_hinkley

        day = pd.Timestamp(t).tz_convert(self.tz).date()  # (a local midnight may not exist: no normalize)
        if self._checked_day is not None and day <= self._checked_day:
            return {}
        self._checked_day = day
        out: dict[str, Any] = {}
        for role, (ref, _) in self.models.items():
            if role != "load":
                continue
            e = self.residuals(role)
            if len(e) < int(round(pd.Timedelta(days=1) / self.history.step)):
                continue
            try:
                if self.record_drift:
                    out[role] = self.registry.check_drift(ref, e)
                else:
                    mae = self.registry.card(ref).reference_mae
                    if mae is not None:
                        out[role] = page_hinkley(e, mae)
            except Exception as exc:  # noqa: BLE001 - a drift check never costs the forecast
                log.warning("drift check of %s failed: %s", ref, exc)
        return out

"""A model registry: every fitted forecaster and corrector, versioned, with a champion per role.

Layout on disk (a folder a user can back up, diff and prune by hand)::

    <root>/<role>/<name>/v001/model.joblib   the fitted object
    <root>/<role>/<name>/v001/card.json      its model card: data range and hash, features,
                                             metrics, settings, library versions, drift status
    <root>/champions.json                    role → "name/v001"

A reference is ``role/name/vNNN`` (one version), ``role/name`` (its latest) or ``role`` (the
role's champion). Nothing is ever overwritten: registering makes a new version; promoting only
rewrites ``champions.json`` (atomically).

Drift: :func:`page_hinkley` watches the absolute residuals of a model in use against the error
level measured when it was fitted; when their mean has risen persistently the card is flagged
``retrain_due`` and ``pems models list`` says so.
"""

from __future__ import annotations

import json
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from pems.errors import InputError

#: Libraries whose versions decide whether a stored model still loads and behaves the same.
LIBRARIES = ("pems", "numpy", "pandas", "scikit-learn", "scipy", "pvlib", "casadi", "joblib")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def default_root() -> Path:
    """``$PEMS_MODELS``, else ``$STATE_DIRECTORY/models`` under systemd, else ``$XDG_DATA_HOME/pems/models``
    (``~/.local/share/pems/models``): see :mod:`pems.paths`."""
    from pems.paths import models_dir

    return models_dir()


@dataclass
class DriftReport:
    """Result of a drift check on live residuals."""

    retrain_due: bool
    statistic: float  # Page–Hinkley statistic at the end [same unit as the residuals]
    threshold: float
    reference_mae: float
    recent_mae: float
    n: int
    checked: str = ""
    alarm_at: int | None = None  # index of the first alarm


@dataclass
class ModelCard:
    """What the registry knows of one model version."""

    role: str
    name: str
    version: int
    created: str
    kind: str  # class name
    data: dict[str, Any] = field(default_factory=dict)  # start, end, rows, sha256, source
    features: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    drift: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        return f"{self.role}/{self.name}/v{self.version:03d}"

    @property
    def reference_mae(self) -> float | None:
        """The error level the model was accepted with (backtest or hold-out MAE)."""
        v = self.metrics.get("mae")
        if v is None and isinstance(self.metrics.get("model"), dict):
            v = self.metrics["model"].get("mae")
        return float(v) if v is not None else None


def page_hinkley(abs_residuals: np.ndarray, reference: float, delta: float | None = None,
                 threshold: float | None = None) -> DriftReport:
    """Page–Hinkley test for an increase of the mean absolute residual above ``reference``.

    ``m_t = Σ (|e_i| − reference − δ)``, ``PH_t = m_t − min_{i≤t} m_i``; an alarm when
    ``PH_t > λ``. Defaults: ``δ = 0.1·reference`` (tolerated drift), ``λ = 50·reference`` (about
    two days of hourly residuals twice the reference before it fires; a burst of a few bad values
    does not).
    """
    e = np.abs(np.asarray(abs_residuals, dtype=float))
    e = e[np.isfinite(e)]
    ref = float(reference)
    delta = 0.1 * ref if delta is None else delta
    lam = 50.0 * ref if threshold is None else threshold
    if len(e) == 0 or ref <= 0:
        return DriftReport(False, 0.0, lam, ref, float("nan"), len(e))
    m = np.cumsum(e - ref - delta)
    ph = m - np.minimum.accumulate(np.minimum(m, 0.0))
    alarm = np.flatnonzero(ph > lam)
    recent = e[-max(1, len(e) // 4):]
    return DriftReport(bool(len(alarm)), float(ph[-1]), float(lam), ref, float(np.mean(recent)), len(e),
                       alarm_at=int(alarm[0]) if len(alarm) else None)


class ModelRegistry:
    """Versioned storage of fitted models with champions per role."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    # ------------------------------------------------------------------ writing
    def register(self, model: Any, role: str, name: str | None = None, *, data: dict | None = None,
                 metrics: dict | None = None, features: list[str] | None = None, settings: dict | None = None,
                 notes: str = "", promote_if_first: bool = True) -> ModelCard:
        """Store ``model`` as the next version of ``role/name``; the first model of a role becomes
        its champion."""
        import joblib

        check_name(role, "role")
        name = name or type(model).__name__.lower()
        check_name(name, "name")
        folder = self.root / role / name
        folder.mkdir(parents=True, exist_ok=True)
        versions = [int(p.name[1:]) for p in folder.glob("v[0-9][0-9][0-9]") if p.is_dir()]
        version = max(versions, default=0) + 1
        desc = model.describe() if hasattr(model, "describe") else {}
        card = ModelCard(role=role, name=name, version=version,
                         created=datetime.now(UTC).isoformat(timespec="seconds"), kind=type(model).__name__,
                         data=dict(data or desc.get("trained_on") or {}), features=list(features or desc.get("features") or []),
                         metrics=_jsonable(metrics or {}), settings=_jsonable(settings or desc.get("settings") or {}),
                         libraries=library_versions(), notes=notes)
        vdir = folder / f"v{version:03d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".v{version:03d}-", dir=folder))
        joblib.dump(model, tmp / "model.joblib")
        (tmp / "card.json").write_text(json.dumps(asdict(card), indent=2), encoding="utf-8")
        tmp.rename(vdir)  # a version appears complete or not at all
        if promote_if_first and self.champion(role) is None:
            self.promote(card.ref)
        return card

    def promote(self, ref: str) -> ModelCard:
        """Make a version its role's champion."""
        card = self.card(ref)
        champions = self._champions()
        champions[card.role] = f"{card.name}/v{card.version:03d}"
        path = self.root / "champions.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(champions, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
        return card

    def record_drift(self, ref: str, report: DriftReport) -> ModelCard:
        card = self.card(ref)
        report.checked = datetime.now(UTC).isoformat(timespec="seconds")
        card.drift = asdict(report)
        path = self._dir(card) / "card.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(card), indent=2), encoding="utf-8")
        tmp.replace(path)
        return card

    def check_drift(self, ref: str, residuals: np.ndarray, **kw) -> DriftReport:
        """Page–Hinkley on a model's live residuals against its reference MAE; stored on its card."""
        card = self.card(ref)
        ref_mae = card.reference_mae
        if ref_mae is None:
            raise InputError(str(self._dir(card) / "card.json"), "metrics.mae",
                             "the model card has no reference MAE to compare live residuals with")
        report = page_hinkley(residuals, ref_mae, **kw)
        self.record_drift(card.ref, report)
        return report

    # ------------------------------------------------------------------ reading
    def cards(self, role: str | None = None) -> list[ModelCard]:
        out = []
        if not self.root.is_dir():
            return out
        for p in sorted(self.root.glob("*/*/v[0-9][0-9][0-9]/card.json")):
            card = _read_card(p)
            if role is None or card.role == role:
                out.append(card)
        return out

    def champion(self, role: str) -> ModelCard | None:
        ref = self._champions().get(role)
        return self.card(f"{role}/{ref}") if ref else None

    def is_champion(self, card: ModelCard) -> bool:
        return self._champions().get(card.role) == f"{card.name}/v{card.version:03d}"

    def card(self, ref: str) -> ModelCard:
        """The card of ``role/name/vNNN``, ``role/name`` (latest) or ``role`` (champion)."""
        parts = ref.strip("/").split("/")
        where = str(self.root)
        if len(parts) == 1:
            champ = self._champions().get(parts[0])
            if not champ:
                raise InputError(where, ref, f"no champion for role {parts[0]!r}; registered roles: "
                                             f"{', '.join(sorted({c.role for c in self.cards()})) or 'none'}")
            parts = [parts[0], *champ.split("/")]
        if len(parts) == 2:
            versions = sorted((self.root / parts[0] / parts[1]).glob("v[0-9][0-9][0-9]/card.json"))
            if not versions:
                raise InputError(where, ref, "no such model (expected role/name[/vNNN]; see `pems models list`)")
            return _read_card(versions[-1])
        if len(parts) == 3:
            p = self.root / parts[0] / parts[1] / parts[2] / "card.json"
            if not p.is_file():
                raise InputError(where, ref, "no such model version (see `pems models list`)")
            return _read_card(p)
        raise InputError(where, ref, "expected role, role/name or role/name/vNNN")

    def load(self, ref: str) -> Any:
        import joblib

        return joblib.load(self._dir(self.card(ref)) / "model.joblib")

    def _dir(self, card: ModelCard) -> Path:
        return self.root / card.role / card.name / f"v{card.version:03d}"

    def _champions(self) -> dict[str, str]:
        p = self.root / "champions.json"
        if not p.is_file():
            return {}
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(str(p), "", f"not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _read_card(path: Path) -> ModelCard:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ModelCard(**raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(str(path), "", f"not a valid model card ({exc})") from None


def check_name(v: str, what: str) -> None:
    """A role or model name the registry can hold (one folder name), else InputError."""
    if not v or "/" in v or v.startswith(".") or not all(c.isalnum() or c in "-_+." for c in v):
        raise InputError("model registry", what, f"{v!r}: use letters, digits, '-', '_', '+', '.'")


def _jsonable(obj: Any) -> Any:
    """Numbers, strings, lists and dicts only (numpy scalars and NaN made JSON-safe)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)

"""The model registry: versions never overwritten, champions per role, cards with provenance, drift."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pems.cli import main
from pems.controllers.forecast.registry import ModelRegistry, page_hinkley
from pems.errors import InputError


class Doubler:
    """A stand-in model: anything picklable with ``describe()`` can be registered."""

    def __init__(self, k: float = 2.0) -> None:
        self.k = k

    def predict(self, x):
        return self.k * np.asarray(x)

    def describe(self) -> dict:
        return {"features": ["x"], "settings": {"k": self.k},
                "trained_on": {"start": "2024-01-01", "end": "2024-02-01", "rows": "100", "sha256": "abc"}}


def test_versions_champions_and_cards(tmp_path):
    reg = ModelRegistry(tmp_path)
    c1 = reg.register(Doubler(2.0), "load", "gbm", metrics={"mae": 100.0})
    c2 = reg.register(Doubler(3.0), "load", "gbm", metrics={"mae": 90.0})
    assert (c1.ref, c2.ref) == ("load/gbm/v001", "load/gbm/v002")
    assert reg.champion("load").ref == c1.ref  # the first is champion; later ones must be promoted
    assert reg.card("load/gbm").ref == c2.ref  # latest
    assert reg.load("load/gbm/v001").k == 2.0 and reg.load("load").k == 2.0
    reg.promote("load/gbm/v002")
    assert reg.champion("load").ref == c2.ref and reg.load("load").k == 3.0
    card = reg.card("load/gbm/v002")
    assert card.data["sha256"] == "abc" and card.features == ["x"] and card.reference_mae == 90.0
    assert {"numpy", "scikit-learn", "python"} <= set(card.libraries)
    # nothing is overwritten: v001 is still there, intact
    assert reg.load("load/gbm/v001").k == 2.0
    assert [c.ref for c in reg.cards()] == ["load/gbm/v001", "load/gbm/v002"]


def test_bad_references_name_what_exists(tmp_path):
    reg = ModelRegistry(tmp_path)
    reg.register(Doubler(), "pv", "ratio")
    with pytest.raises(InputError, match="no champion for role 'load'.*pv"):
        reg.card("load")
    with pytest.raises(InputError, match="no such model version"):
        reg.card("pv/ratio/v009")
    with pytest.raises(InputError):
        reg.register(Doubler(), "pv", "../escape")


def test_page_hinkley_fires_on_a_persistent_rise_only():
    rng = np.random.default_rng(0)
    ref = 1.0
    calm = np.abs(rng.normal(0, 1.25, 2000))  # mean |e| ≈ 1.0: at the reference level
    assert not page_hinkley(calm, ref).retrain_due
    burst = calm.copy()
    burst[500:505] = 8.0  # a few bad values: not a drift
    assert not page_hinkley(burst, ref).retrain_due
    drift = np.r_[calm[:1000], 2.5 * calm[1000:]]
    rep = page_hinkley(drift, ref)
    assert rep.retrain_due and 1000 <= rep.alarm_at < 1150


def test_models_cli(tmp_path, capsys):
    reg = ModelRegistry(tmp_path)
    reg.register(Doubler(2.0), "load", "gbm", metrics={"mae": 1.0})
    reg.register(Doubler(3.0), "load", "gbm", metrics={"mae": 1.0})
    assert main(["models", "--registry", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert "* load/gbm/v001" in out and "  load/gbm/v002" in out
    assert main(["models", "--registry", str(tmp_path), "promote", "load/gbm/v002"]) == 0
    assert main(["models", "--registry", str(tmp_path), "show", "load"]) == 0
    shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert shown["version"] == 2 and shown["champion"] is True
    res = tmp_path / "res.csv"
    res.write_text("residual\n" + "\n".join(str(v) for v in [3.0] * 200), encoding="utf-8")
    assert main(["models", "--registry", str(tmp_path), "drift", "load", "--residuals", str(res)]) == 4  # ExitCode.DRIFT
    assert "RETRAIN DUE" in capsys.readouterr().out
    assert main(["models", "--registry", str(tmp_path), "list"]) == 0
    assert "retrain due" in capsys.readouterr().out
    assert main(["models", "--registry", str(tmp_path), "show", "price"]) == 2
    assert "no champion for role 'price'" in capsys.readouterr().err

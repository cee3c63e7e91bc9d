"""The whole-house refinement (all rooms fitted jointly) on twin-made histories with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import TWO_ROOMS, house_from
from pems.calibration.fit import FitSettings, RoomProblem
from pems.calibration.history import prepare_history
from pems.calibration.joint import refine_jointly
from pems.calibration.quality import assess
from pems.calibration.synthetic import make_history
from pems.twin.model import build_model

PLAIN = {**TWO_ROOMS, "rooms": [
    {"id": "a", "floor_area_m2": 20, "heater_w": 2000, "neighbours": ["b"],
     "windows": [{"azimuth_deg": 180, "area_m2": 3}]},
    {"id": "b", "floor_area_m2": 12, "heater_w": 1200}]}


def room_tau(model, room):
    p = RoomProblem(model, room, FitSettings(), 900.0)
    return np.sort(-1 / np.linalg.eigvals(np.asarray(p.A(np.zeros(len(p.specs))))).real / 3600)


@pytest.fixture(scope="module")
def clean():
    """Three weeks without unmodelled gains, sensors with 0.02 K noise: what the model can explain."""
    house = house_from(PLAIN)
    syn = make_history(house, "2024-01-08", 21, seed=11, occupancy_w=0.0, sensor_noise_k=0.02, quantum_k=0.0)
    return house, syn, prepare_history(syn.data, "synthetic", house)


@pytest.mark.slow
def test_from_a_start_30_percent_off_the_joint_fit_finds_the_truth(clean):
    """The truth with its couplings and air capacities 30 % off: the refinement brings every room's
    time constants back within 3 % and the coupling within 10 % (priors: the house file's)."""
    house, syn, hist = clean
    truth = syn.truth
    off = {n: truth.param(n) * f for n, f in (("H__a__b", 1.3), ("C_air__a", 0.7), ("C_air__b", 1.3),
                                              ("H_am__a", 1.3))}
    start = truth.with_parameters(off)
    assert abs(room_tau(start, "a")[0] / room_tau(truth, "a")[0] - 1) > 0.15  # the start is really off
    data = hist.data
    jf = refine_jointly(build_model(house), start, data, hist.step, assess(hist).trusted_mask(data.index),
                        FitSettings(), {})
    assert jf.status == "Solve_Succeeded" and jf.n_segments >= 19
    assert jf.rmse_k < 0.5 * jf.rmse_start_k and jf.rmse_k < 0.03  # down to the sensor noise
    fitted = truth.with_parameters(jf.values)
    for r in ("a", "b"):
        np.testing.assert_allclose(room_tau(fitted, r), room_tau(truth, r), rtol=0.03)
    assert jf.values["H__a__b"] == pytest.approx(truth.param("H__a__b"), rel=0.10)
    name, shift = jf.largest_change
    assert name in off and shift > 0


@pytest.mark.slow
def test_from_the_truth_it_stays(clean):
    """Started at the truth, the joint fit has nothing to correct: parameters within 5 %."""
    house, syn, hist = clean
    data = hist.data
    jf = refine_jointly(build_model(house), syn.truth, data, hist.step, assess(hist).trusted_mask(data.index),
                        FitSettings(), {}, max_segments=7)
    assert jf.n_segments == 7
    for name in ("H__a__b", "C_air__a", "C_air__b", "H_am__a", "H_out__b"):
        assert jf.values[name] == pytest.approx(syn.truth.param(name), rel=0.05), name


@pytest.mark.slow
def test_calibrate_with_the_refinement_reports_it(clean, tmp_path):
    """``--joint DAYS`` runs it after the per-room fits: the calibrated house holds its values, the
    summary, calibration.json and the report say what it did."""
    import json

    from pems.calibration.calibrate import calibrate
    from pems.calibration.outputs import write_calibration

    house, syn, hist = clean
    res = calibrate(house, hist, FitSettings(joint=True, joint_segments=7), workers=1)
    jf = res.joint
    assert jf is not None and jf.n_segments == 7 and res.summary["joint"]["segments"] == 7
    assert jf.rmse_k <= jf.rmse_start_k
    model = build_model(res.house)
    assert model.param("H__a__b") == pytest.approx(jf.values["H__a__b"], rel=1e-4)
    assert res.couplings[("a", "b")].value == pytest.approx(jf.values["H__a__b"])
    write_calibration(res, tmp_path, "synthetic")
    assert json.loads((tmp_path / "calibration.json").read_text())["joint"]["segments"] == 7
    assert "Whole-house refinement" in (tmp_path / "report.html").read_text()

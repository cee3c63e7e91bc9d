"""One conformance check every controller and every plant must pass (Gymnasium's env_checker spirit)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import TWO_ROOMS, write_constant_inputs, write_scenario
from pems.controllers import available, make_controller
from pems.controllers.base import Controller
from pems.scenarios.runner import prepare, run
from pems.scenarios.spec import load_scenario
from pems.twin.plant import Plant, SimulatedHome
from pems.twin.signals import Action, Observation

HOUSE = {**TWO_ROOMS, "pv": [{"kwp": 3.0}], "inverter": {"ac_limit_w": 4000},
         "battery": {"capacity_kwh": 5.0, "max_charge_w": 2000, "max_discharge_w": 2000}}


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conformance")
    write_constant_inputs(folder, "2024-01-10T00:00:00Z", 0.5, T_out=-2.0, ghi=50.0)
    return prepare(load_scenario(write_scenario(folder, HOUSE, days=0.25, start="2024-01-10T00:00:00Z",
                                                mpc={"horizon_hours": 6})))


def test_simulated_home_is_a_plant(prep):
    plant = SimulatedHome(prep.model, prep.inputs, prep.x0)
    assert isinstance(plant, Plant)
    obs = plant.reset()
    assert isinstance(obs, Observation) and obs.T_room.shape == (prep.model.n_rooms,)
    t = obs.time
    for _ in range(3):
        obs = plant.step(Action(heat_setpoint_c=np.full(prep.model.n_rooms, 21.0)))
        assert isinstance(obs, Observation) and obs.time > t and np.isfinite(obs.T_room).all()
        t = obs.time
    assert plant.reset().time == prep.inputs.index[0]  # reset is repeatable


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "mpc" else n for n in available(learning=False)])  # learning ones: tests/scenarios/test_unmodelled.py
def test_controller_conformance(prep, name):
    ctrl = make_controller(name, prep.model, 900.0, {"horizon_hours": 6})
    assert isinstance(ctrl, Controller) and ctrl.name == name
    a = run(prep, ctrl)
    b = run(prep, ctrl)  # reset() makes a controller repeat itself on the same inputs
    assert len(a.trajectory) == prep.n_steps
    for col in ("P_grid", "P_bat", *[f"P_heat__{r}" for r in prep.model.rooms]):
        np.testing.assert_allclose(a.trajectory[col], b.trajectory[col], atol=1e-3, err_msg=col)
    assert not [e for e in a.events if e["kind"] == "fallback"]
    assert a.kpis["discomfort_Kh_per_room"] < 2.0  # every controller keeps a mild day comfortable

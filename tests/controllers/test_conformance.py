"""One conformance check every controller and every plant must pass (Gymnasium's env_checker spirit)."""

from __future__ import annotations

import numpy as np
import pytest

from pems.controllers import available, make_controller
from pems.controllers.base import Controller
from pems.scenarios.forecast import ForecastProvider
from pems.scenarios.runner import prepare
from pems.scenarios.spec import load_scenario
from pems.twin.plant import Plant, SimulatedHome
from pems.twin.signals import Action, Observation


@pytest.fixture(scope="module")
def prep():
    return prepare(load_scenario("cold-snap"))


def check_plant(plant: Plant, n_rooms: int) -> None:
    obs = plant.reset()
    assert isinstance(obs, Observation) and obs.T_room.shape == (n_rooms,)
    t = obs.time
    for _ in range(3):
        obs = plant.step(Action(heat_setpoint_c=np.full(n_rooms, 21.0)))
        assert isinstance(obs, Observation) and obs.time > t and np.isfinite(obs.T_room).all()
        t = obs.time
    again = plant.reset()
    assert again.time == plant.reset().time  # reset is repeatable


def test_simulated_home_is_a_plant(prep):
    plant = SimulatedHome(prep.model, prep.inputs, prep.x0)
    assert isinstance(plant, Plant)
    check_plant(plant, prep.model.n_rooms)


@pytest.mark.parametrize("name", available())
def test_controller_conformance(prep, name):
    ctrl = make_controller(name, prep.model)
    assert isinstance(ctrl, Controller) and ctrl.name == name
    plant = SimulatedHome(prep.model, prep.inputs, prep.x0)
    fc = ForecastProvider(prep.scenario.spec.forecast, prep.inputs, prep.model.sym.d.names,
                          prep.comfort_low, prep.comfort_high, prep.scenario.horizon_steps,
                          prep.scenario.step)
    obs = plant.reset()
    ctrl.reset()
    actions = []
    for k in range(4):
        a = ctrl.act(obs, fc(k))
        assert isinstance(a, Action)
        if a.heat_w is not None:
            assert a.heat_w.shape == (prep.model.n_rooms,) and np.isfinite(a.heat_w).all()
        if a.heat_setpoint_c is not None:
            assert a.heat_setpoint_c.shape == (prep.model.n_rooms,)
        actions.append(a)
        obs = plant.step(a)
    # reset makes a controller repeat itself on the same inputs
    ctrl.reset()
    a0 = ctrl.act(plant.reset(), fc(0))
    np.testing.assert_equal(a0.heat_setpoint_c, actions[0].heat_setpoint_c)
    np.testing.assert_equal(a0.heat_w, actions[0].heat_w)

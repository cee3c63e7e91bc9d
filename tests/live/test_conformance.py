"""One Plant contract (:mod:`pems.twin.conformance`) for the simulator, a live home and the wrapped live home.

The live homes run over real sockets against the emulated two-room battery house (mosquitto and
the Modbus server on loopback, 1000×).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from helpers import FAST  # noqa: E402

from pems.live.emulated_run import EmulatedRun  # noqa: E402
from pems.twin.conformance import check_plant  # noqa: E402
from pems.twin.plant import Plant, SimulatedHome  # noqa: E402

SPEED = 1000.0


def _tick_of_heating(prep, tick_s: float, step_s: float) -> float:
    """The balance's slack over real sockets [W]: the observation's heating is the on-time the loop
    commanded, which the relays realise to within a tick (at 1000× a busy machine's 0.1 s of relay
    latency is 100 s of the home's time)."""
    return float(prep.model.u_max[prep.model.heat].sum()) * tick_s / step_s


def _simulated(prep) -> SimulatedHome:
    sc = prep.scenario
    return SimulatedHome(prep.model, prep.inputs, prep.x0, step_s=sc.step.total_seconds(),
                         substep_s=sc.spec.plant_step_seconds)


def test_the_simulated_home_conforms(prep):
    rep = check_plant(_simulated(prep), prep.model, prep.scenario.step.total_seconds(),
                      prep.scenario.spec.plant_step_seconds)
    assert rep.ok, rep.violations
    assert len(rep.observations) == 7


class _Sloppy:
    """A home that does half of what it is told, or (``late``) skips a step in its clock: the check must say so."""

    def __init__(self, inner: SimulatedHome, late: bool = False) -> None:
        self.inner, self.late = inner, late

    def reset(self):
        return self.inner.reset()

    def step(self, action):
        if action.heat_w is not None and not self.late:
            action = replace(action, heat_w=0.5 * np.asarray(action.heat_w))
        obs = self.inner.step(action)
        if self.late and self.inner.k == 2:
            obs = replace(obs, time=obs.time + (self.inner.index[1] - self.inner.index[0]))
        return obs


def test_the_check_catches_a_home_that_does_not_do_what_it_is_told(prep):
    step_s, tick_s = prep.scenario.step.total_seconds(), prep.scenario.spec.plant_step_seconds
    sloppy = _Sloppy(_simulated(prep))
    assert isinstance(sloppy, Plant)
    text = "\n".join(check_plant(sloppy, prep.model, step_s, tick_s).violations)
    assert "step 1: heating" in text and "step 3: heating" in text  # half of full and of half
    assert "step 2: heating" not in text  # nothing of nothing is right
    text = "\n".join(check_plant(_Sloppy(_simulated(prep), late=True), prep.model, step_s, tick_s).violations)
    assert "step 2: time" in text and "not one step after" in text and "heating" not in text


def _emulated(prep, broker) -> EmulatedRun:
    r = EmulatedRun(prep, broker.host, broker.port, speed=SPEED, hours=2.5, mqtt_options=FAST)
    r.start_emulator()
    return r


@pytest.mark.service
def test_a_live_home_over_the_emulator_conforms(prep, broker):
    """The bare :class:`~pems.live.home.LiveHome`: no watchdog, no log, the same contract."""
    r = _emulated(prep, broker)
    home = r.new_home()
    home.first_mono = r.step_mono(0)
    try:
        assert isinstance(home, Plant)
        rep = check_plant(home, prep.model, r.step_s, home.settings.inner_s,
                          balance_tol_w=_tick_of_heating(prep, home.settings.inner_s, r.step_s))
    finally:
        home.give_back(home.clock.now())
        home.close()
        r.emu.stop()
    assert rep.ok, rep.violations
    # it did command the home: the relays of the full-power step, the rooms taken, then given back
    kinds = [(c.kind, c.value) for c in r.emu.home.commands()]
    assert ("mode", "pems") in kinds and ("mode", "home") in kinds


@pytest.mark.service
def test_the_live_home_in_its_wrappers_conforms(prep, broker, tmp_path):
    """``LoggedHome(SafeHome(LiveHome))``, as ``pems live`` runs it: the wrappers keep the contract, and
    the step log has one record per step."""
    r = _emulated(prep, broker)
    loop = r.new_loop(events_path=tmp_path / "events.jsonl")
    loop.start()
    loop.home.first_mono = r.step_mono(0)
    try:
        assert isinstance(loop.plant, Plant)
        rep = check_plant(loop.plant, prep.model, r.step_s, loop.settings.inner_s,
                          balance_tol_w=_tick_of_heating(prep, loop.settings.inner_s, r.step_s))
    finally:
        loop.close()
        r.emu.stop()
    assert rep.ok, rep.violations
    steps = [e for e in loop.events.records if e["kind"] == "step"]
    assert [e["step"] for e in steps] == list(range(6))
    assert steps[-1]["commands"] == "home (controller fallback)" and not steps[-1]["solver_ok"]
    assert all(e["solver_ok"] for e in steps[:5])

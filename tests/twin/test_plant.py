"""The simulated home: energy balances, limits under adversarial commands, local thermostats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import constant_disturbances, house_from, TWO_ROOMS
from pems.twin.model import build_model
from pems.twin.plant import SimulatedHome
from pems.twin.signals import Action


def sunny_day_disturbances(model, n: int, rng) -> pd.DataFrame:
    """A synthetic day-night cycle with PV surplus at noon and a cold night."""
    D = constant_disturbances(model, n, T_ground=10.0)
    hours = np.arange(n) * 0.25
    sun = np.clip(np.sin((hours % 24 - 6) / 12 * np.pi), 0, None)
    D["T_out"] = -2.0 + 6.0 * sun
    D["P_pv"] = 4500.0 * sun
    D["P_load"] = 300.0 + 400.0 * rng.random(n)
    for c in model.sym.d.names:
        if c.startswith("I_sol__"):
            D[c] = 400.0 * sun
        if c.startswith("Q_int__"):
            D[c] = 50.0
    return D


def test_electric_balance_closes_every_step(two_rooms_battery, rng):
    """P_grid = P_load + Σ P_heat + P_bat − P_pv + P_loss, per step, from two independent routes."""
    m = build_model(two_rooms_battery)
    n = 96 * 3
    D = sunny_day_disturbances(m, n, rng)
    plant = SimulatedHome(m, D, x0=np.r_[np.full(4, 20.0), 0.5])
    for k in range(n):
        heat = rng.uniform(0, 1, 2) * m.heater_w if k % 3 else None
        action = Action(heat_w=heat, bat_w=float(rng.uniform(-4000, 4000))) if heat is not None else \
            Action(heat_setpoint_c=np.array([21.0, 20.0]))
        plant.step(action)
    y = plant.outputs()
    u = plant.log.u_mean
    p_heat = u[:, :2].sum(axis=1)
    p_bat = u[:, 2] - u[:, 3]
    rhs = D["P_load"].to_numpy() + p_heat + p_bat - plant.log.pv + y["P_loss"].to_numpy()
    np.testing.assert_allclose(y["P_grid"].to_numpy(), rhs, atol=1e-6)
    # the plant's per-minute accounting of the grid agrees with the model's output map
    np.testing.assert_allclose(plant.log.grid, y["P_grid"].to_numpy(), atol=1e-6)
    assert (y["P_loss"] == 10.0).all()


def test_thermal_energy_is_conserved_every_step(two_rooms, rng):
    """Σ C ΔT over a step = ∫ (heat + sun + gains − losses to outdoors and ground) dt, exactly."""
    m = build_model(two_rooms)
    n = 96
    D = sunny_day_disturbances(m, n, rng)
    x0 = np.array([19.0, 21.0, 22.0, 20.0])
    plant = SimulatedHome(m, D, x0)
    for k in range(n):
        plant.step(Action(heat_w=rng.uniform(0, 1, 2) * m.heater_w))
    p = m.params()
    lg = plant.log
    x_start = np.vstack([x0, lg.x_end[:-1]])
    dt = 900.0
    for k in range(n):
        stored = sum(p[f"C_air__{r}"] * (lg.x_end[k, i] - x_start[k, i])
                     + p[f"C_mass__{r}"] * (lg.x_end[k, 2 + i] - x_start[k, 2 + i]) for i, r in enumerate("ab"))
        d = D.iloc[k]
        flows = 0.0
        for i, r in enumerate("ab"):
            flows += p[f"eta_heat__{r}"] * lg.u_mean[k, i] + p[f"A_sol__{r}"] * d[f"I_sol__{r}"] + d[f"Q_int__{r}"]
            flows -= p[f"H_out__{r}"] * (lg.x_mean[k, i] - d["T_out"])
            flows -= p[f"H_ground__{r}"] * (lg.x_mean[k, 2 + i] - d["T_ground"])
        assert stored == pytest.approx(flows * dt, rel=1e-9, abs=1e-3)


def test_limits_hold_under_adversarial_commands(two_rooms_battery, rng):
    m = build_model(two_rooms_battery)
    bat, grid = m.house.battery, m.house.grid
    n = 96 * 4
    D = sunny_day_disturbances(m, n, rng)
    plant = SimulatedHome(m, D, x0=np.r_[np.full(4, 20.0), 0.5])
    nasty = [np.nan, np.inf, -np.inf, 1e9, -1e9, 0.0]
    for k in range(n):
        heat = rng.choice([-1e6, -1.0, 0.0, 1e4, 1e9, np.nan], size=2)
        b = float(rng.choice(nasty)) if k % 2 else float(rng.uniform(-2e4, 2e4))
        plant.step(Action(heat_w=heat, bat_w=b))
    lg = plant.log
    soc_states = np.r_[lg.x_end[:, -1], lg.x_mean[:, -1]]
    assert soc_states.min() >= bat.soc_min - 1e-9 and soc_states.max() <= bat.soc_max + 1e-9
    assert (lg.u_mean[:, 2] <= bat.max_charge_w + 1e-9).all() and (lg.u_mean[:, 3] <= bat.max_discharge_w + 1e-9).all()
    assert ((lg.u_mean[:, :2] >= 0) & (lg.u_mean[:, :2] <= m.heater_w + 1e-9)).all()
    assert np.isfinite(lg.x_end).all()
    assert lg.grid.max() <= grid.import_limit_w + 1e-6
    assert (-lg.grid).max() <= grid.export_limit_w + 1e-6
    kinds = {e["kind"] for e in lg.events}
    assert {"nan_command", "clip_heat", "clip_battery"} <= kinds
    assert lg.pv.max() <= D["P_pv"].max() + 1e-9


def test_soc_bounds_hold_at_every_fine_step(two_rooms_battery):
    """Charging flat out for hours stops exactly at soc_max, not one minute later."""
    m = build_model(two_rooms_battery)
    n = 40
    D = constant_disturbances(m, n, T_out=5.0, T_ground=10.0, P_pv=0.0, P_load=100.0)
    plant = SimulatedHome(m, D, x0=np.r_[np.full(4, 20.0), 0.85])
    for _ in range(n):
        plant.step(Action(heat_w=np.zeros(2), bat_w=2500.0))
    soc = plant.log.x_end[:, -1]
    assert soc.max() == pytest.approx(m.house.battery.soc_max, abs=1e-12)
    # the energy that went in matches the SOC rise through the charge efficiency
    e_in = plant.log.u_mean[:, 2].sum() * 900 / 3600  # Wh (AC)
    assert e_in * 0.95 == pytest.approx((0.9 - 0.85) * 5000, rel=1e-9)


def test_main_fuse_sheds_heating_and_export_limit_curtails_pv(two_rooms_battery):
    m = build_model(two_rooms_battery)
    D = constant_disturbances(m, 4, T_out=0.0, P_load=1500.0, P_pv=0.0)
    D.iloc[2:, D.columns.get_loc("P_pv")] = 5000.0
    D.iloc[2:, D.columns.get_loc("P_load")] = 200.0
    plant = SimulatedHome(m, D, x0=np.r_[np.full(4, 20.0), 0.1])
    # both heaters (3.2 kW) + 1.5 kW load + charging from the grid: over the 4 kW fuse
    plant.step(Action(heat_w=m.heater_w, bat_w=2500.0))
    plant.step(Action(heat_w=m.heater_w, bat_w=2500.0))
    # full PV, no load to speak of, battery told to discharge: over the 2 kW export limit
    plant.step(Action(heat_w=np.zeros(2), bat_w=-3000.0))
    plant.step(Action(heat_w=np.zeros(2), bat_w=-3000.0))
    lg = plant.log
    assert lg.grid[:2].max() == pytest.approx(4000.0, abs=1e-6)
    assert lg.shed_wh[:2].sum() > 0 and lg.u_mean[0, 2] == pytest.approx(0.0, abs=1e-9)
    assert lg.grid[2:].min() == pytest.approx(-2000.0, abs=1e-6)
    assert lg.curtailed_wh[2:].sum() > 0
    assert {"shed_heat", "curtail_pv"} <= {e["kind"] for e in lg.events}


def test_thermostat_hysteresis_on_a_fast_room():
    """A convector room (heat into the air) swings between set-point ± hysteresis."""
    conv = house_from({**TWO_ROOMS, "rooms": [
        {"id": "r", "floor_area_m2": 15, "heater_w": 1500,
         "params": {"C_air": 4e5, "C_mass": 3e6, "H_am": 150.0, "H_out": 30.0, "H_ground": 0.0,
                    "f_heat_mass": 0.0}}]},
        heating={"kind": "electric_convector", "thermostat_hysteresis_k": 0.25})
    m = build_model(conv)
    n = 96 * 2
    D = constant_disturbances(m, n, T_out=0.0)
    plant = SimulatedHome(m, D, x0=np.array([21.0, 21.0]), substep_s=30)
    for _ in range(n):
        plant.step(Action(heat_setpoint_c=np.array([21.0])))
    T = plant.log.x_end[48:, 0]  # after a settling half-day
    assert T.min() >= 21.0 - 0.25 - 0.05 and T.max() <= 21.0 + 0.25 + 0.05
    assert plant.log.relay_switches[48:].sum() >= 10
    # no ground loss: the mass settles at the air temperature, so the mean power equals the
    # envelope loss at the mean air temperature, H_out · (T̄ − T_out)
    T_mean = plant.log.x_mean[48:, 0].mean()
    assert plant.log.u_mean[48:, 0].mean() == pytest.approx(30.0 * T_mean, rel=0.01)

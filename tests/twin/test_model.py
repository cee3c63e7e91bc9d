"""The symbolic model against hand-built physics: conductance matrix, steady states, eigenvalues."""

from __future__ import annotations

import casadi as ca
import numpy as np
import pytest

from helpers import constant_disturbances, house_from, TWO_ROOMS
from pems.twin.linear import affine_form, zoh
from pems.twin.model import build_model
from pems.twin.plant import SimulatedHome
from pems.twin.signals import Action
from pems.twin.steady import steady_state


def hand_network(p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Capacity vector and conductance matrix of TWO_ROOMS, built by hand from its parameters.

    Node order: air a, air b, mass a, mass b. G is the Laplacian of the internal conductances plus
    the conductances to outdoors/ground on the diagonal.
    """
    a, b = p["a"], p["b"]
    C = np.array([a["C_air"], b["C_air"], a["C_mass"], b["C_mass"]])
    h_ab = a["H_neighbour"]["b"]
    G = np.array([
        [a["H_am"] + a["H_out"] + h_ab, -h_ab, -a["H_am"], 0.0],
        [-h_ab, b["H_am"] + b["H_out"] + h_ab, 0.0, -b["H_am"]],
        [-a["H_am"], 0.0, a["H_am"] + a["H_ground"], 0.0],
        [0.0, -b["H_am"], 0.0, b["H_am"] + b["H_ground"]],
    ])
    return C, G


def hand_sources(p: dict, T_out: float, T_ground: float, I: float, Q_int: tuple, P: tuple) -> np.ndarray:
    a, b = p["a"], p["b"]
    qa_sol, qb_sol = a["A_sol"] * I, b["A_sol"] * I
    qa_h, qb_h = a["eta_heat"] * P[0], b["eta_heat"] * P[1]
    return np.array([
        a["H_out"] * T_out + (1 - a["f_sol_mass"]) * qa_sol + Q_int[0] + (1 - a["f_heat_mass"]) * qa_h,
        b["H_out"] * T_out + (1 - b["f_sol_mass"]) * qb_sol + Q_int[1] + (1 - b["f_heat_mass"]) * qb_h,
        a["H_ground"] * T_ground + a["f_sol_mass"] * qa_sol + a["f_heat_mass"] * qa_h,
        b["H_ground"] * T_ground + b["f_sol_mass"] * qb_sol + b["f_heat_mass"] * qb_h,
    ])


PARAMS = {r["id"]: r["params"] for r in TWO_ROOMS["rooms"]}
ORDER = [0, 1, 2, 3]  # model states: T_air__a, T_air__b, T_mass__a, T_mass__b


def test_model_declares_named_variables(two_rooms):
    m = build_model(two_rooms)
    assert m.sym.x.names == ("T_air__a", "T_air__b", "T_mass__a", "T_mass__b")
    assert m.sym.u.names == ("P_heat__a", "P_heat__b")
    assert "H__a__b" in m.sym.p.names and m.param("H__a__b") == 30.0
    assert m.param("C_mass__a") == 4.0e6


def test_state_matrix_equals_hand_conductance_matrix(two_rooms):
    m = build_model(two_rooms)
    C, G = hand_network(PARAMS)
    A_hand = -G / C[:, None]
    np.testing.assert_allclose(affine_form(m).A, A_hand, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("duty", [1.0, 0.37])
def test_settles_to_analytic_steady_state(two_rooms, duty):
    """Constant weather and a constant duty cycle: the step-mean state equals G⁻¹ q exactly.

    (For a linear system driven periodically, the mean over a period of the periodic solution
    is the steady state of the mean input.)
    """
    m = build_model(two_rooms)
    T_out, T_g, I, Qint = -5.0, 8.0, 120.0, (150.0, 60.0)
    P = (duty * 2000.0, duty * 1200.0)
    n = 96 * 60  # 60 days of 15-min steps: ≫ the slowest time constant
    D = constant_disturbances(m, n, T_out=T_out, T_ground=T_g, I_sol__a=I, I_sol__b=I,
                              Q_int__a=Qint[0], Q_int__b=Qint[1])
    plant = SimulatedHome(m, D, x0=np.full(4, 15.0))
    for _ in range(n):
        plant.step(Action(heat_w=np.array(P)))
    C, G = hand_network(PARAMS)
    T_ss = np.linalg.solve(G, hand_sources(PARAMS, T_out, T_g, I, Qint, P))
    np.testing.assert_allclose(plant.log.x_mean[-1], T_ss, atol=1e-6)
    # and the steady-state solver (active set on the model's own affine form) agrees
    x, u = steady_state(m, D.iloc[0].to_numpy(), T_ss[:2])
    np.testing.assert_allclose(u, P, rtol=1e-9)
    np.testing.assert_allclose(x, T_ss, atol=1e-9)


def test_free_decay_rate_matches_slowest_eigenvalue(two_rooms):
    m = build_model(two_rooms)
    C, G = hand_network(PARAMS)
    lam = np.sort(np.linalg.eigvals(-G / C[:, None]).real)  # all negative
    np.testing.assert_allclose(np.sort(np.linalg.eigvals(affine_form(m).A).real), lam, rtol=1e-10)
    n = 96 * 20
    D = constant_disturbances(m, n)  # everything at 0 °C, no gains
    plant = SimulatedHome(m, D, x0=np.array([20.0, 10.0, 15.0, 5.0]))
    for _ in range(n):
        plant.step(Action(heat_w=np.zeros(2)))
    x = plant.log.x_end
    k1, k2 = 96 * 12, 96 * 19  # late: only the slowest mode is left
    rate = np.log(np.linalg.norm(x[k2]) / np.linalg.norm(x[k1])) / ((k2 - k1) * 900.0)
    assert rate == pytest.approx(lam[-1], rel=1e-4)


def test_exact_discretisation_matches_fine_casadi_integration(rng):
    """The ZOH simulator and CVODES on the same symbolic f agree to 1e-6 K over a day."""
    from pems.twin.house import load_house

    m = build_model(load_house("reference"))
    n_steps, n_sub = 96, 15
    D = constant_disturbances(m, n_steps, T_out=-3.0, T_ground=10.0, P_load=400.0)
    for c in m.sym.d.names:
        if c.startswith("I_sol__"):
            D[c] = 200.0 * np.clip(np.sin(np.linspace(0, 2 * np.pi, n_steps)), 0, None)
        if c.startswith("Q_int__"):
            D[c] = rng.uniform(20, 120, n_steps)
    x0 = np.r_[rng.uniform(18, 22, 34), 0.5]
    plant = SimulatedHome(m, D, x0)
    on = rng.random((n_steps, m.n_rooms)) < 0.4
    bat = rng.uniform(-800, 800, n_steps)  # stays inside the SOC band: no clipping mid-step
    for k in range(n_steps):
        plant.step(Action(heat_w=on[k] * m.heater_w, bat_w=float(bat[k])))
    s = m.sym
    dae = {"x": s.x.sym, "p": ca.vertcat(s.u.sym, s.d.sym), "ode": ca.substitute(s.rhs, s.p.sym, ca.DM(m.p))}
    F = ca.integrator("F", "cvodes", dae, 0.0, 60.0, {"abstol": 1e-12, "reltol": 1e-12})
    x = ca.DM(x0)
    for k in range(n_steps):
        u = m.u_max * 0.0
        u[m.heat] = on[k] * m.heater_w
        u[-2], u[-1] = max(bat[k], 0.0), max(-bat[k], 0.0)
        # the plant may have clipped the battery at its SOC bound: use what it applied
        u[-2:] = plant.log.u_mean[k, -2:]
        pu = ca.DM(np.r_[u, D.iloc[k].to_numpy()])
        for _ in range(n_sub):
            x = F(x0=x, p=pu)["xf"]
        np.testing.assert_allclose(np.asarray(x).ravel()[:34], plant.log.x_end[k, :34], atol=1e-6)
        np.testing.assert_allclose(float(x[34]), plant.log.x_end[k, 34], atol=1e-9)


def test_zoh_mean_matrices_by_quadrature(two_rooms):
    """Γ and Λ of the Van Loan exponential against direct quadrature of e^{Aτ}."""
    from scipy.integrate import quad_vec
    from scipy.linalg import expm

    A = affine_form(build_model(two_rooms)).A
    h = 900.0
    d = zoh(A, h)
    gam, _ = quad_vec(lambda t: expm(A * t), 0, h, epsabs=1e-12)
    lam, _ = quad_vec(lambda t: expm(A * t) * (h - t), 0, h, epsabs=1e-10)
    np.testing.assert_allclose(d.Ad, expm(A * h), rtol=1e-12)
    np.testing.assert_allclose(d.Gamma, gam, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(d.Lambda, lam, rtol=1e-7, atol=1e-6)


def test_heat_pump_cop_follows_outdoor_temperature(two_rooms):
    hp = house_from(TWO_ROOMS, heating={"kind": "heat_pump", "eta_carnot": 0.45, "supply_temp_c": 35.0})
    m = build_model(hp)
    form = affine_form(m)
    assert form.B_depends_on_d
    d_cold = constant_disturbances(m, 1, T_out=-10.0).to_numpy()
    d_mild = constant_disturbances(m, 1, T_out=7.0).to_numpy()
    y_names = m.sym.output_names
    G_cold, G_mild = form.G(d_cold)[0], form.G(d_mild)[0]
    qa = y_names.index("Q_heat__a")
    cop = lambda t: min(6.0, 0.45 * (35 + 273.15) / (35 - t))  # noqa: E731
    assert G_cold[qa, 0] == pytest.approx(cop(-10.0), rel=1e-12)
    assert G_mild[qa, 0] == pytest.approx(cop(7.0), rel=1e-12)
    # electricity in the grid balance is the compressor's, not the heat
    assert G_cold[y_names.index("P_grid"), 0] == pytest.approx(1.0)

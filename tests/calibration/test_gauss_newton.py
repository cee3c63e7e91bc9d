"""The calibration's least-squares machinery: the bounded Levenberg–Marquardt and the differentiated
exact discretisation the whole-house refinement uses."""

from __future__ import annotations

import casadi as ca
import numpy as np
import pytest
import scipy.sparse as sp

from pems.calibration.gauss_newton import Normal, NumpyFunction, levenberg_marquardt
from pems.calibration.joint import zoh_and_sensitivities
from pems.twin.linear import zoh


def _decay(t, y):
    def fun(x, jac=True):
        a, k, c = x
        e = np.exp(-k * t)
        r = a * e + c - y
        J = np.c_[e, -a * t * e, np.ones_like(t)]
        return r, sp.csr_matrix(J)
    return fun


def test_recovers_a_nonlinear_fit_exactly_without_noise():
    t = np.linspace(0, 10, 60)
    y = 3.0 * np.exp(-0.7 * t) + 1.5
    # atol: the cost here is not a χ² (residuals are not in units of their σ), so no χ² tolerance
    sol = levenberg_marquardt(_decay(t, y), np.array([1.0, 0.1, 0.0]), np.full(3, -np.inf), np.full(3, np.inf), atol=1e-20)
    assert sol.status == "Solve_Succeeded"
    np.testing.assert_allclose(sol.x, [3.0, 0.7, 1.5], rtol=1e-6)
    assert sol.cost < 1e-12


def test_a_bound_that_binds_holds_and_the_rest_is_optimal_given_it():
    """Offset bounded to ≤ 1 while the data say 1.5: it ends on its bound, and the other two are the
    least-squares solution with the offset fixed there (what scipy finds on the reduced problem)."""
    from scipy.optimize import least_squares

    t = np.linspace(0, 10, 60)
    y = 3.0 * np.exp(-0.7 * t) + 1.5
    sol = levenberg_marquardt(_decay(t, y), np.array([1.0, 0.1, 0.0]), np.array([-np.inf, -np.inf, -np.inf]),
                              np.array([np.inf, np.inf, 1.0]), atol=1e-20)
    assert sol.x[2] == 1.0
    ref = least_squares(lambda z: z[0] * np.exp(-z[1] * t) + 1.0 - y, [1.0, 0.1], xtol=1e-14, ftol=1e-14)
    np.testing.assert_allclose(sol.x[:2], ref.x, rtol=1e-5)


def test_normal_equations_given_directly_give_the_same_solution():
    t = np.linspace(0, 10, 60)
    y = 3.0 * np.exp(-0.7 * t) + 1.5
    base = _decay(t, y)

    def normal(x, jac=True):
        r, J = base(x)
        J = J.toarray()
        return r, Normal(J.T @ J, J.T @ r) if jac else None

    a = levenberg_marquardt(base, np.array([1.0, 0.1, 0.0]), np.full(3, -np.inf), np.full(3, np.inf))
    b = levenberg_marquardt(normal, np.array([1.0, 0.1, 0.0]), np.full(3, -np.inf), np.full(3, np.inf))
    np.testing.assert_allclose(a.x, b.x, rtol=1e-10)


def test_numpy_function_matches_casadi_and_refuses_sparse_outputs():
    x = ca.SX.sym("x", 3, 2)
    f = ca.Function("f", [x], [ca.densify(x * 2), ca.sum1(x)])
    a = np.arange(6.0).reshape(3, 2)
    out = NumpyFunction(f)(a)
    np.testing.assert_array_equal(out[0], 2 * a)
    np.testing.assert_array_equal(out[1], a.sum(axis=0, keepdims=True))
    with pytest.raises(ValueError, match="sparse"):
        NumpyFunction(ca.Function("g", [x], [ca.jacobian(ca.vec(x)[0] * 2, ca.vec(x))]))


def _rc(theta):
    """A two-room RC network's A matrix as a function of three parameters (air-air, air-slab, loss)."""
    h_ab, h_am, h_out = np.exp(theta)
    C = np.array([5e5, 3e5, 4e6, 3e6])
    K = np.zeros((4, 4))
    for i, j, g in ((0, 1, h_ab), (0, 2, h_am), (1, 3, h_am)):
        K[i, j] = K[j, i] = g
    L = np.diag(K.sum(axis=1) + np.array([h_out, h_out, 0, 0])) - K
    return -L / C[:, None]


def test_differentiated_discretisation_is_exact_and_so_are_its_derivatives():
    theta = np.log([30.0, 200.0, 25.0])
    A = _rc(theta)
    eps = 1e-6
    dA = np.array([(_rc(theta + eps * e) - _rc(theta - eps * e)) / (2 * eps) for e in np.eye(3)])
    E, G, L, dE, dG, dL = zoh_and_sensitivities(A, dA, 900.0)
    ref = zoh(A, 900.0)  # scipy's expm (Van Loan)
    np.testing.assert_allclose(E, ref.Ad, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(G, ref.Gamma, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(L, ref.Lambda, rtol=1e-9, atol=1e-6)
    for j, e in enumerate(np.eye(3)):
        hi, lo = zoh(_rc(theta + eps * e), 900.0), zoh(_rc(theta - eps * e), 900.0)
        np.testing.assert_allclose(dE[j], (hi.Ad - lo.Ad) / (2 * eps), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(dG[j], (hi.Gamma - lo.Gamma) / (2 * eps), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dL[j], (hi.Lambda - lo.Lambda) / (2 * eps), rtol=1e-5, atol=1e-2)

"""The one steady-state Kalman filter (:class:`pems.twin.estimator.SteadyKalman`) against theory."""

from __future__ import annotations

import numpy as np
import pytest

from pems.twin.estimator import SteadyKalman, apply_gain


def test_scalar_riccati_solution_and_gains_match_the_closed_form():
    """x⁺ = a x + w, y = x + v: P solves P² + (r(1 − a²) − q) P − q r = 0; K = P / (P + r)."""
    a, q, r = 0.9, 0.01, 0.04
    kf = SteadyKalman.design(np.array([[a]]), np.array([[1.0]]), np.array([[q]]), np.array([[r]]))
    b = r * (1 - a**2) - q
    P = (-b + np.sqrt(b**2 + 4 * q * r)) / 2
    assert kf.P[0, 0] == pytest.approx(P, rel=1e-10)
    assert kf.K[0, 0] == pytest.approx(P / (P + r), rel=1e-10)
    assert kf.predictor_gain[0, 0] == pytest.approx(a * P / (P + r), rel=1e-10)
    post = P * r / (P + r)
    assert kf.posterior[0, 0] == pytest.approx(post, rel=1e-10)
    assert kf.smoother_gain[0, 0] == pytest.approx(post * a / P, rel=1e-10)
    # the prior is the posterior propagated: P = a² P⁺ + q (a fixed point, not a coincidence)
    assert a**2 * post + q == pytest.approx(P, rel=1e-10)


def test_the_filter_converges_to_the_steady_gain_from_any_start():
    """The time-varying Riccati recursion from a wrong initial covariance ends at the steady P."""
    rng = np.random.default_rng(0)
    A = np.array([[0.95, 0.03], [0.01, 0.99]])
    C = np.array([[1.0, 0.0]])
    Q, R = np.diag([0.002, 0.0004]), np.array([[0.01]])
    kf = SteadyKalman.design(A, C, Q, R)
    P = np.eye(2) * rng.uniform(1, 10)
    for _ in range(2000):
        K = P @ C.T @ np.linalg.inv(C @ P @ C.T + R)
        P = A @ (np.eye(2) - K @ C) @ P @ A.T + Q
    np.testing.assert_allclose(P, kf.P, rtol=1e-8)


def test_a_missing_measurement_is_skipped_not_zeroed():
    K = np.array([[0.5, 0.1], [0.2, 0.3]])
    x = np.array([20.0, 21.0])
    np.testing.assert_allclose(apply_gain(x, K, np.array([1.0, np.nan])), x + K[:, 0] * 1.0)
    np.testing.assert_allclose(apply_gain(x, K, np.array([np.nan, np.nan])), x)
    np.testing.assert_allclose(apply_gain(x, K, np.array([1.0, -1.0])), x + K @ np.array([1.0, -1.0]))

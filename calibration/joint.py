"""The whole-house refinement: every room's parameters fitted jointly, from the per-room results.

The per-room fits (:mod:`pems.calibration.fit`) are the fast, parallel first pass: each room sees its
neighbours' air as the measured boundary condition it is, each estimates the couplings to its
neighbours on its own, and two rooms' estimates of one coupling are then averaged. The refinement
fits the whole house at once: all rooms simulated together, every coupling appearing once, the
objective the same as the per-room fits' (step-mean air temperatures against the measured ones,
the same priors centred on the house file, multiple shooting over 24 h segments), started from the
per-room values. Where the per-room decomposition and the averaging left the parameters
inconsistent with each other, this makes them consistent.

The whole house is linear in its states, ``dz/dt = A(θ) z + w(v, θ)``. Its exact zero-order hold
(``e^{Ah}``, ``∫e^{As}ds`` and ``∫∫e^{As}``, which gives the step mean) is computed by a Taylor series
on a fraction of the step and doubling, and differentiated along with it, so the Gauss–Newton
Jacobian is exact. The states' sensitivities to all parameters are carried forward through every
segment at once (batched matrix products), and the normal equations are assembled block by block:
the Jacobian itself (tens of thousands of rows by hundreds of parameters) is never stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from math import factorial

import casadi as ca
import numpy as np
import pandas as pd

from pems.calibration.fit import (FitSettings, Spec, complete_segments, parameter_spec, spec_theta, spec_values,
                                  substituted_parameters)
from pems.calibration.gauss_newton import Arrow, Normal, NumpyFunction, levenberg_marquardt
from pems.calibration.predict import HistoryFilter
from pems.twin.model import HouseModel


@dataclass
class JointFit:
    """The refinement's result."""

    values: dict[str, float]  # every refined parameter [SI]
    start: dict[str, float]  # the per-room values it started from [SI]
    n_segments: int
    rmse_start_k: float  # output-error RMSE over the segments at the start (initial states fitted) [K]
    rmse_k: float  # … and after the refinement [K]
    status: str
    iterations: int
    wall_s: float
    # how far each parameter moved, in standard deviations of its prior here (the per-room posterior) [-]
    shifts: dict[str, float] = field(default_factory=dict)

    @property
    def largest_change(self) -> tuple[str, float]:
        """The parameter the refinement moved most, and by how many of its standard deviations."""
        k = max(self.shifts, key=lambda n: abs(self.shifts[n])) if self.shifts else ""
        return k, abs(self.shifts.get(k, 0.0))


def zoh_and_sensitivities(A: np.ndarray, dA: np.ndarray, h: float, terms: int = 8):
    """``E = e^{Ah}``, ``G = ∫₀ʰ e^{As} ds``, ``Λ = ∫₀ʰ∫₀ˢ e^{Ar} dr ds`` and their derivatives along
    each ``dA[j]`` (m, n, n): a Taylor series on ``h / 2^k`` (``‖A h / 2^k‖₁ ≤ 1/4``, truncation
    below 10⁻¹¹) and ``k`` doublings ``E(2t) = E²``, ``G(2t) = G + E G``,
    ``Λ(2t) = 2Λ + t G + (E − I) Λ``, all differentiated alongside."""
    n = A.shape[0]
    norm = float(np.abs(A).sum(axis=0).max()) * h
    k = max(0, int(np.ceil(np.log2(max(norm, 1e-12) * 4.0))))
    t = h / 2**k
    eye = np.eye(n)
    At, dAt = A * t, dA * t
    E, G, L = eye.copy(), eye * t, eye * (t * t / 2)
    dE, dG, dL = np.zeros_like(dA), np.zeros_like(dA), np.zeros_like(dA)
    P, dP = eye, np.zeros_like(dA)
    for i in range(1, terms + 1):
        dP = dP @ At + P @ dAt
        P = P @ At
        f = factorial(i)
        E, dE = E + P / f, dE + dP / f
        c1, c2 = t / (f * (i + 1)), t * t / (f * (i + 1) * (i + 2))
        G, dG = G + P * c1, dG + dP * c1
        L, dL = L + P * c2, dL + dP * c2
    for _ in range(k):
        Em = E - eye
        dL = 2 * dL + dG * t + dE @ L + Em @ dL
        L = 2 * L + G * t + Em @ L
        dG = dG + dE @ G + E @ dG
        G = G + E @ G
        dE = dE @ E + E @ dE
        E = E @ E
        t *= 2
    return E, G, L, dE, dG, dL


def refine_jointly(prior: HouseModel, start: HouseModel, data: pd.DataFrame, step: pd.Timedelta,
                   trusted: np.ndarray, settings: FitSettings, shares: dict[str, tuple[str, ...]],
                   start_se: dict[str, float] | None = None, max_segments: int | None = None) -> JointFit:
    """Fit all rooms of ``start`` (the per-room result) jointly on ``data`` (training history).

    Parameters
    ----------
    prior
        The house file's model: the priors are centred on its values, as in the per-room fits.
    start
        The per-room result: where the search starts; its Kalman filter over the history gives the
        segments' initial states to start from.
    start_se
        Standard errors of the per-room estimates [SI] by parameter name. The refinement sees only
        a few weeks of the history (the per-room fits saw all of it), so what the per-room fits
        learnt is its prior: each parameter's per-room posterior, N(estimate, se²), where it has
        one; the house file's prior where it has not.
    trusted
        Rows whose room temperatures count (the quality report's trusted periods).
    shares
        Per room, the shares into the slab that are estimated (its chosen structure).
    max_segments
        At most this many 24 h segments, evenly spread (default: the settings'). (Choosing the days
        whose heating varies most instead made the reference year's held-out predictions worse:
        0.146 → 0.208 K at 28 days, against 0.155 K spread.)
    """
    t0 = time.perf_counter()
    s = prior.sym
    h = step.total_seconds()
    nr = prior.n_rooms
    n = 2 * nr  # the thermal states: every room's air, then every room's slab
    f = s.rhs[:n]
    specs: list[Spec] = []
    for j, name in enumerate(s.p.names):
        if ca.depends_on(f, s.p.sym[j]):
            room = name.split("__")[1] if "__" in name else ""
            sp = parameter_spec(prior, name, replace(settings, shares=tuple(shares.get(room, ()))))
            if sp is not None:
                specs.append(sp)
    m = len(specs)
    theta0 = np.array([spec_theta(sp, start.param(sp[0])) for sp in specs])
    start_values = spec_values(specs, theta0)

    # data: segments with complete inputs and mostly complete measurements in every room
    hf = HistoryFilter(start, step)
    U, D = hf.inputs(data)
    V = np.hstack([U, D])
    Y = np.where(trusted[:, None], data[[f"T_room__{r}" for r in prior.rooms]].to_numpy(dtype=float), np.nan)
    L = int(round(settings.segment_hours * 3600 / h))
    rows, _ = complete_segments(V, Y, L)
    if len(rows) < 2 or m == 0:
        return JointFit(start_values, start_values, len(rows), float("nan"), float("nan"),
                        "too little complete data", 0, time.perf_counter() - t0)
    limit = settings.joint_segments if max_segments is None else max_segments
    if len(rows) > limit:  # evenly spread over the history: every season, as the per-room fits saw it
        rows = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, limit).round().astype(int))]
    n_seg = len(rows)
    follows = np.array([i > 0 and rows[i] == rows[i - 1] + L for i in range(n_seg)])  # of those kept
    x_filt = hf.run(data.iloc[: rows[-1] + L]).x_prior
    Z0_start = np.array([x_filt[a, :n] for a in rows])  # (n_seg, n) filtered initial states

    # symbolic pieces: A(θ) and ∂A/∂θ; w(v, θ) and the nonzeros of ∂w/∂θ
    th = ca.SX.sym("theta", m)
    z = ca.SX.sym("z", n)
    v = ca.vertcat(s.u.sym, s.d.sym)
    f_th = ca.substitute(f, ca.vertcat(s.p.sym, s.x.sym),
                         ca.vertcat(substituted_parameters(prior, specs, th), z, ca.SX.zeros(len(s.x) - n, 1)))
    A_expr = ca.jacobian(f_th, z)
    if ca.depends_on(A_expr, ca.vertcat(z, v)):
        raise ValueError("the thermal model is not linear in its states")
    A_fn = ca.Function("A", [th], [A_expr, ca.densify(ca.jacobian(ca.vec(A_expr), th))])
    w_expr = ca.substitute(f_th, z, ca.DM.zeros(n))
    Jw = ca.jacobian(w_expr, th)
    jw_rows, jw_cols = (np.asarray(a, dtype=int) for a in Jw.sparsity().get_triplet())
    jw_nz = ca.vertcat(*Jw.nonzeros()) if Jw.nnz() else ca.SX(0, 1)
    w_fn = NumpyFunction(ca.Function("w", [v, th], [ca.densify(w_expr), ca.densify(jw_nz)])
                         .map(n_seg * L, [False, True], [False, False]))
    Vseg = np.hstack([V[a:a + L].T for a in rows])  # (n_v, n_seg·L), segment by segment
    Yseg = np.stack([Y[a:a + L] for a in rows])  # (n_seg, L, nr)
    Wt = np.isfinite(Yseg) / settings.sensor_sigma_k  # weight of each measurement (0: missing)
    Yseg = np.nan_to_num(Yseg)
    y0 = np.stack([Y[a] for a in rows])  # (n_seg, nr)
    seg_mean = np.hstack([y0, y0])  # prior means of each segment's initial air and slab
    seg_sig = np.r_[np.full(nr, settings.sensor_sigma_k), np.full(nr, settings.slab_sigma_k)]
    cont_sig = np.r_[np.full(nr, settings.sensor_sigma_k), np.full(nr, settings.continuity_sigma_k)]
    # the parameters' prior in θ: the per-room posterior where known (σ at least 2 % of the value or
    # a tenth of the house file's prior σ, so that the data can still move it), else the house file's
    mean = np.zeros(m)
    sig = np.array([sp[3] if sp[1] == "log" else 1.0 for sp in specs])
    for j, sp in enumerate(specs):
        se = (start_se or {}).get(sp[0], float("nan"))
        if np.isfinite(se) and se > 0:
            val = start.param(sp[0])
            sd = se / abs(val) if sp[1] == "log" else se / sp[3]
            floor = max(0.02, 0.1 * sp[3]) if sp[1] == "log" else 0.1
            mean[j], sig[j] = theta0[j], float(np.clip(sd, floor, sig[j]))
    nxt = np.flatnonzero(follows)
    n_x = m + n * n_seg

    def residuals(x: np.ndarray, jac: bool):
        thv, Z0 = x[:m], x[m:].reshape(n_seg, n)
        A_num, dA_flat = (np.asarray(a) for a in A_fn(thv))
        dA = dA_flat.reshape(n, n, m, order="F").transpose(2, 0, 1)  # (m, n, n)
        E, G, Lm, dE, dG, dL = zoh_and_sensitivities(A_num, dA if jac else dA[:0], h)
        w_all, jw_all = w_fn(Vseg, thv)
        Wk = w_all.T.reshape(n_seg, L, n)
        Zk = Z0.copy()
        Ga, La = G[:nr] / h, Lm[:nr] / h  # step mean of the air from the state and from w
        pred = np.empty((n_seg, L, nr))
        if jac:
            jw = jw_all.T.reshape(n_seg, L, -1)
            S = np.zeros((n_seg, n, m))  # ∂z/∂θ
            T = np.eye(n)  # ∂z/∂z0 = E^k (the same for every segment)
            H = np.zeros((n_x, n_x))
            g = np.zeros(n_x)
            dGa, dLa = dG[:, :nr] / h, dL[:, :nr] / h
        for k in range(L):
            w = Wk[:, k]
            pred[:, k] = Zk @ Ga.T + w @ La.T
            e = (pred[:, k] - Yseg[:, k]) * Wt[:, k]  # (n_seg, nr)
            if jac:
                dw = np.zeros((n_seg, n, m))
                dw[:, jw_rows, jw_cols] = jw[:, k]
                # ∂ȳ/∂θ = Ga S + (∂Ga z) + (∂La w) + La ∂w, rows weighted
                Jt = (Ga @ S + _along(dGa, Zk) + _along(dLa, w)
                      + La @ dw) * Wt[:, k, :, None]  # (n_seg, nr, m)
                Jz = (Ga @ T)[None] * Wt[:, k, :, None]  # (n_seg, nr, n)
                _accumulate(H, g, Jt, Jz, e, m, n)
                S = E @ S + _along(dE, Zk) + _along(dG, w) + G @ dw
                T = E @ T
            Zk = Zk @ E.T + w @ G.T
        r_data = ((pred - Yseg) * Wt).ravel()
        # continuity: a segment that follows another starts (softly) where it ended
        cont = ((Z0[nxt] - Zk[nxt - 1]) / cont_sig).ravel()
        own = ((Z0 - seg_mean) / seg_sig).ravel()
        r = np.r_[r_data, cont, own, (thv - mean) / sig]
        if not jac:
            return r, None
        for sg in nxt:
            c = (Z0[sg] - Zk[sg - 1]) / cont_sig
            idx = np.r_[np.arange(m), m + n * (sg - 1) + np.arange(n), m + n * sg + np.arange(n)]
            Jc = np.hstack([-S[sg - 1], -T, np.eye(n)]) / cont_sig[:, None]
            H[np.ix_(idx, idx)] += Jc.T @ Jc
            g[idx] += Jc.T @ c
        d = np.r_[1 / sig**2, np.tile(1 / seg_sig**2, n_seg)]
        H[np.diag_indices(n_x)] += d
        g += d * np.r_[thv - mean, (Z0 - seg_mean).ravel()]
        return r, Normal(H, g)

    def rmse(x: np.ndarray) -> float:
        r = residuals(x, False)[0][: n_seg * L * nr] * settings.sensor_sigma_k
        return float(np.sqrt(r @ r / max(1.0, float((Wt > 0).sum()))))

    lower = np.r_[[sp[4] for sp in specs], np.full(n * n_seg, -np.inf)]
    upper = np.r_[[sp[5] for sp in specs], np.full(n * n_seg, np.inf)]
    # the start: the per-room parameters with the segments' initial states fitted to them
    arrow = Arrow(m, 2 * n - 1)  # θ couples to all; a segment's states to its own and its neighbours'
    x_start = levenberg_marquardt(residuals, np.r_[theta0, Z0_start.ravel()], np.r_[theta0, lower[m:]],
                                  np.r_[theta0, upper[m:]], max_iter=20, structure=arrow).x
    sol = levenberg_marquardt(residuals, x_start, lower, upper, max_iter=settings.joint_max_iter, structure=arrow)
    rmse0, rmse1 = rmse(x_start), rmse(sol.x)
    shifts = {sp[0]: float((sol.x[j] - theta0[j]) / sig[j]) for j, sp in enumerate(specs)}
    return JointFit(spec_values(specs, sol.x[:m]), start_values, n_seg, rmse0, rmse1, sol.status,
                    sol.iterations, time.perf_counter() - t0, shifts)


def _along(dM: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``(∂M/∂θ_j) z`` for every parameter j and segment s: dM (m, a, b), z (n_seg, b) → (n_seg, a, m)."""
    return np.tensordot(z, dM, axes=([1], [2])).transpose(0, 2, 1)


def _accumulate(H: np.ndarray, g: np.ndarray, Jt: np.ndarray, Jz: np.ndarray, e: np.ndarray, m: int, n: int) -> None:
    """Add one step's data rows of every segment to the normal equations: θ-block dense, each
    segment's initial-state block and its coupling to θ."""
    n_seg = Jt.shape[0]
    Jf = Jt.reshape(-1, m)
    H[:m, :m] += Jf.T @ Jf
    g[:m] += Jf.T @ e.ravel()
    Htz = Jt.transpose(0, 2, 1) @ Jz  # (n_seg, m, n)
    Hzz = Jz.transpose(0, 2, 1) @ Jz  # (n_seg, n, n)
    gz = (Jz.transpose(0, 2, 1) @ e[:, :, None])[:, :, 0]
    for sgi in range(n_seg):
        c = slice(m + n * sgi, m + n * (sgi + 1))
        H[:m, c] += Htz[sgi]
        H[c, :m] += Htz[sgi].T
        H[c, c] += Hzz[sgi]
        g[c] += gz[sgi]

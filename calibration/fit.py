"""Parameter estimation of the twin from a home's history (the same symbolic model, CasADi derivatives).

Each room is fitted on its own: its two equations (air and slab) are taken from the one symbolic
declaration, and its neighbours' air temperatures enter as the *measured* boundary conditions they
are. That turns one 35-state problem into 17 two-state problems that are small, well conditioned
and fast, and it is exact for the room's own physics. A coupling between two rooms is estimated from
both sides and combined by inverse-variance weighting.

Per room, the training period is cut into segments (24 h by default). In each segment the room is
simulated from its measured air temperature and an unknown slab temperature (one free variable per
segment) with the measured heating, weather and neighbours, and the simulated step-mean air
temperature is compared with the measured one (an output-error fit: what matters for 24 h-ahead
predictions). The objective adds a Gaussian prior on every parameter, centred on the house file's
value (capacities and conductances in log space, so a factor of two either way is one standard
deviation at the default), which keeps parameters the data cannot see at their priors instead of at
arbitrary bounds. Standard errors come from the Gauss–Newton Hessian at the optimum.

The residuals and their exact Jacobian come from CasADi, segment by segment (a two-state recursion
over a day is small); the least-squares problem is solved by a bounded Levenberg–Marquardt on its
sparse Jacobian (:mod:`pems.calibration.gauss_newton`): 3–5× faster than IPOPT with the same
Gauss–Newton Hessian, which spent most of its time building that Hessian through CasADi's graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import casadi as ca
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pems.calibration.gauss_newton import Arrow, NumpyFunction, border_covariance, levenberg_marquardt
from pems.twin.model import HouseModel

#: Parameters fitted in log space (multiplicative deviation from the prior).
LOG_PARAMS = ("C_air", "C_mass", "H_am", "H_out", "H_ground", "H", "eta_heat")
#: The daily internal-gain profile: its mean and two harmonics [W].
GAIN_PARAMS = ("g0", "g1c", "g1s", "g2c", "g2s")
#: Parameters fitted additively (can be zero): solar aperture and the daily gain profile.
LIN_PARAMS = ("A_sol", *GAIN_PARAMS)
#: Shares in [0, 1], fitted additively: where the heater's output and the sun's go (the slab's share).
SHARE_PARAMS = ("f_heat_mass", "f_sol_mass")


@dataclass(frozen=True)
class FitSettings:
    """How parameters are estimated (documented defaults)."""

    segment_hours: float = 24.0
    prior_sigma_log: float = 0.7  # prior σ of log(parameter/prior): a factor of 2 is one σ
    eta_sigma_log: float = 0.05  # heater efficiency: only its ratio to capacities is observable
    bound_factor: float = 10.0  # bounds: prior / 10 … prior × 10
    gain_sigma_w: float = 60.0  # prior σ of the daily gain profile's harmonics [W]
    # prior σ of its constant part [W]: while a slab's temperature hardly changes, a constant gain
    # and a loss to the ground look alike, so this one is held close to zero
    gain_mean_sigma_w: float = 15.0
    aperture_sigma_per_m2: float = 0.03  # prior σ of the solar aperture per m² floor [m²/m²]
    sensor_sigma_k: float = 0.1  # weight of a measurement residual [K]
    slab_sigma_k: float = 3.0  # prior σ of each segment's initial slab − air temperature [K]
    continuity_sigma_k: float = 0.2  # σ of the jump in slab temperature between consecutive segments [K]
    substeps: int = 3  # RK4 sub-steps per model step inside the fit
    max_iter: int = 300
    # Which shares into the slab (of SHARE_PARAMS) this fit estimates; the others stay at the house
    # file's values (the heating kind's prior). The calibration chooses per room (select_structure).
    shares: tuple[str, ...] = ()
    # prior σ of an estimated share: weak, so that the heating kind the house file states is where
    # the search starts, not what it must find (a convector house described as underfloor is found
    # out by its air's quick response to the heater)
    share_sigma: float = 0.35
    # choose each room's structure from the data (see pems.calibration.structure); False: fit with
    # `shares` as given in every room
    select_structure: bool = True
    # the whole-house refinement after the per-room fits (pems.calibration.joint), on at most this
    # many 24 h segments spread over the training history. Off by default: on the reference year it
    # made the held-out 24 h-ahead predictions worse (0.146 → 0.155 K at 28 days), see its notes.
    joint: bool = False
    joint_segments: int = 28
    joint_max_iter: int = 100


@dataclass
class Estimate:
    """One fitted parameter (SI units, as in the house file's ``[rooms.params]``)."""

    name: str
    prior: float
    value: float
    se: float
    lower: float
    upper: float

    @property
    def at_bound(self) -> bool:
        span = self.upper - self.lower if np.isfinite(self.upper - self.lower) else abs(self.value) + 1.0
        return bool(np.isfinite(self.lower) and self.value - self.lower < 1e-3 * span
                    or np.isfinite(self.upper) and self.upper - self.value < 1e-3 * span)


@dataclass
class RoomFit:
    """The result for one room."""

    room: str
    estimates: dict[str, Estimate]
    correlations: pd.DataFrame
    n_segments: int
    n_points: int
    rmse_k: float  # fit residual on training data (simulated segments) [K]
    status: str
    tau_h: tuple[float, float]  # time constants of the room with neighbours held [h]
    wall_s: float = 0.0
    neighbours: tuple[str, ...] = field(default_factory=tuple)


#: One fitted parameter: name, "log" or "lin", prior value, prior σ (of log(value/prior), or in the
#: parameter's unit), and the bounds of θ (θ = log(value/prior), or (value − prior)/σ).
Spec = tuple[str, str, float, float, float, float]


def parameter_spec(model: HouseModel, name: str, settings: FitSettings) -> Spec | None:
    """How parameter ``name`` of ``model`` is fitted (None: it is held at its value)."""
    base = name.split("__", 1)[0]
    p0 = model.param(name)
    if base in LOG_PARAMS and p0 > 0:
        sig = settings.eta_sigma_log if base == "eta_heat" else settings.prior_sigma_log
        lo, hi = np.log(1 / settings.bound_factor), np.log(settings.bound_factor)
        if base == "eta_heat":
            lo, hi = np.log(0.5), np.log(1.2)
        return (name, "log", p0, sig, lo, hi)
    if base == "A_sol":
        area = model.house.room(name.split("__", 1)[1]).floor_area_m2
        sig = settings.aperture_sigma_per_m2 * area
        return (name, "lin", p0, sig, -p0 / sig, 1.0 * area / sig)
    if base in settings.shares:
        sig = settings.share_sigma  # bounded to [0, 1] in θ = (value − prior) / σ
        return (name, "lin", p0, sig, -p0 / sig, (1.0 - p0) / sig)
    if base == "g0":
        return (name, "lin", p0, settings.gain_mean_sigma_w, -np.inf, np.inf)
    if base in LIN_PARAMS:
        return (name, "lin", p0, settings.gain_sigma_w, -np.inf, np.inf)
    return None


def substituted_parameters(model: HouseModel, specs: list[Spec], theta: ca.SX) -> ca.SX:
    """The model's parameter vector with the fitted ones as functions of θ, the others as numbers."""
    exprs = {name: p0 * ca.exp(theta[k]) if kind_ == "log" else p0 + sig * theta[k]
             for k, (name, kind_, p0, sig, _, _) in enumerate(specs)}
    return ca.vertcat(*[exprs.get(n, float(model.p[j])) for j, n in enumerate(model.sym.p.names)])


def spec_values(specs: list[Spec], theta: np.ndarray) -> dict[str, float]:
    """θ → parameter values by name (SI units)."""
    return {name: float(p0 * np.exp(theta[k]) if kind_ == "log" else p0 + sig * theta[k])
            for k, (name, kind_, p0, sig, _, _) in enumerate(specs)}


def spec_theta(spec: Spec, value: float) -> float:
    """Parameter value → θ (clipped into the bounds)."""
    _, kind_, p0, sig, lo, hi = spec
    t = np.log(value / p0) if kind_ == "log" else (value - p0) / sig
    return float(np.clip(t, lo, hi))


def complete_segments(V: np.ndarray, Y: np.ndarray, L: int, min_measured: float = 0.8
                      ) -> tuple[list[int], np.ndarray]:
    """The first rows of the ``L``-step segments a fit can use, and whether each directly follows the
    previous one: inputs ``V`` (rows × inputs) complete, the first measurement of ``Y`` (rows, or
    rows × rooms) there in every room, and at least ``min_measured`` of the segment measured."""
    starts = [a for a in range(0, len(Y) - L + 1, L)
              if np.isfinite(V[a:a + L]).all() and np.isfinite(Y[a]).all()
              and np.isfinite(Y[a:a + L]).mean() >= min_measured]
    follows = np.array([i > 0 and starts[i] == starts[i - 1] + L for i in range(len(starts))], dtype=bool)
    return starts, follows


class RoomProblem:
    """One room's two equations from the declaration, parameters to fit, and its data layout."""

    def __init__(self, model: HouseModel, room: str, settings: FitSettings, step_s: float) -> None:
        s = model.sym
        self.model, self.room, self.settings, self.step_s = model, room, settings, step_s
        ia, im = s.x.index(f"T_air__{room}"), s.x.index(f"T_mass__{room}")
        f = ca.vertcat(s.rhs[ia], s.rhs[im])
        x_other = [i for i in range(len(s.x)) if i not in (ia, im) and ca.depends_on(f, s.x.sym[i])]
        self.neighbours = tuple(s.x.names[i].split("__", 1)[1] for i in x_other)
        u_used = [i for i in range(len(s.u)) if ca.depends_on(f, s.u.sym[i])]
        d_used = [i for i in range(len(s.d)) if ca.depends_on(f, s.d.sym[i])]
        p_used = [j for j in range(len(s.p)) if ca.depends_on(f, s.p.sym[j])]
        self.u_names = [s.u.names[i] for i in u_used]
        self.d_names = [s.d.names[i] for i in d_used]
        self.specs = [sp for j in p_used if (sp := parameter_spec(model, s.p.names[j], settings)) is not None]
        th = ca.SX.sym("theta", len(self.specs))
        p_sub = substituted_parameters(model, self.specs, th)
        z = ca.SX.sym("z", 2)  # [T_air, T_mass] of this room
        v = ca.SX.sym("v", len(u_used) + len(d_used) + len(x_other))
        x_full = ca.SX.zeros(len(s.x), 1)
        x_full[ia], x_full[im] = z[0], z[1]
        for k, i in enumerate(x_other):
            x_full[i] = v[len(u_used) + len(d_used) + k]
        u_full = ca.SX.zeros(len(s.u), 1)
        for k, i in enumerate(u_used):
            u_full[i] = v[k]
        d_full = ca.SX.zeros(len(s.d), 1)
        for k, i in enumerate(d_used):
            d_full[i] = v[len(u_used) + k]
        f_room = ca.substitute(f, ca.vertcat(s.x.sym, s.u.sym, s.d.sym, s.p.sym),
                               ca.vertcat(x_full, u_full, d_full, p_sub))
        self.theta, self.z, self.v = th, z, v
        self.f = ca.Function("f_room", [z, v, th], [f_room])
        # The room is linear in its two states: dz/dt = A(θ) z + w(v, θ). Its exact zero-order hold
        # over a step, and the step mean, are functions of the 2×2 matrix A, evaluated in closed form
        # (Sylvester's formula for distinct eigenvalues), so the fit predicts exactly what the
        # simulator would, at the cost of a 2×2 matrix–vector product per step.
        A = ca.jacobian(f_room, z)
        if ca.depends_on(A, ca.vertcat(z, v)):
            raise ValueError(f"room {room}: the model is not linear in the room's states")
        w = ca.substitute(f_room, z, ca.DM.zeros(2))
        self.A = ca.Function("A_room", [th], [A])
        self.W = ca.Function("w_room", [v, th], [w])
        h = float(step_s)
        tr, det = A[0, 0] + A[1, 1], A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]
        disc = ca.sqrt(ca.fmax(tr**2 - 4 * det, 1e-30))
        l1, l2 = (tr + disc) / 2, (tr - disc) / 2
        e1, e2 = ca.exp(l1 * h), ca.exp(l2 * h)
        phi1, phi2 = (e1 - 1) / l1, (e2 - 1) / l2  # ∫₀ʰ e^{λs} ds

        def matrix_function(f1, f2):  # f(A) for a scalar function with values f1, f2 at λ1, λ2
            return ((l1 * f2 - l2 * f1) / (l1 - l2)) * ca.DM.eye(2) + ((f1 - f2) / (l1 - l2)) * A

        Ad = matrix_function(e1, e2)  # e^{Ah}
        Gd = matrix_function(phi1, phi2)  # ∫₀ʰ e^{As} ds
        Pm = Gd / h  # step mean from the initial state
        Gm = matrix_function((phi1 - h) / (l1 * h), (phi2 - h) / (l2 * h))  # step mean from w
        self.mats = ca.Function("zoh_room", [th], [ca.horzcat(Ad, Gd, Pm, Gm)])
        M = ca.SX.sym("M", 2, 8)
        wk = ca.SX.sym("w", 2)
        step = ca.Function("step_room", [z, wk, M],
                           [ca.mtimes(M[:, 0:2], z) + ca.mtimes(M[:, 2:4], wk),
                            ca.mtimes(M[0, 4:6], z) + ca.mtimes(M[0, 6:8], wk)])
        self.step = step

    @property
    def input_names(self) -> list[str]:
        return self.u_names + self.d_names + [f"T_room__{n}" for n in self.neighbours]

    def values(self, theta: np.ndarray) -> dict[str, float]:
        return spec_values(self.specs, theta)

    def segments(self, inputs: pd.DataFrame, measured: pd.Series
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cut the data into complete segments: V (n_seg, n_v, L), Y (n_seg, L), y0 (n_seg,), and
        whether each segment directly follows the previous one (n_seg,)."""
        L = int(round(self.settings.segment_hours * 3600 / self.step_s))
        V = inputs[self.input_names].to_numpy(dtype=float)
        Y = measured.to_numpy(dtype=float)
        starts, follows = complete_segments(V, Y, L)
        if not starts:
            return np.zeros((0, len(self.input_names), L)), np.zeros((0, L)), np.zeros(0), follows
        return (np.array([V[a:a + L].T for a in starts]), np.array([Y[a:a + L] for a in starts]),
                Y[starts], follows)

    def fit(self, inputs: pd.DataFrame, measured: pd.Series) -> RoomFit:
        """Fit this room to its data (rows: model steps)."""
        t_start = time.perf_counter()
        st = self.settings
        V, Y, y0, follows = self.segments(inputs, measured)
        n_seg, L = Y.shape if Y.ndim == 2 else (0, 0)
        n_th = len(self.specs)
        if n_seg < 2:
            return self._unfitted("too little complete data (fewer than two segments)", t_start)
        # One segment: simulated from its initial [air, slab] (both free: the first measurement is a
        # noisy step mean, not the air's exact state), its step means compared with the measured
        # ones; its residuals and end state with their Jacobians in (θ, initial state), in SX
        # (a two-state recursion over a day: small), mapped over all segments.
        z0 = ca.SX.sym("z0", 2)  # [T_air, T_mass]
        Vs = ca.SX.sym("V", V.shape[1], L)
        Ys, Ws = ca.SX.sym("Y", 1, L), ca.SX.sym("W", 1, L)
        mats = self.mats(self.theta)
        z, preds = z0, []
        for k in range(L):
            z, pred = self.step(z, self.W(Vs[:, k], self.theta), mats)
            preds.append(pred)
        r = (ca.hcat(preds) - Ys) * Ws / st.sensor_sigma_k  # exact step-mean air temperature
        xs = ca.vertcat(self.theta, z0)
        shared_theta = [True] + [False] * 4  # θ the same for all segments (outputs: one per segment)
        seg = NumpyFunction(ca.Function("seg", [self.theta, z0, Vs, Ys, Ws],
                                        [r, z, ca.densify(ca.jacobian(r.T, xs)), ca.densify(ca.jacobian(z, xs))])
                            .map(n_seg, shared_theta, [False] * 4))
        # a trial step needs the residuals only: several times cheaper than with the Jacobian
        seg_r = NumpyFunction(ca.Function("seg_r", [self.theta, z0, Vs, Ys, Ws], [r, z])
                              .map(n_seg, shared_theta, [False] * 2))
        W = np.isfinite(Y).astype(float)
        Vcat, Ycat, Wcat = np.hstack(list(V)), np.nan_to_num(Y).reshape(1, -1), W.reshape(1, -1)
        # Multiple shooting: where a segment follows the previous one, it starts (softly) where the
        # previous one ended, so the slab's slow dynamics are seen across days, not reset daily.
        nxt = np.flatnonzero(follows)
        sc = np.array([st.sensor_sigma_k, st.continuity_sigma_k])
        nv = 2  # variables of each segment: its initial air and slab temperatures
        seg_sig = np.array([st.sensor_sigma_k, st.slab_sigma_k])
        seg_mean = np.c_[y0, y0].T  # their prior means
        sig = np.array([s[3] if s[1] == "log" else 1.0 for s in self.specs])
        jac = _ShootingJacobian(n_th, n_seg, L, nxt)

        def residuals(x: np.ndarray, with_jacobian: bool = True):
            th, Z0 = x[:n_th], x[n_th:].reshape(n_seg, nv).T
            out = (seg if with_jacobian else seg_r)(th, Z0, Vcat, Ycat, Wcat)
            rd, z_end = out[0].ravel(), out[1]
            cont = ((Z0[:, nxt] - z_end[:, nxt - 1]) / sc[:, None]).T.ravel()
            own = ((Z0 - seg_mean) / seg_sig[:, None]).T.ravel()
            r_all = np.r_[rd, cont, own, th / sig]
            if not with_jacobian:
                return r_all, None
            Jr = out[2].reshape(L, n_seg, n_th + nv).transpose(1, 0, 2)  # (seg, step, θ+z0)
            Je = out[3].reshape(2, n_seg, n_th + nv).transpose(1, 0, 2)  # (seg, state, θ+z0)
            return r_all, jac.matrix(Jr, Je, sc, seg_sig, sig)

        lbx = np.r_[[s[4] for s in self.specs], np.full(nv * n_seg, -np.inf)]
        ubx = np.r_[[s[5] for s in self.specs], np.full(nv * n_seg, np.inf)]
        x0 = np.r_[np.zeros(n_th), np.c_[y0, y0 + 1.0].ravel()]
        # the normal equations are an arrow: θ couples to all, a segment's [air, slab] to its own and
        # (by continuity) its neighbours' (within 3 of the diagonal)
        arrow = Arrow(n_th, 2 * nv - 1)
        sol = levenberg_marquardt(residuals, x0, lbx, ubx, max_iter=st.max_iter, structure=arrow)
        status = sol.status
        xo = sol.x
        theta = xo[:n_th]
        # Uncertainty: Gauss–Newton Hessian of the data term plus the priors' curvature.
        res = residuals(xo, False)[0][: n_seg * L]
        n_pts = int(W.sum())
        dof = max(1, n_pts - n_th - nv * n_seg)
        s2 = float(res @ res) / dof  # variance factor of the standardised residuals
        cov_th = border_covariance(sol.hessian, arrow) * s2
        se_th = np.sqrt(np.clip(np.diag(cov_th), 0, None))
        values = self.values(theta)
        est = {}
        for k, (name, kind_, p0, sg, lo, hi) in enumerate(self.specs):
            val = values[name]
            se = val * se_th[k] if kind_ == "log" else sg * se_th[k]
            lo_v = p0 * np.exp(lo) if kind_ == "log" else p0 + sg * lo
            hi_v = p0 * np.exp(hi) if kind_ == "log" else p0 + sg * hi
            est[name] = Estimate(name, p0, val, float(se), float(lo_v), float(hi_v))
        d = np.sqrt(np.clip(np.diag(cov_th), 1e-300, None))
        corr = pd.DataFrame(cov_th / np.outer(d, d), index=[s[0] for s in self.specs],
                            columns=[s[0] for s in self.specs])
        lam = np.linalg.eigvals(np.asarray(self.A(theta)))
        tau = tuple(sorted(float(-1 / l.real / 3600) for l in lam))
        rmse = float(np.sqrt(np.sum((res * st.sensor_sigma_k) ** 2) / max(1, n_pts)))
        return RoomFit(self.room, est, corr, n_seg, n_pts, rmse, status, tau,
                       time.perf_counter() - t_start, self.neighbours)

    def _unfitted(self, why: str, t_start: float) -> RoomFit:
        est = {name: Estimate(name, p0, p0, float("nan"), float("nan"), float("nan"))
               for name, _, p0, _, _, _ in self.specs}
        lam = np.linalg.eigvals(np.asarray(self.A(np.zeros(len(self.specs)))))
        tau = tuple(sorted(float(-1 / l.real / 3600) for l in lam))
        return RoomFit(self.room, est, pd.DataFrame(), 0, 0, float("nan"), why, tau,
                       time.perf_counter() - t_start, self.neighbours)


class _ShootingJacobian:
    """The sparse Jacobian of a multiple-shooting fit: residuals [data of every segment, continuity
    between consecutive segments, priors of every segment's initial state, parameters' priors] by
    variables [θ, then each segment's initial state (``nz``)]; its pattern is fixed, only the values
    change."""

    def __init__(self, n_th: int, n_seg: int, L: int, nxt: np.ndarray, nz: int = 2) -> None:
        self.shape = (n_seg * L + nz * len(nxt) + nz * n_seg + n_th, n_th + nz * n_seg)
        seg, step, col = np.meshgrid(np.arange(n_seg), np.arange(L), np.arange(n_th + nz), indexing="ij")
        # data rows: each against θ and its own segment's initial state
        rows = [(seg * L + step).ravel()]
        cols = [np.where(col < n_th, col, n_th + nz * seg + col - n_th).ravel()]
        # continuity rows: z0[k] − z_end[k−1](θ, z0[k−1])
        r0 = n_seg * L
        i, s_, c = np.meshgrid(np.arange(len(nxt)), np.arange(nz), np.arange(n_th + nz), indexing="ij")
        k = nxt[i]
        rows.append((r0 + nz * i + s_).ravel())
        cols.append(np.where(c < n_th, c, n_th + nz * (k - 1) + c - n_th).ravel())
        ii, ss = np.meshgrid(np.arange(len(nxt)), np.arange(nz), indexing="ij")
        rows.append((r0 + nz * ii + ss).ravel())
        cols.append((n_th + nz * nxt[ii] + ss).ravel())
        # priors of the initial states and of the parameters: diagonal
        r1 = r0 + nz * len(nxt)
        rows.append(r1 + np.arange(nz * n_seg))
        cols.append(n_th + np.arange(nz * n_seg))
        r2 = r1 + nz * n_seg
        rows.append(r2 + np.arange(n_th))
        cols.append(np.arange(n_th))
        self.rows, self.cols = np.concatenate(rows), np.concatenate(cols)
        self.nxt, self.n_seg, self.n_th, self.nz = nxt, n_seg, n_th, nz

    def matrix(self, Jr: np.ndarray, Je: np.ndarray, sc: np.ndarray, seg_sig: np.ndarray,
               sig: np.ndarray) -> sp.csr_matrix:
        """Jr (seg, step, θ+z0), Je (seg, state, θ+z0): the segment Jacobians of data and end state;
        ``sc``: σ of the continuity per state, ``seg_sig``: σ of each initial state's prior."""
        nxt = self.nxt
        vals = [Jr.ravel(),
                (-Je[nxt - 1] / sc[None, :, None]).ravel(),
                np.broadcast_to(1.0 / sc, (len(nxt), self.nz)).ravel(),
                np.tile(1.0 / seg_sig, self.n_seg),
                1.0 / sig]
        return sp.csr_matrix((np.concatenate(vals), (self.rows, self.cols)), shape=self.shape)

"""A bounded Levenberg–Marquardt for sparse least-squares problems (the calibration's fits).

The fits minimise ``‖r(x)‖²`` where ``r`` is nearly linear near the optimum (temperatures simulated
by a linear model, parameters in log space), and the Jacobian is sparse (segment by segment).
Gauss–Newton with Marquardt's damping converges in a handful of iterations on such problems, where
a general NLP solver spends most of its time building and factorising what this exploits.

Bounds (on the parameters only) are handled by projection with an active set: a variable at its
bound whose descent direction points out of the box is held there for the step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp


@dataclass
class Normal:
    """The normal equations of a least-squares problem when the residual function assembles them
    itself (cheaper than the Jacobian when it is large and dense in blocks): ``JᵀJ`` and ``Jᵀr``."""

    H: np.ndarray
    g: np.ndarray


#: ``(x, jac) → (r, J)``: residuals (n_r,) and, when ``jac``, their Jacobian (n_r × n_x, sparse or
#: dense) or the normal equations (:class:`Normal`); without ``jac`` the second value may be None.
ResidualFn = Callable[[np.ndarray, bool], tuple[np.ndarray, "sp.spmatrix | np.ndarray | Normal | None"]]


@dataclass
class LMResult:
    x: np.ndarray
    cost: float  # ‖r‖² at x
    hessian: "np.ndarray | sp.spmatrix"  # JᵀJ at x (the Gauss–Newton Hessian) (n_x × n_x)
    status: str  # "Solve_Succeeded", "Solved_To_Acceptable_Level" or "Maximum_Iterations_Exceeded"
    iterations: int


@dataclass(frozen=True)
class Arrow:
    """The structure of a multiple-shooting problem's normal equations: the first ``border``
    variables (the parameters) couple to everything, the rest (the segments' own variables, in
    segment order) only within ``band`` of the diagonal. Solved by the Schur complement on the
    border with a banded Cholesky for the rest: linear in the number of segments, not cubic."""

    border: int
    band: int


def levenberg_marquardt(fun: ResidualFn, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                        max_iter: int = 100, atol: float = 1e-4, xtol: float = 1e-9,
                        structure: Arrow | None = None) -> LMResult:
    """Minimise ``‖r(x)‖²`` subject to ``lower ≤ x ≤ upper`` (infinite bounds: none).

    Converged when a nearly undamped (Gauss–Newton) step lowers the cost by less than ``atol``, or
    moves no variable by more than ``xtol``, or the projected gradient vanishes. With residuals in
    units of their standard deviations the cost is a χ², and a change of 10⁻⁴ in it is far below
    what any statistic of the fit can resolve. ``structure``: the normal equations' arrow shape
    (then only the border may have finite bounds).
    """
    if structure is not None and (np.isfinite(lower[structure.border:]).any()
                                  or np.isfinite(upper[structure.border:]).any()):
        raise ValueError("with an arrow structure only the border variables may be bounded")
    x = np.clip(np.asarray(x0, dtype=float), lower, upper)
    r, J = fun(x, True)
    cost = float(r @ r)
    mu = 1e-3
    status, it = "Maximum_Iterations_Exceeded", 0
    H, g = _normal(J, r)
    for it in range(1, max_iter + 1):
        # active set: at a bound with the descent direction (−g) pointing outwards
        held = ((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0))
        free = ~held
        if np.max(np.abs(g[free]), initial=0.0) < 1e-12 * max(1.0, cost):
            status = "Solve_Succeeded"
            break
        accepted = False
        while mu < 1e12:
            try:
                step = _damped_step(H, g, free, mu, structure)
            except (np.linalg.LinAlgError, ValueError):
                mu *= 10
                continue
            x_new = np.clip(x + step, lower, upper)
            r_new, J_new = fun(x_new, False)
            cost_new = float(r_new @ r_new) if np.all(np.isfinite(r_new)) else np.inf
            if cost_new < cost:
                accepted = True
                break
            mu *= 4
        if not accepted:
            status = "Solved_To_Acceptable_Level"  # no step lowers the cost any more
            break
        moved = float(np.max(np.abs(x_new - x)))
        decrease = cost - cost_new
        undamped = mu < 1e-2
        if J_new is None:
            r_new, J_new = fun(x_new, True)
        x, r, J, cost = x_new, r_new, J_new, cost_new
        H, g = _normal(J, r)
        mu = max(mu / 3, 1e-9)
        if undamped and decrease < atol or moved < xtol:
            status = "Solve_Succeeded"
            break
    return LMResult(x, cost, H, status, it)


class NumpyFunction:
    """A CasADi function called on numpy arrays through its buffers (no conversion to and from DM,
    which for the calibration's large Jacobians cost more than evaluating them). Inputs and outputs
    are dense; outputs are returned as fresh arrays of the function's shapes."""

    def __init__(self, f) -> None:
        self.f = f
        sparse = [i for i in range(f.n_out()) if f.nnz_out(i) != f.numel_out(i)]
        if sparse:  # the buffer holds nonzeros only: a structural zero would shift every value after it
            raise ValueError(f"{f.name()}: outputs {sparse} are sparse; densify them")
        self.buf, self.eval = f.buffer()
        self.out = [np.empty(f.size_out(i)[::-1]) for i in range(f.n_out())]  # column-major storage
        for i, o in enumerate(self.out):
            self.buf.set_res(i, memoryview(o))
        self.args: list[np.ndarray] = [np.empty(0)] * f.n_in()

    def __call__(self, *args: np.ndarray) -> list[np.ndarray]:
        for i, a in enumerate(args):
            a = np.asarray(a, dtype=float)
            a = np.ascontiguousarray((a.reshape(-1, 1) if a.ndim < 2 else a).T)  # column-major data
            if a.size != self.f.nnz_in(i):
                raise ValueError(f"{self.f.name()}: input {i} has {a.size} values, expected {self.f.nnz_in(i)}")
            self.args[i] = a  # keep it alive while the buffer points at it
            self.buf.set_arg(i, memoryview(a))
        self.eval()
        return [o.T.copy() for o in self.out]


def _damped_step(H, g: np.ndarray, free: np.ndarray, mu: float, structure: Arrow | None) -> np.ndarray:
    """The Levenberg–Marquardt step ``−(H + μ diag H)⁻¹ g`` over the free variables (zero elsewhere)."""
    step = np.zeros_like(g)
    if structure is None:
        Hd = H.toarray() if sp.issparse(H) else H
        Hf = Hd[np.ix_(free, free)]
        d = np.diag(Hf).copy()
        d[d <= 0] = 1.0
        step[free] = -scipy.linalg.solve(Hf + mu * np.diag(d), g[free], assume_a="pos")
        return step
    nb = structure.border
    fb = np.flatnonzero(free[:nb])
    A, B, C = arrow_blocks(H, structure)
    A, B = A[np.ix_(fb, fb)], B[fb]
    dA = np.diag(A).copy()
    dA[dA <= 0] = 1.0
    A = A + mu * np.diag(dA)
    C = C.copy()
    dC = C[structure.band].copy()
    dC[dC <= 0] = 1.0
    C[structure.band] += mu * dC
    X = scipy.linalg.solveh_banded(C, np.c_[B.T, g[nb:]])  # C⁻¹ [Bᵀ, g_rest]
    S = A - B @ X[:, :-1]
    x = scipy.linalg.solve(S, -(g[:nb][fb] - B @ X[:, -1]), assume_a="pos")
    step[fb] = x
    step[nb:] = -X[:, -1] - X[:, :-1] @ x
    return step


def arrow_blocks(H, structure: Arrow) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The border block (dense), the border–rest block (dense) and the rest in upper banded form
    (``scipy.linalg.solveh_banded``: row ``band − k`` holds the k-th superdiagonal) of ``H``."""
    nb, u = structure.border, structure.band
    n = H.shape[0] - nb
    if sp.issparse(H):
        H = H.tocsr()
        A, B, rest = H[:nb, :nb].toarray(), H[:nb, nb:].toarray(), H[nb:, nb:]
        diag = rest.diagonal
    else:
        A, B, rest = H[:nb, :nb], H[:nb, nb:], H[nb:, nb:]
        diag = rest.diagonal
    C = np.zeros((u + 1, n))
    for k in range(u + 1):
        C[u - k, k:] = diag(k)
    return A, B, C


def border_covariance(H, structure: Arrow) -> np.ndarray:
    """The border variables' block of ``H⁻¹`` (their covariance, up to a variance factor):
    the inverse of the Schur complement ``A − B C⁻¹ Bᵀ`` (pseudo-inverse where singular)."""
    A, B, C = arrow_blocks(H, structure)
    S = A - B @ scipy.linalg.solveh_banded(C, B.T)
    return np.linalg.pinv(S)


def _normal(J, r: np.ndarray):
    """JᵀJ (sparse when J is, else dense) and Jᵀr."""
    if isinstance(J, Normal):
        return J.H, J.g
    if sp.issparse(J):
        JT = J.T.tocsr()
        return (JT @ J).tocsr(), np.asarray(JT @ r).ravel()
    return J.T @ J, J.T @ r

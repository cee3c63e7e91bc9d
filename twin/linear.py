"""The affine structure of the symbolic model and its exact zero-order-hold discretisation.

The house model is linear in its states and, for fixed disturbances, affine in its inputs::

    dx/dt = A x + B(d) u + c(d)            y = G(d) u + y0(d)

``A``, ``B``, ``c``, ``G`` and ``y0`` are *derived* from the one declaration in
:mod:`pems.twin.model` by CasADi differentiation, never written by hand; :func:`affine_form` checks
the structure and refuses a model that is not of this form. (``B`` depends on ``d`` for a heat pump,
whose COP follows the outdoor temperature.)

With inputs and disturbances held over a step ``h`` the solution is exact (Van Loan)::

    x(h)  = Ad x0 + Γ w,   Ad = e^{A h},  Γ = ∫₀ʰ e^{Aτ} dτ,               w = B u + c
    mean x over the step = (Γ/h) x0 + (Λ/h) w,  Λ = ∫₀ʰ ∫₀ˢ e^{Aτ} dτ ds
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import casadi as ca
import numpy as np
from scipy.linalg import expm

from pems.twin.model import HouseModel


class ModelStructureError(ValueError):
    """The declared model is not linear in its states / affine in its inputs."""


@dataclass(frozen=True)
class AffineForm:
    """``dx/dt = A x + B(d) u + c(d)`` and ``y = G(d) u + y0(d)`` for fixed parameters."""

    A: np.ndarray  # (n_x, n_x) [1/s]
    B_fn: ca.Function  # d -> (n_x, n_u)
    c_fn: ca.Function  # d -> (n_x,)
    G_fn: ca.Function  # d -> (n_y, n_u)
    y0_fn: ca.Function  # d -> (n_y,)
    B_depends_on_d: bool
    G_depends_on_d: bool

    def B(self, D: np.ndarray) -> np.ndarray:
        """``B`` for each row of ``D`` (N, n_d) → (N, n_x, n_u)."""
        return _map3(self.B_fn, D)

    def c(self, D: np.ndarray) -> np.ndarray:
        """``c`` for each row of ``D`` → (N, n_x)."""
        return _map2(self.c_fn, D)

    def G(self, D: np.ndarray) -> np.ndarray:
        return _map3(self.G_fn, D)

    def y0(self, D: np.ndarray, outputs: list[int] | None = None) -> np.ndarray:
        """The outputs with every input zero for each row of ``D`` → (N, n_y), or only ``outputs``."""
        return _map2(self.y0_fn, D, outputs)


#: Rows per CasADi map evaluation: a map over a whole year holds its work buffers for every row at
#: once (hundreds of MB for the reference house); by chunks it holds them for a few days.
MAP_CHUNK = 512


def chunked(fn: ca.Function, n: int, size: int = MAP_CHUNK) -> Iterator[tuple[int, int, ca.Function]]:
    """``fn`` mapped over rows ``[a, b)`` of ``n``, ``size`` rows at a time: ``(a, b, mapped)`` for each
    chunk (one mapped function for the full chunks, another for the last)."""
    full = fn.map(size) if n >= size else None
    for a in range(0, n, size):
        b = min(a + size, n)
        yield a, b, (full if b - a == size else fn.map(b - a))


def _map2(fn: ca.Function, D: np.ndarray, cols: list[int] | None = None) -> np.ndarray:
    width = fn.size_out(0)[0] * fn.size_out(0)[1]
    cols = list(range(width)) if cols is None else list(cols)
    out = np.empty((D.shape[0], len(cols)))
    for a, b, f in chunked(fn, D.shape[0]):
        r = f(D[a:b].T)
        out[a:b] = np.asarray(r.full() if hasattr(r, "full") else r).T[:, cols]
    return out


def _map3(fn: ca.Function, D: np.ndarray) -> np.ndarray:
    rows, cols = fn.size_out(0)
    out = np.empty((D.shape[0], rows, cols))
    for a, b, f in chunked(fn, D.shape[0]):
        blk = np.asarray(f(D[a:b].T).full())  # (rows, k * cols), blocks side by side
        out[a:b] = blk.reshape(rows, b - a, cols).transpose(1, 0, 2)
    return out


def affine_form(model: HouseModel) -> AffineForm:
    """Derive the affine form of ``model`` at its parameter values (cached on the model)."""
    if "affine" in model._cache:
        return model._cache["affine"]
    s = model.sym
    x, u, d, p = s.x.sym, s.u.sym, s.d.sym, s.p.sym
    A = ca.jacobian(s.rhs, x)
    B = ca.jacobian(s.rhs, u)
    if ca.depends_on(A, ca.vertcat(x, u, d)):
        raise ModelStructureError("dx/dt is not linear in the states")
    if u.numel() and ca.depends_on(B, ca.vertcat(x, u)):
        raise ModelStructureError("dx/dt is not affine in the inputs for fixed disturbances")
    xu = ca.vertcat(x, u)
    c = ca.substitute(s.rhs, xu, ca.DM.zeros(xu.numel()))
    y = ca.vertcat(*s.outputs.values())
    G = ca.jacobian(y, u)
    if ca.depends_on(ca.jacobian(y, x), ca.vertcat(x, u, d, p)) or ca.depends_on(G, ca.vertcat(x, u)):
        raise ModelStructureError("outputs are not affine in states and inputs")
    y0 = ca.substitute(y, xu, ca.DM.zeros(xu.numel()))
    pv = ca.DM(model.p)

    def fix(expr: ca.SX, name: str) -> ca.Function:
        return ca.Function(name, [d], [ca.substitute(expr, p, pv)])

    A_num = np.asarray(ca.Function("A", [p], [A])(pv).full())
    form = AffineForm(
        A=A_num, B_fn=fix(B, "B"), c_fn=fix(c, "c"), G_fn=fix(G, "G"), y0_fn=fix(y0, "y0"),
        B_depends_on_d=bool(u.numel()) and ca.depends_on(B, d),
        G_depends_on_d=bool(u.numel()) and ca.depends_on(G, d),
    )
    model._cache["affine"] = form
    return form


@dataclass(frozen=True)
class Discretisation:
    """Exact zero-order-hold matrices of ``dx/dt = A x + w`` over a step ``dt``."""

    dt: float  # [s]
    Ad: np.ndarray  # e^{A dt}
    Gamma: np.ndarray  # ∫₀^dt e^{Aτ} dτ  [s]
    Lambda: np.ndarray  # ∫₀^dt ∫₀^s e^{Aτ} dτ ds  [s²]

    @property
    def Phi_mean(self) -> np.ndarray:
        """Maps x0 to the mean state over the step (the w-free part)."""
        return self.Gamma / self.dt

    @property
    def Gamma_mean(self) -> np.ndarray:
        """Maps w to the mean state over the step."""
        return self.Lambda / self.dt


def zoh(A: np.ndarray, dt: float) -> Discretisation:
    """Van Loan's block exponential: one ``expm`` gives ``e^{A dt}``, ``Γ`` and ``Λ`` together."""
    n = A.shape[0]
    M = np.zeros((3 * n, 3 * n))
    M[:n, :n] = A
    M[:n, n:2 * n] = np.eye(n)
    M[n:2 * n, 2 * n:] = np.eye(n)
    E = expm(M * dt)
    return Discretisation(dt=dt, Ad=E[:n, :n], Gamma=E[:n, n:2 * n], Lambda=E[:n, 2 * n:])

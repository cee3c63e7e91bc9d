"""The affine form's maps over long tables: by chunks, the same numbers as one map over every row."""

from __future__ import annotations

import casadi as ca
import numpy as np

from pems.twin import linear
from pems.twin.linear import _map2, _map3


def test_chunked_maps_equal_one_map_over_every_row(monkeypatch):
    d = ca.SX.sym("d", 3)
    f2 = ca.Function("f2", [d], [ca.vertcat(d[0] * d[1], ca.sin(d[2]), d[0] + 1.0)])
    f3 = ca.Function("f3", [d], [ca.reshape(ca.vertcat(d, d * 2.0), 3, 2)])
    D = np.random.default_rng(0).normal(size=(1000, 3))
    whole2 = np.asarray(f2.map(1000)(D.T).full()).T
    whole3 = np.asarray(f3.map(1000)(D.T).full()).reshape(3, 1000, 2).transpose(1, 0, 2)
    monkeypatch.setattr(linear, "MAP_CHUNK", 96)  # 10 whole chunks and a part
    np.testing.assert_array_equal(_map2(f2, D), whole2)
    np.testing.assert_array_equal(_map3(f3, D), whole3)
    assert _map3(f3, D)[7, :, 1] == __import__("pytest").approx(2.0 * D[7])

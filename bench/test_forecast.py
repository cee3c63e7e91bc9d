"""Learned forecasts in the loop: what a step's PV and load forecast costs against the MPC solve.

The winter week of the reference house with ``[forecast] model = "learned"``: fitting the PV and
load forecasters on the 42 days before the start, then one forecast issue per control step (48 h,
15-minute steps) beside the plain slice of a perfect forecast (the baseline, measured in the same
run). Target: a learned forecast under 10 % of the MPC's 2 s step budget.
"""

from __future__ import annotations

import pytest

from pems.scenarios.forecast import forecast_provider
from pems.scenarios.runner import prepare
from pems.scenarios.spec import load_scenario


@pytest.fixture(scope="module")
def week():
    sc = load_scenario("winter-week")
    learned = sc.spec.model_copy(update={"forecast": sc.spec.forecast.model_copy(update={"model": "learned"})})
    sc.spec = learned
    return sc, prepare(sc)


def test_fit_learned_forecasters(benchmark, week):
    sc, prep = week
    fp = benchmark.pedantic(lambda: forecast_provider(sc, prep), rounds=1, iterations=1)
    assert fp.learned is not None and fp.learned.pv is not None


@pytest.mark.parametrize("model", ["perfect", "learned"])
def test_forecast_issue(benchmark, week, model):
    sc, prep = week
    spec = sc.spec.forecast.model_copy(update={"model": model})
    sc.spec = sc.spec.model_copy(update={"forecast": spec})
    fp = forecast_provider(sc, prep)
    state = {"k": 0}

    def issue():
        fp(state["k"] % prep.n_steps)
        state["k"] += 1

    benchmark.pedantic(issue, rounds=20, iterations=1)
    if model == "learned":
        assert benchmark.stats.stats.median < 0.2  # the target: under 10 % of the MPC step budget

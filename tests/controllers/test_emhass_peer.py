"""EMHASS as a peer: the twin's rooms as EMHASS's single-node thermal loads, and EMHASS planning them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import BATTERY_HOUSE, TWO_ROOMS, house_from, write_scenario  # noqa: E402

from pems.controllers.emhass_peer import peers_python, single_node_rooms  # noqa: E402
from pems.twin.model import build_model  # noqa: E402
from pems.twin.steady import steady_state  # noqa: E402


def test_a_room_as_one_node_heats_as_the_twin_and_loses_what_its_steady_state_needs():
    """Heating rate: the rating's heat (efficiency, from the model's B) over the air's and slab's
    capacity together; loss: what the twin's steady state at that outdoor temperature needs (its
    neighbours and the ground included), so the node's steady heating is the twin's, room by room."""
    model = build_model(house_from(TWO_ROOMS))
    for t_out in (-10.0, 5.0):
        nodes = single_node_rooms(model, t_out)
        names = model.sym.d.names
        d = np.zeros(len(names))
        d[names.index("T_out")] = t_out
        d[names.index("T_ground")] = model.house.site.ground_temperature_c
        _, u = steady_state(model, d, np.full(2, 21.0))
        for i, (node, room) in enumerate(zip(nodes, TWO_ROOMS["rooms"])):
            p = room["params"]
            c = p["C_air"] + p["C_mass"]
            assert node.nominal_w == room["heater_w"]
            assert node.heating_rate == pytest.approx(p["eta_heat"] * room["heater_w"] * 3600 / c, rel=1e-9)
            # the node's steady heating at 21 °C: P = P_nom · cooling · (21 − T_out) / heating_rate
            p_ss = node.nominal_w * node.cooling_constant * (21.0 - t_out) / node.heating_rate
            assert p_ss == pytest.approx(u[i], rel=1e-9)
        # colder outside, the ground (held at 10 °C) is a smaller share of the loss per kelvin
    warm, cold = single_node_rooms(model, 5.0)[0], single_node_rooms(model, -10.0)[0]
    assert cold.cooling_constant < warm.cooling_constant
    # and the loss per kelvin is the envelope's at least (room a: H_out 25 W/K, H_ground 6 W/K to 10 °C)
    c_a = TWO_ROOMS["rooms"][0]["params"]["C_air"] + TWO_ROOMS["rooms"][0]["params"]["C_mass"]
    assert cold.cooling_constant * c_a / 3600 > 25.0


def test_a_heat_pumps_node_heats_by_its_cop():
    hp = dict(TWO_ROOMS, heating={"kind": "heat_pump", "supply_temp_c": 35.0})
    e, h = single_node_rooms(build_model(house_from(TWO_ROOMS)), 0.0), single_node_rooms(build_model(house_from(hp)), 0.0)
    assert all(b.heating_rate > 2.0 * a.heating_rate for a, b in zip(e, h))  # a COP well above 2 at 0 °C


@pytest.mark.slow
@pytest.mark.skipif(peers_python() is None, reason="EMHASS is not installed here (`make bench-peers` creates .venv-peers)")
def test_emhass_plans_the_rooms_and_the_battery_of_a_day(tmp_path):
    """EMHASS given the rooms as thermal loads: it heats by its own plan (powers, not the thermostats),
    plans again every hour, and keeps the rooms near their band."""
    from pems.controllers.registry import make_controller
    from pems.scenarios.runner import prepare, run
    from pems.scenarios.spec import load_scenario

    prep = prepare(load_scenario(write_scenario(tmp_path, BATTERY_HOUSE, weather="greensboro-tmy3", load="h25",
                                                prices="two-rate", days=1.0)))
    ctrl = make_controller("emhass", prep.model, 900.0)
    r = run(prep, ctrl)
    assert len(ctrl.solve_s) == 24 and not [e for e in ctrl.events if e["kind"] == "fallback"]
    t = r.trajectory
    assert t["T_setpoint__a"].isna().all()  # powers commanded, no set-points
    # one node per room cannot see the slab's lag between heater and air: EMHASS heats about what the
    # rooms need (the MPC's energy, to a quarter) and misses the band by a few kelvin-hours a room a day
    mpc = run(prep, "mpc").kpis
    assert r.kpis["heating_kWh"] == pytest.approx(mpc["heating_kWh"], rel=0.25)
    assert r.kpis["discomfort_Kh"] < 5.0 * len(prep.model.rooms)
    print({k: (round(r.kpis[k], 2), round(mpc[k], 2)) for k in ("cost", "heating_kWh", "discomfort_Kh")})

"""The house description: the built-in reference home against its published configuration,
priors for absent parameters, and the smallest valid house file."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import house_from, shared_data
from pems.errors import InputError
from pems.twin.house import load_house
from pems.twin.model import build_model, parameter_values

REF = ("loxone-growatt-reference",)


@pytest.fixture(scope="module")
def reference():
    return load_house("reference")


def _system_config() -> dict:
    return json.loads(shared_data(*REF, "system_config.json").read_text(encoding="utf-8"))


def _room_features() -> dict:
    return json.loads(shared_data(*REF, "room_features.json").read_text(encoding="utf-8"))["room_features"]


# ---------------------------------------------------------------- the built-in reference home


def test_reference_house_has_17_rooms_on_two_storeys(reference):
    assert reference.name == "reference"
    assert len(reference.rooms) == 17
    assert len(set(reference.room_ids)) == 17
    assert {r.storey for r in reference.rooms} == {0, 1}
    per_storey = {s: sum(r.storey == s for r in reference.rooms) for s in (0, 1)}
    assert per_storey[0] > 0 and per_storey[1] > 0


def test_reference_neighbours_exist_and_network_is_connected(reference):
    ids = set(reference.room_ids)
    for r in reference.rooms:
        for n in r.neighbours:
            assert n in ids, f"{r.id} lists unknown neighbour {n}"
            assert n != r.id
    # One house: every room reaches every other through the couplings (no isolated room).
    adj = {rid: set() for rid in ids}
    for a, b in reference.couplings():
        adj[a].add(b)
        adj[b].add(a)
    seen, todo = set(), [reference.room_ids[0]]
    while todo:
        r = todo.pop()
        if r not in seen:
            seen.add(r)
            todo.extend(adj[r] - seen)
    assert seen == ids


@pytest.mark.data
def test_reference_heater_ratings_equal_published_ratings(reference):
    ratings = _system_config()["room_power_ratings_kw"]
    assert set(ratings) == set(reference.room_ids)
    for r in reference.rooms:
        assert r.heater_w == pytest.approx(ratings[r.id] * 1000.0, abs=1e-6), r.id


@pytest.mark.data
def test_reference_setpoints_equal_published_day_night(reference):
    sp = _system_config()["thermal_settings"]["room_setpoints"]
    default = sp["default"]
    listed = [rid for rid in sp if rid != "default"]
    assert set(listed) <= set(reference.room_ids)
    for r in reference.rooms:
        want = sp.get(r.id, default)
        assert r.comfort_c == pytest.approx(want["day"]), r.id
        assert r.eco_c == pytest.approx(want["night"]), r.id
    # Rooms not listed exist and take the default (the fallback is actually exercised).
    assert len(set(reference.room_ids) - set(listed)) > 0


@pytest.mark.data
def test_reference_battery_equals_published_battery(reference):
    pub = _system_config()["battery"]
    b = reference.battery
    assert b is not None
    assert b.capacity_kwh == pytest.approx(pub["capacity_kwh"]) == pytest.approx(10.0)
    assert b.max_charge_w == pytest.approx(pub["max_power_kw"] * 1000.0) == pytest.approx(5000.0)
    assert b.max_discharge_w == pytest.approx(pub["max_power_kw"] * 1000.0)
    assert (b.soc_min, b.soc_max) == (pytest.approx(pub["min_soc"]), pytest.approx(pub["max_soc"]))
    assert (b.soc_min, b.soc_max) == (pytest.approx(0.1), pytest.approx(0.9))
    # The model's bounds and parameters carry the same battery.
    m = build_model(reference)
    assert m.param("bat_capacity_wh") == pytest.approx(10_000.0)
    assert m.u_max[m.sym.u.index("P_ch")] == pytest.approx(5000.0)
    assert m.u_max[m.sym.u.index("P_dis")] == pytest.approx(5000.0)


@pytest.mark.data
def test_reference_windows_walls_and_types_match_room_features(reference):
    feats = _room_features()
    assert set(feats) == set(reference.room_ids)
    for r in reference.rooms:
        f = feats[r.id]
        assert bool(r.windows) == f["has_windows"], r.id
        assert r.external_walls == f["has_external_walls"], r.id
        assert r.room_type == f["room_type"], r.id


def test_reference_window_rooms_get_sun_and_interior_rooms_lose_less(reference):
    """Priors follow the room features: no window → no solar aperture; interior rooms lose less per m²."""
    vals = parameter_values(reference)
    for r in reference.rooms:
        a_sol = vals[f"A_sol__{r.id}"]
        assert (a_sol > 0) == bool(r.windows), r.id
    # On the same storey, an interior room loses less per m² than a room with external walls and windows.
    for storey in (0, 1):
        rooms = [r for r in reference.rooms if r.storey == storey]
        interior = [vals[f"H_out__{r.id}"] / r.floor_area_m2 for r in rooms if not r.external_walls]
        facade = [vals[f"H_out__{r.id}"] / r.floor_area_m2 for r in rooms if r.external_walls and r.windows]
        assert interior and facade
        assert max(interior) < min(facade)


def test_reference_ground_conductance_only_downstairs(reference):
    vals = parameter_values(reference)
    for r in reference.rooms:
        h = vals[f"H_ground__{r.id}"]
        if r.storey == 1:
            assert h == 0.0, r.id
        else:
            assert h > 0.0, r.id


# ---------------------------------------------------------------- priors

SITE = {"latitude": 50.0, "longitude": 14.4, "timezone": "Europe/Prague"}


def _house(rooms: list[dict], **extra):
    return house_from({"name": "t", "site": SITE, "rooms": rooms}, **extra)


def test_given_params_override_priors_and_the_rest_stay_priors():
    given = {"C_air": 1.23e6, "H_out": 7.5, "eta_heat": 0.9, "H_ground": 0.0}
    h = _house([{"id": "a", "floor_area_m2": 20.0, "heater_w": 1000, "params": given}])
    h0 = _house([{"id": "a", "floor_area_m2": 20.0, "heater_w": 1000}])
    vals, prior = parameter_values(h), parameter_values(h0)
    for k, v in given.items():
        assert vals[f"{k}__a"] == v
        assert prior[f"{k}__a"] != v  # the override actually changed something
    for k in ("C_mass", "H_am", "A_sol", "f_sol_mass", "f_heat_mass"):
        assert vals[f"{k}__a"] == prior[f"{k}__a"]
    # and the built model carries the given values
    m = build_model(h)
    assert m.param("C_air__a") == 1.23e6 and m.param("H_out__a") == 7.5


def test_coupling_given_on_one_side_overrides_prior_from_either_side():
    rooms = [{"id": "a", "floor_area_m2": 20.0, "heater_w": 1000, "neighbours": ["b"]},
             {"id": "b", "floor_area_m2": 12.0, "heater_w": 800}]
    prior = parameter_values(_house(rooms))["H__a__b"]
    assert prior > 0
    from_a = [dict(rooms[0], params={"H_neighbour": {"b": 55.0}}), rooms[1]]
    from_b = [rooms[0], dict(rooms[1], params={"H_neighbour": {"a": 55.0}})]
    assert parameter_values(_house(from_a))["H__a__b"] == 55.0
    assert parameter_values(_house(from_b))["H__a__b"] == 55.0


@pytest.mark.parametrize("area", [5.0, 17.5, 60.0])
def test_capacity_and_floor_priors_scale_linearly_with_area(area):
    def vals(a):
        return parameter_values(_house([{"id": "r", "floor_area_m2": a, "heater_w": 1000,
                                         "windows": [{"azimuth_deg": 180, "area_m2": 2.0}]}]))

    base, scaled = vals(10.0), vals(area)
    k = area / 10.0
    for name in ("C_air", "C_mass", "H_am", "H_out", "H_ground"):
        assert base[f"{name}__r"] > 0
        assert scaled[f"{name}__r"] == pytest.approx(k * base[f"{name}__r"], rel=1e-12), name
    # the solar aperture comes from the windows, not the floor area
    assert scaled["A_sol__r"] == pytest.approx(base["A_sol__r"])
    # and capacities per m² are the documented priors (EN ISO 13790 order of magnitude)
    assert 10e3 <= scaled["C_air__r"] / area <= 100e3
    assert 50e3 <= scaled["C_mass__r"] / area <= 500e3


def test_ground_conductance_zero_upstairs_unless_told():
    rooms = [
        {"id": "down", "floor_area_m2": 20.0, "heater_w": 1000, "storey": 0, "neighbours": ["up"]},
        {"id": "up", "floor_area_m2": 20.0, "heater_w": 1000, "storey": 1},
        {"id": "up_on_slope", "floor_area_m2": 20.0, "heater_w": 1000, "storey": 1, "ground_contact": True},
        {"id": "down_over_cellar", "floor_area_m2": 20.0, "heater_w": 1000, "storey": 0, "ground_contact": False},
    ]
    vals = parameter_values(_house(rooms))
    assert vals["H_ground__down"] > 0
    assert vals["H_ground__up"] == 0.0
    assert vals["H_ground__up_on_slope"] == pytest.approx(vals["H_ground__down"])
    assert vals["H_ground__down_over_cellar"] == 0.0
    # The top storey loses through the roof instead: more to outdoors than the same room downstairs.
    assert vals["H_out__up"] > vals["H_out__down"]


def test_ceiling_coupling_differs_from_partition_coupling():
    same = _house([{"id": "a", "floor_area_m2": 16.0, "heater_w": 1, "neighbours": ["b"]},
                   {"id": "b", "floor_area_m2": 16.0, "heater_w": 1}])
    stacked = _house([{"id": "a", "floor_area_m2": 16.0, "heater_w": 1, "neighbours": ["b"]},
                      {"id": "b", "floor_area_m2": 16.0, "heater_w": 1, "storey": 1}])
    h_same = parameter_values(same)["H__a__b"]
    h_stacked = parameter_values(stacked)["H__a__b"]
    assert h_same > 0 and h_stacked > 0 and h_same != pytest.approx(h_stacked)
    # a coupling does not depend on which room lists it
    swapped = _house([{"id": "b", "floor_area_m2": 16.0, "heater_w": 1, "neighbours": ["a"]},
                      {"id": "a", "floor_area_m2": 16.0, "heater_w": 1}])
    assert parameter_values(swapped)["H__a__b"] == pytest.approx(h_same)


def _write(tmp_path: Path, text: str, name: str = "house.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


SITE_TOML = """
    name = "t"
    [site]
    latitude = 50.0
    longitude = 14.4
    timezone = "Europe/Prague"
"""


def test_coupling_given_from_both_sides_must_agree(tmp_path):
    body = SITE_TOML + """
    [[rooms]]
    id = "a"
    floor_area_m2 = 20.0
    heater_w = 1000
    neighbours = ["b"]
    params = {{ H_neighbour = {{ b = {ab} }} }}
    [[rooms]]
    id = "b"
    floor_area_m2 = 12.0
    heater_w = 800
    params = {{ H_neighbour = {{ a = {ba} }} }}
    """
    bad = _write(tmp_path, body.format(ab=30.0, ba=45.0), "bad.toml")
    with pytest.raises(InputError) as exc:
        load_house(bad)
    msg = str(exc.value)
    assert "bad.toml" in msg and "H_neighbour" in msg
    assert "30" in msg and "45" in msg
    # the same value from both sides is fine
    good = load_house(_write(tmp_path, body.format(ab=30.0, ba=30.0), "good.toml"))
    assert parameter_values(good)["H__a__b"] == 30.0


def test_unknown_neighbour_is_an_input_error_naming_the_key(tmp_path):
    path = _write(tmp_path, SITE_TOML + """
    [[rooms]]
    id = "a"
    floor_area_m2 = 20.0
    heater_w = 1000
    neighbours = ["b", "garage"]
    [[rooms]]
    id = "b"
    floor_area_m2 = 12.0
    heater_w = 800
    """)
    with pytest.raises(InputError) as exc:
        load_house(path)
    keys = [p.key for p in exc.value.problems]
    assert "rooms[0].neighbours[1]" in keys
    assert "garage" in str(exc.value) and str(path) in str(exc.value)


# ---------------------------------------------------------------- the smallest valid house


def test_house_of_site_and_rooms_only_is_valid_and_builds(tmp_path):
    path = _write(tmp_path, SITE_TOML + """
    [[rooms]]
    id = "living"
    floor_area_m2 = 30.0
    heater_w = 2500
    neighbours = ["hall"]
    [[rooms]]
    id = "hall"
    floor_area_m2 = 8.0
    heater_w = 600
    """)
    h = load_house(path)
    assert h.pv == [] and h.battery is None and h.inverter is None
    assert not h.has_inverter
    assert h.grid.import_limit_w is None and h.grid.export_limit_w is None
    m = build_model(h)
    assert "soc" not in m.sym.x.names
    assert m.sym.x.names == ("T_air__living", "T_air__hall", "T_mass__living", "T_mass__hall")
    assert m.sym.u.names == ("P_heat__living", "P_heat__hall")
    assert not m.has_battery and m.i_soc is None
    assert "inv_standby_w" not in m.sym.p.names
    np.testing.assert_array_equal(m.heater_w, [2500.0, 600.0])
    # With no inverter the balance has no loss term: P_grid = P_load + Σ P_heat − P_pv.
    x = np.full(len(m.sym.x), 20.0)
    u = np.array([1000.0, 300.0])
    d = np.zeros(len(m.sym.d))
    d[m.sym.d.index("P_load")] = 450.0
    y = dict(zip(m.sym.output_names, np.asarray(m.sym.g(x, u, d, m.p)).ravel()))
    assert y["P_loss"] == 0.0 and y["P_bat"] == 0.0
    assert y["P_grid"] == pytest.approx(450.0 + 1300.0)
    # Underfloor heating (the default) enters the slab only: dT_mass/dt rises by P/C_mass, the air not at all.
    dx_on = np.asarray(m.sym.f(x, u, d, m.p)).ravel()
    dx_off = np.asarray(m.sym.f(x, np.zeros(2), d, m.p)).ravel()
    c_mass = np.array([m.param("C_mass__living"), m.param("C_mass__hall")])
    np.testing.assert_allclose(dx_on[m.mass] - dx_off[m.mass], u / c_mass, rtol=1e-12)
    np.testing.assert_allclose(dx_on[m.air] - dx_off[m.air], 0.0, atol=1e-15)

"""Physical priors for parameters a house file does not give, from floor area and room type.

Every number here is a documented engineering default for a Central European masonry house of the
2000s–2010s with electric underfloor heating; calibration replaces them with fitted values and uses
them as the centre of its regularisation. References: EN ISO 13790 (capacities per floor area),
EN 1264 (floor surface heat transfer ≈ 10.8 W m⁻² K⁻¹), EN ISO 13370 (ground), ČSN 73 0540-2
(recommended U-values: walls 0.25, roofs 0.16, windows 1.2 W m⁻² K⁻¹).
"""

from __future__ import annotations

import math

from pems.twin.house import House, Room

ROOM_HEIGHT_M = 2.6

# Capacities per floor area [J K⁻¹ m⁻²].
C_AIR_PER_M2 = 30e3  # air (3 kJ/m²K) + furniture and light linings, the fast node
C_MASS_PER_M2 = 200e3  # 6–7 cm screed (≈140 kJ/m²K) + a share of masonry partitions

# Conductances per floor area [W K⁻¹ m⁻²].
H_FLOOR_SURFACE = 10.8  # EN 1264 floor-heating surface coefficient (convective + radiative)
H_VENTILATION = 0.34 * 0.4 * ROOM_HEIGHT_M  # 0.4 air changes per hour, ρc = 0.34 Wh m⁻³ K⁻¹
H_EXTERNAL_WALLS = 0.50  # ≈1.2 m² of external wall per m² floor at U ≈ 0.3 plus thermal bridges
H_WINDOWS = 0.35  # ≈15 % glazing at U ≈ 1.2 plus frames and bridges
H_ROOF = 0.25  # top storey: roof/ceiling at U ≈ 0.2 plus bridges
H_GROUND = 0.30  # slab on ground with insulation under the screed (effective U, EN ISO 13370)

# Room-to-room couplings [W K⁻¹]
U_PARTITION = 1.8  # plastered masonry partition [W m⁻² K⁻¹]
U_CEILING = 1.0  # ceiling/floor between storeys with screed and impact insulation [W m⁻² K⁻¹]

# Solar: window area 15 % of floor, g 0.5, frame factor 0.7, shading/curtains 0.8.
WINDOW_TO_FLOOR = 0.15
FRAME_FACTOR = 0.7
SHADING_FACTOR = 0.8
F_SOL_MASS = 0.5  # half of transmitted sun lands on the floor slab

# Interior rooms (no external walls) still exchange some air with the rest of the house.
INTERIOR_VENTILATION_SHARE = 0.5

# Internal-gain weights per room type (relative to floor area): where people and appliances are.
GAIN_WEIGHT = {
    "living_room": 1.6, "kitchen": 2.0, "bedroom": 1.0, "guest_room": 0.4, "office": 1.2,
    "bathroom": 1.0, "toilet": 0.5, "hallway": 0.4, "entrance": 0.3, "closet": 0.2,
    "pantry": 0.3, "technical": 1.0, "room": 1.0,
}


def heater_split(house: House) -> float:
    """Share of heater output that enters the mass node (underfloor: all of it)."""
    return {"electric_underfloor": 1.0, "heat_pump": 1.0, "electric_convector": 0.1}[house.heating.kind]


def room_priors(room: Room, house: House) -> dict[str, float]:
    """Prior values of one room's parameters (keys as in :class:`pems.twin.house.RoomParams`)."""
    a = room.floor_area_m2
    top = room.storey == max(r.storey for r in house.rooms)
    ground = room.ground_contact if room.ground_contact is not None else room.storey == house.lowest_storey()
    h_out = H_VENTILATION * (1.0 if room.external_walls else INTERIOR_VENTILATION_SHARE)
    if room.external_walls:
        h_out += H_EXTERNAL_WALLS
    if room.windows:
        h_out += H_WINDOWS
    if top:  # the top storey loses heat through the roof, interior rooms included
        h_out += H_ROOF
    if room.windows:
        a_sol = sum(w.area_m2 * w.g_value for w in room.windows) * FRAME_FACTOR * SHADING_FACTOR
    else:
        a_sol = 0.0
    return {
        "C_air": C_AIR_PER_M2 * a,
        "C_mass": C_MASS_PER_M2 * a,
        "H_am": H_FLOOR_SURFACE * a,
        "H_out": h_out * a,
        "H_ground": H_GROUND * a if ground else 0.0,
        "A_sol": a_sol,
        "f_sol_mass": F_SOL_MASS,
        "eta_heat": 1.0,
        "f_heat_mass": heater_split(house),
        # no gains beyond the occupancy and electricity priors until calibration finds them
        "g0": 0.0, "g1c": 0.0, "g1s": 0.0, "g2c": 0.0, "g2s": 0.0,
    }


def coupling_prior(a: Room, b: Room) -> float:
    """Air-to-air conductance between two neighbouring rooms [W K⁻¹].

    Same storey: a partition of length √(smaller area) and room height. Different storeys: a
    ceiling over half of the smaller floor area.
    """
    small = min(a.floor_area_m2, b.floor_area_m2)
    if a.storey == b.storey:
        return U_PARTITION * math.sqrt(small) * ROOM_HEIGHT_M
    return U_CEILING * 0.5 * small


def gain_weights(house: House) -> dict[str, float]:
    """Share of the house's internal gains that each room receives (sums to 1)."""
    w = {r.id: GAIN_WEIGHT[r.room_type] * r.floor_area_m2 for r in house.rooms}
    total = sum(w.values())
    return {k: v / total for k, v in w.items()}

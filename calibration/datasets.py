"""Public measured buildings as histories and house files, for validating calibration on data
nobody on this project made (``make validate``; the data live in ``../shared/data``).

- ``bacher-madsen``: the single-zone PRBS test building of Bacher & Madsen (2011), 5-minute data,
  electric heaters, one room.
- ``twinhouses-exp2``: IEA EBC Annex 58 Twin House N2, experiment 2 (Holzkirchen, 2014-04-09 ..
  05-19, 10-minute data): six electrically heated rooms and the corridor; the cellar's measured
  temperature is the ground boundary; the attic is an unheated zone modelled as a room.
- ``twinhouses-exp1-n2`` / ``twinhouses-exp1-o5``: experiment 1 (2014-08-21 .. 10-01), both houses.

Room layouts (areas, windows, neighbours) follow the Annex 58 descriptions approximately; the
calibration fits the physics, the layout only sets priors and which rooms touch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pems.twin.house import House

HOLZKIRCHEN = {"latitude": 47.874, "longitude": 11.728, "altitude_m": 680, "timezone": "Europe/Berlin",
               "country": "DE", "ground_temperature_c": 15.0}


@dataclass(frozen=True)
class Dataset:
    name: str
    history: pd.DataFrame  # canonical history table (UTC index)
    house: House
    step_minutes: int
    description: str


def shared_data() -> Path:
    return Path(os.environ.get("PEMS_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"


def bacher_madsen(root: Path | None = None) -> Dataset:
    root = root or shared_data()
    df = pd.read_csv(root / "bacher-madsen-prbs" / "inputPRBS1.csv")
    t = pd.to_datetime(df["TimeDate"]).dt.tz_localize("UTC")  # local Danish winter time in the source
    hist = pd.DataFrame({"T_out": df["Ta"].to_numpy(), "ghi": (df["Ps"] * 1000).clip(lower=0).to_numpy(),
                         "T_room__room": df["yTi"].to_numpy(), "P_heat__room": (df["Ph"] * 1000).to_numpy()},
                        index=pd.DatetimeIndex(t - pd.Timedelta(hours=1), name="time"))
    hist.index = hist.index.round("5min")
    house = House.model_validate({
        "name": "bacher-madsen", "description": "Bacher & Madsen (2011) PRBS test building, Lyngby (DK)",
        "site": {"latitude": 55.79, "longitude": 12.52, "timezone": "Europe/Copenhagen", "country": "DK",
                 "ground_temperature_c": 5.0},
        "heating": {"kind": "electric_convector"},
        "occupancy": {"persons": 0},
        "rooms": [{"id": "room", "floor_area_m2": 120.0, "heater_w": float(hist["P_heat__room"].max()),
                   "room_type": "room"}]})
    return Dataset("bacher-madsen", hist, house, 5, "single zone, PRBS electric heating, Feb 2009, 5.9 days")


# Annex 58 Twin Houses: the ground floor's rooms, with the attic above them as an unheated zone.
_TWIN_ROOMS = [
    # id, area, windows (azimuth, m²), neighbours
    ("living", 32.0, [(180, 6.0), (270, 3.0)], ["kitchen", "corridor", "children", "attic"]),
    ("kitchen", 10.0, [(90, 1.5)], ["doorway", "corridor", "attic"]),
    ("doorway", 5.0, [(0, 1.0)], ["corridor", "attic"]),
    ("corridor", 7.0, [], ["bath", "bedroom", "children", "attic"]),
    ("bath", 7.0, [(0, 0.8)], ["bedroom", "attic"]),
    ("bedroom", 13.0, [(90, 2.0)], ["children", "attic"]),
    ("children", 12.0, [(180, 2.0)], ["attic"]),
    ("attic", 90.0, [], []),
]


def _twin_house(name: str, heaters: dict[str, float]) -> House:
    rooms = []
    for rid, area, windows, nb in _TWIN_ROOMS:
        rooms.append({"id": rid, "floor_area_m2": area, "heater_w": float(heaters.get(rid, 0.0)),
                      "storey": 1 if rid == "attic" else 0, "neighbours": nb,
                      "room_type": {"living": "living_room", "kitchen": "kitchen", "doorway": "entrance",
                                    "corridor": "hallway", "bath": "bathroom", "bedroom": "bedroom",
                                    "children": "bedroom", "attic": "room"}[rid],
                      "external_walls": rid != "corridor",
                      "windows": [{"azimuth_deg": a, "area_m2": m2} for a, m2 in windows]})
    return House.model_validate({"name": name, "site": HOLZKIRCHEN, "heating": {"kind": "electric_convector"},
                                 "occupancy": {"persons": 0}, "rooms": rooms})


def _annex58_times(df: pd.DataFrame) -> pd.DatetimeIndex:
    # stamps: local standard time (UTC+1) at the end of each 10-minute mean (see tools/make_extracts.py)
    t = pd.to_datetime(df.iloc[:, 0]) - pd.Timedelta(hours=1) - pd.Timedelta(minutes=10)
    return pd.DatetimeIndex(t.dt.tz_localize("UTC"), name="time")


def twinhouses_exp2(root: Path | None = None) -> Dataset:
    root = root or shared_data()
    df = pd.read_csv(root / "twinhouses-annex58" / "validationdataExp2_with_header.csv")
    h = pd.DataFrame(index=_annex58_times(df))
    h["T_out"] = df["Ambient_temperature"].to_numpy()
    h["ghi"] = df["Solar_radiation_global_horizontal"].clip(lower=0).to_numpy()
    h["dhi"] = df["Solar_radiation_diffuse_horizontal"].clip(lower=0).to_numpy()
    h["T_ground"] = df["cellar_AT"].to_numpy()
    temps = {"living": "living_h110cm_AT", "kitchen": "kitchen_AT", "doorway": "doorway_AT",
             "corridor": "corridor_AT", "bath": "bath_h110_AT", "bedroom": "parents_AT", "children": "child_h110_AT"}
    for r, c in temps.items():
        h[f"T_room__{r}"] = df[c].to_numpy()
    h["T_room__attic"] = df[["attic_west_h110_AT", "attic_east_h110_AT"]].mean(axis=1).to_numpy()
    power = {"living": "heat_elP_living_room", "kitchen": "heat_elP_kitchen", "doorway": "heat_elP_doorway",
             "bath": "heat_elP_bath_room", "bedroom": "heat_elP_parents_room", "children": "heat_elP_children_room"}
    for r, c in power.items():
        h[f"P_heat__{r}"] = df[c].clip(lower=0).to_numpy()
    for r in ("corridor", "attic"):
        h[f"P_heat__{r}"] = 0.0
    heaters = {r: float(np.nanmax(h[f"P_heat__{r}"])) for r in power}
    return Dataset("twinhouses-exp2", h, _twin_house("twinhouse-N2", heaters), 10,
                   "Annex 58 Twin House N2, experiment 2 (ROLBS heating, free float), Apr–May 2014")


def twinhouses_exp1(house: str = "N2", root: Path | None = None) -> Dataset:
    root = root or shared_data()
    fname = {"N2": "validationdataN2Exp1_with_header.csv", "O5": "validationdataO5Exp1_with_header.csv"}[house]
    df = pd.read_csv(root / "twinhouses-annex58" / fname)
    p = f"{house}_"
    h = pd.DataFrame(index=_annex58_times(df))
    h["T_out"] = df["Ambient_temperature"].to_numpy()
    h["ghi"] = df["Solar_radiation_global_horizontal"].clip(lower=0).to_numpy()
    h["dhi"] = df["Solar_radiation_diffuse_horizontal"].clip(lower=0).to_numpy()
    h["T_ground"] = df[p + "cellar_AT"].to_numpy()
    temps = {"living": p + "living_AT_h125cm", "kitchen": p + "kitchen_AT", "doorway": p + "doorway_AT",
             "corridor": p + "corridor_AT", "bath": p + "bath_AT", "bedroom": p + "bedroom_AT",
             "children": p + "child_AT"}
    for r, c in temps.items():
        h[f"T_room__{r}"] = df[c].to_numpy()
    h["T_room__attic"] = df[[p + "attic_west_AT", p + "attic_east_AT"]].mean(axis=1).to_numpy()
    power = {"living": p + "heat_elP_living_room", "kitchen": p + "heat_elP_kitchen", "doorway": p + "heat_elP_doorway",
             "bath": p + "heat_elP_bath_room", "bedroom": p + "heat_elP_bedroom",
             "children": p + "heat_elP_children_room"}
    for r, c in power.items():
        h[f"P_heat__{r}"] = df[c].clip(lower=0).to_numpy()
    for r in ("corridor", "attic"):
        h[f"P_heat__{r}"] = 0.0
    heaters = {r: float(np.nanmax(h[f"P_heat__{r}"])) for r in power}
    return Dataset(f"twinhouses-exp1-{house.lower()}", h, _twin_house(f"twinhouse-{house}", heaters), 10,
                   f"Annex 58 Twin House {house}, experiment 1, Aug–Oct 2014")


DATASETS = {"bacher-madsen": bacher_madsen, "twinhouses-exp2": twinhouses_exp2,
            "twinhouses-exp1-n2": lambda root=None: twinhouses_exp1("N2", root),
            "twinhouses-exp1-o5": lambda root=None: twinhouses_exp1("O5", root)}

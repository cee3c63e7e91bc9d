"""The physics of a home: house description, the one symbolic model, inputs and the simulator.

``twin`` imports none of the other PEMS packages.
"""

from pems.twin.house import House, load_house
from pems.twin.model import HouseModel, SymbolicModel, build_model

__all__ = ["House", "HouseModel", "SymbolicModel", "build_model", "load_house"]

"""Controllers: the ``Controller`` protocol, the rule-based baseline and, later, MPC and forecasters."""

from pems.controllers.base import Controller
from pems.controllers.registry import available, make_controller

__all__ = ["Controller", "available", "make_controller"]

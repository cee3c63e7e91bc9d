"""Controllers: the ``Controller`` protocol, the rule-based baselines, the economic MPC (plain and with
learned residual correctors), the perfect-foresight oracle, peers, and the forecasters."""

from pems.controllers.base import Controller
from pems.controllers.registry import available, make_controller, needs_history

__all__ = ["Controller", "available", "make_controller", "needs_history"]

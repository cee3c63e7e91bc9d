"""Controllers by name, for the command line and the benchmark."""

from __future__ import annotations

from collections.abc import Callable

from pems.controllers.base import Controller
from pems.controllers.rule_based import RuleBasedController
from pems.twin.model import HouseModel

CONTROLLERS: dict[str, Callable[[HouseModel], Controller]] = {
    "rule-based": lambda model: RuleBasedController(model),
}


def available() -> tuple[str, ...]:
    return tuple(CONTROLLERS)


def make_controller(name: str, model: HouseModel) -> Controller:
    """Build the controller called ``name`` for ``model`` (``KeyError`` if unknown)."""
    return CONTROLLERS[name](model)

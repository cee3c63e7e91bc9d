"""Controllers by name, for the command line and the benchmark."""

from __future__ import annotations

from collections.abc import Callable

from pems.controllers.base import Controller
from pems.controllers.rule_based import RuleBasedController
from pems.twin.model import HouseModel


def weights(options: dict):
    """The OCP's weights from a scenario's or live config's ``[mpc]`` table."""
    from pems.controllers.ocp import Weights

    keys = Weights.__dataclass_fields__
    return Weights(**{k: v for k, v in options.items() if k in keys})


def mpc_config(options: dict):
    """The MPC's settings from a scenario's or live config's ``[mpc]`` table (weights included)."""
    from pems.controllers.mpc import MpcConfig  # do-mpc and HiGHS are imported only when needed

    keys = set(MpcConfig.__dataclass_fields__) - {"weights", "noise", "ipopt", "use_true_state", "scheme"}
    return MpcConfig(weights=weights(options), **{k: v for k, v in options.items() if k in keys})


def _mpc(model: HouseModel, step_s: float, options: dict) -> Controller:
    from pems.controllers.mpc import EconomicMPC

    return EconomicMPC(model, step_s, mpc_config(options))


def _mpc_corrected(model: HouseModel, step_s: float, options: dict) -> Controller:
    from pems.controllers.mpc_corrected import CorrectedMPC

    return CorrectedMPC(model, step_s, mpc_config(options))


def _oracle(model: HouseModel, step_s: float, options: dict) -> Controller:
    from pems.controllers.oracle import PerfectForesightOracle

    return PerfectForesightOracle(model, step_s, weights(options))


def _emhass(model: HouseModel, step_s: float, options: dict) -> Controller:
    from pems.controllers.emhass_peer import EmhassPeer

    return EmhassPeer(model, step_s, rooms=True, horizon_hours=float(options.get("horizon_hours", 24.0)))


def _emhass_battery(model: HouseModel, step_s: float, options: dict) -> Controller:
    from pems.controllers.emhass_peer import EmhassPeer

    return EmhassPeer(model, step_s, rooms=False)


CONTROLLERS: dict[str, Callable[[HouseModel, float, dict], Controller]] = {
    "rule-based": lambda model, step_s, options: RuleBasedController(model),
    "rule-based-preheat": lambda model, step_s, options: RuleBasedController.with_preheat(model),
    "rule-based-solar": lambda model, step_s, options: RuleBasedController.with_solar_cars(model),
    "mpc": _mpc,
    "mpc+correctors": _mpc_corrected,  # learns from the history of scenarios with a [truth] section
    "oracle": _oracle,
}


#: Peers that run in their own environment; available where it is installed (``make bench-peers``).
PEERS: dict[str, Callable[[HouseModel, float, dict], Controller]] = {"emhass": _emhass,
                                                                     "emhass-battery": _emhass_battery}


#: Controllers that learn from a history before the run (scenarios with a ``[truth]`` section).
LEARNING = frozenset({"mpc+correctors"})


#: Controllers that cannot run a home in real time, and why (``pems live`` refuses them).
NOT_LIVE: dict[str, str] = {
    "oracle": "it knows the whole future (perfect foresight): a benchmark's lower bound of cost, not a "
              "controller for a home whose weather and prices are not known in advance",
}


def needs_history(name: str) -> bool:
    """Whether the controller learns from a history before the run."""
    return name in LEARNING


def available(peers: bool = False, learning: bool = True, live: bool = False) -> tuple[str, ...]:
    """Our controllers' names.

    Parameters
    ----------
    peers
        Also the installed peer tools (they run in their own environment, never live).
    learning
        Also those that learn from a history before the run.
    live
        Only those that can run a home in real time (not :data:`NOT_LIVE`).
    """
    names = tuple(n for n in CONTROLLERS if (learning or n not in LEARNING) and not (live and n in NOT_LIVE))
    if peers and not live:
        from pems.controllers.emhass_peer import peers_python

        if peers_python() is not None:
            names += tuple(PEERS)
    return names


def make_controller(name: str, model: HouseModel, step_s: float = 900.0,
                    options: dict | None = None) -> Controller:
    """Build the controller called ``name`` for ``model`` (``KeyError`` if unknown).

    ``options`` are the scenario's ``[mpc]`` settings (horizon and objective weights).
    """
    factory = CONTROLLERS.get(name) or PEERS[name]
    return factory(model, step_s, dict(options or {}))

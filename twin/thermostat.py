"""The room thermostat: one rule, used by the simulated home, the emulated home and the live loop.

A Loxone intelligent room controller (and any hysteresis thermostat) switches a room's heating
relay on when the air falls below ``set-point − h`` and keeps it on up to ``set-point + h``
(``h``: the house's ``heating.thermostat_hysteresis_k``). The simulator applies it at every fine
step, the emulator at every minute, and the live loop at every inner tick when a controller asks
for set-points (the rule-based baselines): the same rule everywhere, so a baseline run live means
what it means in ``pems simulate``. A room whose temperature is unknown (NaN) gets no heat from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Thermostat:
    """Hysteresis thermostats of a house's rooms.

    Parameters
    ----------
    hysteresis_k
        Half-width of the switching band around the set-point [K].
    """

    hysteresis_k: float

    def bounds(self, setpoint_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(on below, off above) for the set-points [°C]."""
        sp = np.asarray(setpoint_c, dtype=float)
        return sp - self.hysteresis_k, sp + self.hysteresis_k

    @staticmethod
    def switch(T: np.ndarray, relay: np.ndarray, on_below: np.ndarray, off_above: np.ndarray,
               out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
        """The relays after one sample of the air temperatures ``T`` [°C].

        ``out`` and ``scratch`` (boolean arrays like ``relay``, not ``relay`` itself) let the
        simulator's fine-step loop switch without allocating.
        """
        new = np.less(T, on_below, out=out)
        upper = np.less_equal(T, off_above, out=scratch)
        upper &= relay
        new |= upper
        return new

    def relays(self, T: np.ndarray, relay: np.ndarray, setpoint_c: np.ndarray) -> np.ndarray:
        """The relays after one sample, for set-points ``setpoint_c`` [°C] (boolean array)."""
        on_below, off_above = self.bounds(setpoint_c)
        return self.switch(np.asarray(T, dtype=float), np.asarray(relay, dtype=bool), on_below, off_above)

"""From a controller's action to device commands: the battery power as a Growatt mode.

The heating's translation (duty cycles on the inner tick, the rounding carried to the next step) is
the live loop's own (:meth:`pems.live.loop.LiveLoop._command`); this module holds the battery's,
which is pure and tested on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from pems.live.devices import BatteryCommand
from pems.live.safety import BatteryLimits

if TYPE_CHECKING:
    from pems.live.loop import LoopSettings


def battery_command(bat_w: float | None, pv_w: float, house_w: float, lim: BatteryLimits,
                    settings: LoopSettings, until: pd.Timestamp) -> BatteryCommand:
    """The inverter mode that realises ``bat_w`` [W, charge +] (see the module notes).

    Parameters
    ----------
    bat_w
        Bounded battery power [W]; None: leave it to the inverter.
    pv_w, house_w
        Expected PV and house consumption (load + heating) over the step [W].
    lim
        Battery limits (ratings and SOC window).
    settings
        ``hold_w`` and ``cover_tol_w``.
    until
        End of the command's slot (UTC).
    """
    if bat_w is None:
        return BatteryCommand()
    if abs(bat_w) < settings.hold_w:
        return BatteryCommand("battery_first", power_pct=0.0, soc_limit=lim.soc_max, ac_charge=False, until=until)
    if bat_w > 0:
        pct = min(100.0, 100.0 * bat_w / lim.max_charge_w)
        return BatteryCommand("battery_first", power_pct=pct, soc_limit=lim.soc_max,
                              ac_charge=bool(bat_w > 0.9 * max(pv_w, 0.0)), until=until)
    deficit = house_w - max(pv_w, 0.0)
    if deficit > 0 and abs(-bat_w - deficit) <= settings.cover_tol_w:
        return BatteryCommand()  # load first: cover the house's load, whatever it turns out to be
    pct = min(100.0, 100.0 * -bat_w / lim.max_discharge_w)
    return BatteryCommand("grid_first", power_pct=pct, soc_limit=lim.soc_min, until=until)

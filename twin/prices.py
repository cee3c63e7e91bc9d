"""Electricity prices for import and export [currency kWh⁻¹], held constant within each period.

Built-in tariffs (EUR; all figures are documented defaults a scenario's ``[tariff]`` overrides):

``flat``
    0.30 import, 0.05 export.
``two-rate``
    0.32 from 06:00 to 22:00 local time, 0.20 at night; 0.05 export.
``cz-spot-2024``
    The real CZ day-ahead prices of 2024 (ENTSO-E) as a Czech household spot contract:
    import = (spot + 0.080) × 1.21, where 0.080 EUR/kWh approximates 2024's distribution, system
    services, renewables levy, tax and supplier fee and 1.21 is VAT; export = spot − 0.012
    (the supplier's fee), negative when spot is.

A CSV file has ``time``, ``price_import`` and ``price_export``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict

from pems.errors import InputError
from pems.twin.house import Site
from pems.twin.tables import read_time_csv, resolve_csv

#: Built-in price models and what they are (``pems list``); ``[tariff]`` sets their figures.
BUILTIN_PRICES = {
    "flat": "one import and one export price",
    "two-rate": "a day and a night import price, one export price",
    "cz-spot-2024": "the real CZ day-ahead prices of 2024 (ENTSO-E) as a Czech household spot contract",
}


class Tariff(BaseModel):
    """Tariff figures of the built-in price models [currency kWh⁻¹]."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    currency: str = "EUR"
    """Currency of every price, shown in reports and KPIs."""
    flat_import: float = 0.30
    """``flat``: import price [currency kWh⁻¹]."""
    export: float = 0.05
    """``flat`` and ``two-rate``: feed-in price [currency kWh⁻¹]."""
    day_import: float = 0.32
    """``two-rate``: import price by day [currency kWh⁻¹]."""
    night_import: float = 0.20
    """``two-rate``: import price by night [currency kWh⁻¹]."""
    day_start_hour: int = 6
    """``two-rate``: local hour the day rate starts [h]."""
    night_start_hour: int = 22
    """``two-rate``: local hour the night rate starts [h]."""
    spot_import_adder: float = 0.080
    """``cz-spot-2024``: fees added to the spot price before VAT [currency kWh⁻¹]."""
    vat: float = 0.21
    """``cz-spot-2024``: VAT on the import price [-]."""
    spot_export_fee: float = 0.012
    """``cz-spot-2024``: the supplier's fee taken off the spot price for export [currency kWh⁻¹]."""
    spot_export_fixed: float | None = None
    """A spot contract's fixed feed-in price instead of spot − ``spot_export_fee`` [currency kWh⁻¹] (not set: spot − fee)."""
    spot_rate: float = 1.0
    """Units of ``currency`` per unit of the spot price's own currency, e.g. 25.0 for CZK per EUR (ENTSO-E and
    ``cz-spot-2024`` are in EUR) [-]."""


def contract_prices(spot: pd.Series, tariff: Tariff) -> pd.DataFrame:
    """What a spot contract makes of a day-ahead price ``spot`` [its own currency kWh⁻¹]: the import
    price ``(spot·rate + spot_import_adder)·(1 + vat)`` and the export price ``spot·rate −
    spot_export_fee`` (or the fixed ``spot_export_fixed``) [``currency`` kWh⁻¹]."""
    s = spot.astype(float) * tariff.spot_rate
    export = s - tariff.spot_export_fee if tariff.spot_export_fixed is None else pd.Series(tariff.spot_export_fixed,
                                                                                            index=s.index)
    return pd.DataFrame({"price_import": (s + tariff.spot_import_adder) * (1 + tariff.vat), "price_export": export},
                        index=s.index)


def spot_prices_2024() -> pd.Series:
    """CZ day-ahead price 2024, hourly, [EUR kWh⁻¹], index = start of hour (UTC)."""
    path = Path(str(resources.files("pems.twin") / "data" / "cz-dayahead-2024.csv.gz"))
    df = pd.read_csv(path, index_col="time", parse_dates=True)
    return df["price_eur_mwh"] / 1000.0


def prices_at(spec: str, index: pd.DatetimeIndex, site: Site, tariff: Tariff,
              base_dir: Path | None = None, required_until: pd.Timestamp | None = None) -> pd.DataFrame:
    """``price_import`` and ``price_export`` in force at the start of each step of ``index``.

    Steps after ``required_until`` (a forecast horizon beyond the run) that the price table does
    not cover repeat the prices of 24 hours earlier.
    """
    if spec == "flat":
        return pd.DataFrame({"price_import": tariff.flat_import, "price_export": tariff.export}, index=index)
    if spec == "two-rate":
        h = index.tz_convert(site.timezone).hour
        day = (h >= tariff.day_start_hour) & (h < tariff.night_start_hour)
        imp = pd.Series(tariff.night_import, index=index).where(~day, tariff.day_import)
        return pd.DataFrame({"price_import": imp, "price_export": tariff.export}, index=index)
    if spec == "cz-spot-2024":
        spot = _held(spot_prices_2024().to_frame("spot"), index, "cz-spot-2024 (the CZ day-ahead extract of 2024)",
                     required_until)["spot"]
        return contract_prices(spot, tariff)
    path = resolve_csv(spec, base_dir, "prices", BUILTIN_PRICES)
    df = read_time_csv(path, ("price_import", "price_export"))
    return _held(df.ffill(), index, str(path), required_until)


def _held(df: pd.DataFrame, index: pd.DatetimeIndex, what: str,
          required_until: pd.Timestamp | None = None) -> pd.DataFrame:
    """Value in force at each step start; the table must cover the steps up to ``required_until``."""
    period = df.index.to_series().diff().median() if len(df) > 1 else pd.Timedelta(hours=1)
    covered_until = df.index[-1] + period
    need_until = index[-1] if required_until is None else min(required_until, index[-1])
    if index[0] < df.index[0] or need_until >= covered_until:
        raise InputError(what, "prices", f"cover {df.index[0]:%Y-%m-%d %H:%M} .. {covered_until:%Y-%m-%d %H:%M} UTC; "
                                         f"the scenario needs {index[0]:%Y-%m-%d %H:%M} .. {need_until:%Y-%m-%d %H:%M}")
    out = df.reindex(df.index.union(index)).ffill().reindex(index)
    beyond = index >= covered_until
    if beyond.any():  # horizon past the table: repeat the day before
        day = pd.Timedelta(days=1)
        for t in index[beyond]:
            out.loc[t] = out.loc[t - day] if (t - day) in out.index else out.loc[index[~beyond][-1]]
    return out

"""Rebuild the small data extracts the project carries in ``twin/data/`` from ``../shared/data``.

usage: python tools/make_extracts.py [SHARED_DATA_DIR]

- ``cz-dayahead-2024.csv.gz``: CZ day-ahead prices for calendar year 2024 (Europe/Prague), from the
  ENTSO-E transparency platform via ``dayahead-prices/CZ.csv``; hourly EUR/MWh.
- ``holzkirchen-2014-spring.csv.gz`` / ``holzkirchen-2014-autumn.csv.gz``: the measured weather of
  the IEA EBC Annex 58 Twin Houses experiment (Fraunhofer IBP, Holzkirchen, DE), from
  ``twinhouses-annex58/validationdata{Exp2,N2Exp1}_with_header.csv``; 10-minute means.
  The source stamps are local standard time (UTC+1) at the end of each 10-minute interval (checked:
  the irradiance-weighted time of day falls on solar noon only with that reading); the extract
  stamps the middle of each interval in UTC.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "twin" / "data"


def prices(shared: Path) -> None:
    df = pd.read_csv(shared / "dayahead-prices" / "CZ.csv", index_col=0)
    idx = pd.to_datetime(df.index, utc=True)
    s = pd.Series(df["price"].to_numpy(), index=idx, name="price_eur_mwh")
    local = s.index.tz_convert("Europe/Prague")
    s = s[(local >= pd.Timestamp("2024-01-01", tz="Europe/Prague"))
          & (local < pd.Timestamp("2025-01-01", tz="Europe/Prague"))]
    assert len(s) == 366 * 24, len(s)
    out = s.rename_axis("time").reset_index()
    out["time"] = out["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    out.to_csv(OUT / "cz-dayahead-2024.csv.gz", index=False, float_format="%.2f")


WEATHER_COLUMNS = {
    "Ambient_temperature": "T_out",
    "Solar_radiation_global_horizontal": "ghi",
    "Solar_radiation_diffuse_horizontal": "dhi",
    "wind_speed": "wind_speed",
    "Wind_speed": "wind_speed",
    "Solar_radiation_north_vertical": "gvi_north",
    "Solar_radiation_east_vertical": "gvi_east",
    "Solar_radiation_south_vertical": "gvi_south",
    "Solar_radiation_west_vertical": "gvi_west",
    "Solar_radiation_global_vertical_north": "gvi_north",
    "Solar_radiation_global_vertical_east": "gvi_east",
    "Solar_radiation_global_vertical_south": "gvi_south",
    "Solar_radiation_global_vertical_west": "gvi_west",
}


def weather(shared: Path, source: str, name: str) -> None:
    df = pd.read_csv(shared / "twinhouses-annex58" / source)
    local_end = pd.to_datetime(df.iloc[:, 0])
    mid_utc = (local_end - pd.Timedelta(hours=1) - pd.Timedelta(minutes=5)).dt.tz_localize("UTC")
    cols = {c: WEATHER_COLUMNS[c] for c in df.columns if c in WEATHER_COLUMNS}
    out = df[list(cols)].rename(columns=cols)
    out.insert(0, "time", mid_utc.dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    for c in out.columns[1:]:
        if c != "T_out":
            out[c] = out[c].clip(lower=0)
    out.to_csv(OUT / f"{name}.csv.gz", index=False, float_format="%.2f")


def main() -> None:
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data"
    prices(shared)
    weather(shared, "validationdataExp2_with_header.csv", "holzkirchen-2014-spring")
    weather(shared, "validationdataN2Exp1_with_header.csv", "holzkirchen-2014-autumn")
    for f in sorted(OUT.glob("*.csv.gz")):
        print(f"{f.name}: {f.stat().st_size / 1024:.0f} kB")


if __name__ == "__main__":
    main()

"""Day-ahead prices fetched by the loop, against servers on 127.0.0.1 answering in the services' formats.

ENTSO-E's format is that of its Transparency Platform's RESTful API guide (document type A44: a
``Publication_MarketDocument`` of ``TimeSeries`` / ``Period`` / ``Point`` with curve type A03, and
an ``Acknowledgement_MarketDocument`` with a ``Reason`` when there is no data; HTTP 401 for a bad
token). OTE's is the JSON its day-ahead market page loads (``@@chart-data``: ``data.dataLine[]``
with ``title`` "Cena (EUR/MWh)" and ``point[]`` of ``x``, ``y``), as the open-source clients of it
read it. The prices are made here: this machine cannot reach either service to record them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from recorded_server import Answer, RecordedServer  # noqa: E402

from pems.live.day_ahead import entsoe_token, fetch_entsoe, fetch_ote, parse_entsoe, parse_ote  # noqa: E402
from pems.live.fetched import FetchError  # noqa: E402
from pems.twin.prices import Tariff  # noqa: E402

NOW = pd.Timestamp("2024-01-10T09:20Z")
TARIFF = Tariff(currency="CZK", spot_rate=25.0, spot_import_adder=1.5, vat=0.21, spot_export_fee=0.3)
TOKEN = "0123abcd-secret-token"


def eur_mwh(t: pd.Timestamp) -> float:
    """A price for each hour: 80 EUR/MWh and a daily swing, with the hour's number in the cents."""
    return round(80 + 40 * np.sin(2 * np.pi * (t.hour - 6) / 24) + t.hour / 100, 2)


def publication(start: pd.Timestamp, end: pd.Timestamp, resolution: str = "PT60M", skip: tuple[int, ...] = ()) -> str:
    """An A44 document over [start, end) (UTC), one Period, curve A03 (the positions in ``skip``
    left out: their price repeats the one before)."""
    res = pd.Timedelta(resolution)
    n = int((end - start) / res)
    points = "".join(f"<Point><position>{k}</position><price.amount>{eur_mwh(start + (k - 1) * res):.2f}"
                     f"</price.amount></Point>" for k in range(1, n + 1) if k not in skip)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Publication_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3">
  <mRID>a1b2c3</mRID><revisionNumber>1</revisionNumber><type>A44</type>
  <sender_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450</sender_MarketParticipant.mRID>
  <createdDateTime>2024-01-10T09:20:00Z</createdDateTime>
  <period.timeInterval><start>{start:%Y-%m-%dT%H:%MZ}</start><end>{end:%Y-%m-%dT%H:%MZ}</end></period.timeInterval>
  <TimeSeries>
    <mRID>1</mRID><auction.type>A01</auction.type><businessType>A62</businessType>
    <in_Domain.mRID codingScheme="A01">10YCZ-CEPS-----N</in_Domain.mRID>
    <out_Domain.mRID codingScheme="A01">10YCZ-CEPS-----N</out_Domain.mRID>
    <currency_Unit.name>EUR</currency_Unit.name><price_Measure_Unit.name>MWH</price_Measure_Unit.name>
    <curveType>A03</curveType>
    <Period>
      <timeInterval><start>{start:%Y-%m-%dT%H:%MZ}</start><end>{end:%Y-%m-%dT%H:%MZ}</end></timeInterval>
      <resolution>{resolution}</resolution>{points}
    </Period>
  </TimeSeries>
</Publication_MarketDocument>"""


ACK = """<?xml version="1.0" encoding="UTF-8"?>
<Acknowledgement_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-1:acknowledgementdocument:7:0">
  <mRID>f0e1</mRID><createdDateTime>2024-01-10T09:20:00Z</createdDateTime>
  <Reason><code>999</code><text>No matching data found for Data item ENERGY_PRICES [12.1.D] (10YCZ-CEPS-----N).</text></Reason>
</Acknowledgement_MarketDocument>"""


def _entsoe(q: dict[str, str]) -> Answer:
    start = pd.Timestamp(q["periodStart"], tz="UTC")
    return Answer(200, publication(start, start + pd.Timedelta(days=2), skip=(5, 6)), "text/xml")


ENTSOE = {
    "good": _entsoe,
    "no-data": lambda q: Answer(200, ACK, "text/xml"),
    "unauthorized": lambda q: Answer(401, "<html><body>Unauthorized</body></html>", "text/html"),
    "truncated": lambda q: Answer(200, publication(NOW.floor("D"), NOW.ceil("D"))[:400], "text/xml"),
    "slow": lambda q: Answer(200, ACK, "text/xml", delay_s=2.0),
}


def test_entsoe_prices_through_the_contract(monkeypatch):
    monkeypatch.setenv("PEMS_ENTSOE_TOKEN", TOKEN)
    with RecordedServer(ENTSOE, ["good"]) as srv:
        p = fetch_entsoe(srv.url + "/api", "10YCZ-CEPS-----N", entsoe_token(), NOW, TARIFF, timeout_s=5)
    q = srv.requests[0][1]
    assert q["documentType"] == "A44" and q["in_Domain"] == q["out_Domain"] == "10YCZ-CEPS-----N"
    assert q["securityToken"] == TOKEN and q["periodStart"] == "202401090000" and q["periodEnd"] == "202401130000"
    t = pd.Timestamp("2024-01-10T13:00Z")
    spot = eur_mwh(t) / 1000 * 25.0  # CZK/kWh
    assert p.loc[t, "price_import"] == pytest.approx((spot + 1.5) * 1.21)
    assert p.loc[t, "price_export"] == pytest.approx(spot - 0.3)
    # A03: positions 5 and 6 left out repeat position 4's price
    p4 = p.loc[pd.Timestamp("2024-01-09T03:00Z"), "price_import"]
    assert p.loc[pd.Timestamp("2024-01-09T04:00Z"), "price_import"] == p4 == p.loc[pd.Timestamp("2024-01-09T05:00Z"),
                                                                                    "price_import"]
    assert len(p) == 48 and p.index.tz is not None


def test_a_quarter_hour_document_and_an_acknowledgement():
    start = pd.Timestamp("2025-10-02T22:00Z")
    s = parse_entsoe(publication(start, start + pd.Timedelta(days=1), "PT15M"))
    assert len(s) == 96 and (s.index[1] - s.index[0]) == pd.Timedelta(minutes=15)
    with pytest.raises(FetchError, match="No matching data found.*code 999"):
        parse_entsoe(ACK)


@pytest.mark.parametrize(("mode", "said"), [
    ("no-data", "ENTSO-E says: No matching data"),
    ("unauthorized", "HTTP 401: the ENTSO-E token was refused"),
    ("truncated", "not XML"),
    ("slow", "no answer"),
])
def test_every_entsoe_failure_is_one_line_without_the_token(mode, said):
    with RecordedServer(ENTSOE, [mode]) as srv:
        with pytest.raises(FetchError, match=said) as exc:
            fetch_entsoe(srv.url + "/api", "10YCZ-CEPS-----N", TOKEN, NOW, TARIFF, timeout_s=0.5)
    assert TOKEN not in str(exc.value)


def test_the_token_comes_from_the_environment_or_its_file_never_the_config(tmp_path, monkeypatch):
    monkeypatch.delenv("PEMS_ENTSOE_TOKEN", raising=False)
    with pytest.raises(FetchError, match="no ENTSO-E token"):
        entsoe_token(None)
    f = tmp_path / "entsoe.env"
    f.write_text(f"PEMS_ENTSOE_TOKEN={TOKEN}\n")
    assert entsoe_token(f) == TOKEN
    monkeypatch.setenv("PEMS_ENTSOE_TOKEN", "from-env")
    assert entsoe_token(f) == "from-env"
    from pems.live.config import EntsoeSpec

    with pytest.raises(ValueError, match="does not belong in the config file"):
        EntsoeSpec(token="x")


# ---------------------------------------------------------------------------------------------
# OTE
# ---------------------------------------------------------------------------------------------
def ote_body(day: str, published: bool = True, resolution: str = "PT60M") -> str:
    """OTE's chart data of one delivery day (Prague's local day: 23 or 25 hours when the clocks change)."""
    local = pd.Timestamp(day).tz_localize("Europe/Prague")
    res = pd.Timedelta(resolution)
    n = int(round(((pd.Timestamp(day) + pd.Timedelta(days=1)).tz_localize("Europe/Prague") - local) / res)) \
        if published else 0
    start = local.tz_convert("UTC")
    price = [{"x": str(k), "y": eur_mwh(start + (k - 1) * res)} for k in range(1, n + 1)]
    amount = [{"x": str(k), "y": 4000.0 + k} for k in range(1, n + 1)]
    return json.dumps({"axis": {"x": {"legend": "Hodina"}, "y": {"legend": "Množství (MWh)"}},
                       "data": {"dataLine": [{"title": "Množství (MWh)", "tooltip": "Množství", "type": "1",
                                              "point": amount},
                                             {"title": "Cena (EUR/MWh)", "tooltip": "Cena", "type": "2",
                                              "point": price}]},
                       "graph": {"title": f"Výsledky denního trhu ČR - {day}"}}, ensure_ascii=False)


OTE = {
    "good": lambda q: Answer(200, ote_body(q["report_date"], q["report_date"] <= "2024-01-10", q["time_resolution"])),
    "server-error": lambda q: Answer(503, "<html>Service Unavailable</html>", "text/html"),
    "malformed": lambda q: Answer(200, json.dumps({"data": {"dataLine": [{"title": "Množství (MWh)", "point": []}]}})),
}


def test_ote_prices_of_yesterday_and_today_and_tomorrow_not_yet_published():
    with RecordedServer(OTE, ["good"]) as srv:
        p = fetch_ote(srv.url + "/@@chart-data", NOW, TARIFF, timeout_s=5)
    assert [q["report_date"] for _, q in srv.requests] == ["2024-01-09", "2024-01-10", "2024-01-11"]
    # x counts Prague's hours: x = 1 is 00:00 CET, 23:00 UTC the day before
    first = pd.Timestamp("2024-01-08T23:00Z")
    assert p.index[0] == first and p.index[-1] == pd.Timestamp("2024-01-10T22:00Z") and len(p) == 48
    t = pd.Timestamp("2024-01-10T13:00Z")
    assert p.loc[t, "price_import"] == pytest.approx((eur_mwh(t) / 1000 * 25 + 1.5) * 1.21)


def test_ote_days_when_the_clocks_change():
    spring = parse_ote(json.loads(ote_body("2024-03-31")), pd.Timestamp("2024-03-31").date())
    autumn = parse_ote(json.loads(ote_body("2024-10-27")), pd.Timestamp("2024-10-27").date())
    assert len(spring) == 23 and len(autumn) == 25
    assert spring.index[0] == pd.Timestamp("2024-03-30T23:00Z") and spring.index[-1] == pd.Timestamp("2024-03-31T21:00Z")
    assert autumn.index[-1] == pd.Timestamp("2024-10-27T22:00Z")
    q = parse_ote(json.loads(ote_body("2025-10-02", resolution="PT15M")), pd.Timestamp("2025-10-02").date(), "PT15M")
    assert len(q) == 96


@pytest.mark.parametrize(("mode", "said"), [("server-error", "HTTP 503"), ("malformed", "no price line")])
def test_every_ote_failure_is_one_line(mode, said):
    with RecordedServer(OTE, [mode]) as srv:
        with pytest.raises(FetchError, match=said):
            fetch_ote(srv.url + "/@@chart-data", NOW, TARIFF, timeout_s=2)

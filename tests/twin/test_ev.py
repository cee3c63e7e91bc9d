"""The car's spec and its week on the model's steps: the charger's feasible powers, when it is away,
the energy its trips use and when it must be full (issue: the car in the home, first part)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from pems.twin.ev import Charger, Ev, Trip, ev_signals

TZ = "Europe/Prague"
STEP = pd.Timedelta(minutes=15)


def _car_house() -> dict:
    from helpers import BATTERY_HOUSE

    # the two-room battery house in Prague's time, with a fuse for a wallbox (3 × 35 A)
    return {**BATTERY_HOUSE, "site": {**BATTERY_HOUSE["site"], "timezone": TZ},
            "grid": {**BATTERY_HOUSE["grid"], "import_limit_w": 24000}}
COMMUTE = Ev(capacity_kwh=60, trips=[Trip(days=["mon", "tue", "wed", "thu", "fri"], out="07:00", back="17:30",
                                          drive_kwh=12.0)])


def test_the_charger_never_charges_below_its_minimum_nor_above_its_maximum():
    c = Charger(min_current_a=6, max_current_a=16, phases=3)
    assert c.power_ranges() == [(3 * 230 * 6, 3 * 230 * 16)]
    assert c.feasible(3000) == 0.0 and c.feasible(4140) == 4140 and c.feasible(5000) == 5000
    assert c.feasible(20000) == 11040 and c.feasible(-100) == 0.0 and c.feasible(float("nan")) == 0.0
    s = Charger(min_current_a=6, max_current_a=16, phases=3, phase_switching=True)
    assert s.power_ranges() == [(1380.0, 3680.0), (4140.0, 11040.0)]
    assert s.feasible(1000) == 0 and s.feasible(2000) == 2000 and s.feasible(3900) == 3680 and s.feasible(4200) == 4200
    for p in np.linspace(-500, 15000, 301):  # whatever the command
        f = s.feasible(p)
        assert f == 0 or any(lo <= f <= hi for lo, hi in s.power_ranges())
        assert f <= max(p, 0)
    with pytest.raises(ValidationError, match="above max_current_a"):
        Charger(min_current_a=20, max_current_a=16)


def test_a_weekday_commute_in_winter_and_in_summer_local_time():
    winter = pd.date_range("2024-01-08T00:00Z", periods=7 * 96, freq=STEP)  # Monday
    s = ev_signals(COMMUTE, winter, STEP, TZ)
    mon = s.loc["2024-01-08"]
    away = mon.index[mon["plugged"] < 1]
    assert away[0] == pd.Timestamp("2024-01-08T06:00Z") and away[-1] == pd.Timestamp("2024-01-08T16:15Z")  # 07:00–17:30 CET
    assert mon.loc["2024-01-08T06:00Z", "need_wh"] == pytest.approx(0.8 * 60000)
    assert mon.loc["2024-01-08T16:15Z", "drive_wh"] == pytest.approx(12000.0)  # back at 17:30 CET: by its end
    assert s["drive_wh"].sum() == pytest.approx(5 * 12000.0) and (s["need_wh"] > 0).sum() == 5
    weekend = s.loc["2024-01-13":"2024-01-14"]
    assert (weekend["plugged"] == 1).all() and (weekend["drive_wh"] == 0).all()
    summer = pd.date_range("2024-07-01T00:00Z", periods=96, freq=STEP)  # Monday, CEST
    j = ev_signals(COMMUTE, summer, STEP, TZ)
    assert j.index[j["plugged"] < 1][0] == pd.Timestamp("2024-07-01T05:00Z")


def test_a_trip_that_leaves_mid_step_and_the_arrival_soc_drawn_reproducibly():
    ev = Ev(capacity_kwh=50, target_soc=0.9, arrival_soc_mean=0.5, arrival_soc_sd=0.1,
            trips=[Trip(days=["sat"], out="09:40", back="13:05")])
    idx = pd.date_range("2024-01-13T00:00Z", periods=96, freq=STEP)  # Saturday
    a, b = ev_signals(ev, idx, STEP, TZ, seed=3), ev_signals(ev, idx, STEP, TZ, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a.loc["2024-01-13T08:30Z", "plugged"] == pytest.approx(10 / 15)  # leaves at 08:40 UTC
    assert a.loc["2024-01-13T12:00Z", "plugged"] == pytest.approx(10 / 15)  # back at 12:05 UTC
    used = a["drive_wh"].sum() / 1000
    assert 0 <= used <= 0.9 * 50 and used == pytest.approx(a.loc["2024-01-13T12:00Z", "drive_wh"] / 1000)
    many = [ev_signals(ev, idx, STEP, TZ, seed=k)["drive_wh"].sum() / 1000 for k in range(300)]
    assert np.mean(many) == pytest.approx((0.9 - 0.5) * 50, abs=0.5)  # N(0.5, 0.1) on arrival


def test_a_calendar_replaces_the_weeks_trips_on_its_days():
    cal = pd.DataFrame({"time_out": ["2024-01-09 10:00"], "time_back": ["2024-01-11 20:00"], "drive_kwh": [40.0]})
    idx = pd.date_range("2024-01-08T00:00Z", periods=5 * 96, freq=STEP)
    s = ev_signals(COMMUTE, idx, STEP, TZ, calendar=cal)
    assert s.loc["2024-01-09T05:00Z", "plugged"] == 1.0  # Tuesday: the calendar's trip, not the commute
    assert s.loc["2024-01-10T12:00Z", "plugged"] == 0.0  # away for three days: no commute on those days
    assert s.loc["2024-01-11T18:45Z", "drive_wh"] == pytest.approx(40000)  # back at 20:00 CET
    assert s["drive_wh"].sum() == pytest.approx(40000 + 12000 + 12000)  # and Monday's and Friday's commutes


# ---------------------------------------------------------------------------------------------
# the car in the one model and the simulated home
# ---------------------------------------------------------------------------------------------
def _home_with_a_car(tmp_path, ev: Ev, days: float = 3.0, fuse_w: float = 25000.0):
    from helpers import BATTERY_HOUSE, house_from

    from pems.twin.inputs import InputSpec, build_inputs
    from pems.twin.model import build_model
    from pems.twin.plant import SimulatedHome

    house = house_from({**_car_house(), "grid": {**_car_house()["grid"], "import_limit_w": fuse_w}}, ev=[ev.model_dump()])
    model = build_model(house)
    start = pd.Timestamp("2024-01-08T00:00Z")  # a Monday
    d = build_inputs(house, InputSpec(weather="greensboro-tmy3", prices="flat"), start, int(days * 96), STEP)
    x0 = np.zeros(len(model.sym.x))
    x0[model.air], x0[model.mass] = 21.0, 21.5
    x0[model.i_soc] = 0.5
    x0[model.i_ev_soc[0]] = 0.8
    return model, d, SimulatedHome(model, d, x0)


@pytest.mark.parametrize("command", ["wallbox", "random"])
def test_energy_balance_soc_and_charger_limits_hold_at_every_step(tmp_path, command):
    """A commuting car under a plain wallbox, or under random commands: the grid balances with the
    car's charging at every step; the car's SOC moves only by what it was charged while plugged in,
    and by its trip's energy at the arrival step; it never charges below the minimum current or
    above the maximum, nor while away."""
    from pems.twin.signals import Action

    model, d, home = _home_with_a_car(tmp_path, COMMUTE)
    car = COMMUTE.charger
    rng = np.random.default_rng(5)
    home.reset()
    i_soc, i_p = model.i_ev_soc[0], model.i_ev[0]
    socs = [home.x[i_soc]]
    for k in range(len(d)):
        ev_w = None if command == "wallbox" else np.array([rng.choice([0.0, 2000.0, 5000.0, 30000.0, np.nan])])
        home.step(Action(heat_w=np.full(model.n_rooms, 500.0), bat_w=None, ev_w=ev_w))
        socs.append(home.x[i_soc])
    out = home.outputs()
    lg = home.log
    p_ev = lg.u_mean[:, i_p]
    heat = lg.u_mean[:, model.heat].sum(axis=1)
    bat = lg.u_mean[:, model.sym.u.index("P_ch")] - lg.u_mean[:, model.sym.u.index("P_dis")]
    balance = out["P_grid"] - (d["P_load"] + heat + bat + p_ev - lg.pv + out["P_loss"])
    assert np.abs(balance.to_numpy()).max() < 1e-6
    np.testing.assert_allclose(out["P_ev"], p_ev, atol=1e-9)
    plugged = d["ev_plugged__car"].to_numpy()
    socs = np.asarray(socs)
    # home all step and not filled up within it (the car's own taper): at least the minimum current
    charging = (plugged == 1.0) & (p_ev > 1e-9) & (socs[1:] < 1.0 - 1e-9)
    assert charging.sum() > 3 and (p_ev[charging] >= car.min_w - 1e-6).all()
    assert (p_ev <= car.max_w * plugged + 1e-6).all() and (p_ev[plugged == 0] == 0).all()
    assert socs.max() <= 1.0 + 1e-12
    # the SOC: charged while plugged (η = 0.9), less the trip at the arrival step, nothing else
    expect = (0.9 * p_ev - d["ev_drive_w__car"].to_numpy()) * 0.25 / 60000.0
    np.testing.assert_allclose(np.diff(socs), expect, atol=1e-9)
    away = (plugged == 0) & (d["ev_drive_w__car"].to_numpy() == 0)
    assert np.abs(np.diff(socs)[away]).max() == 0.0
    if command == "wallbox":  # 12 kWh a day back by 07:00 at 11 kW: every departure at its target
        need = d["ev_need_wh__car"].to_numpy() > 0
        assert need.sum() == 3 and (socs[:-1][need] >= 0.8 - 1e-9).all()


@pytest.mark.parametrize("controller", ["rule-based", "mpc"])
def test_a_scenario_with_a_car_balances_and_reports_the_cars_kpis(tmp_path, controller):
    """Three winter days of the two-room battery house with a commuting car: the trajectory's energy
    balance holds with the car's charging in P_load (the contract's terms), and its KPIs count the
    three departures, the energy charged and what was missing."""
    from helpers import BATTERY_HOUSE, write_scenario

    from pems.scenarios.runner import prepare, run
    from pems.scenarios.spec import load_scenario

    house = {**_car_house(), "ev": [COMMUTE.model_dump(exclude_none=True)]}
    prep = prepare(load_scenario(write_scenario(tmp_path, house, weather="greensboro-tmy3", load="h25",
                                                start="2024-01-08T00:00:00Z", days=3.0)))
    r = run(prep, controller)
    t = r.trajectory
    heat = t[[c for c in t.columns if c.startswith("P_heat__") and "cmd" not in c]].sum(axis=1)
    resid = t["P_grid"] - (t["P_load"] + heat + t["P_bat"] - t["P_pv"] + t["P_loss"])
    assert resid.abs().max() < 1e-6
    np.testing.assert_allclose(t["P_load"] - t["P_load_household"], t["P_ev__car"], atol=1e-9)
    k = r.kpis
    assert k["ev_departures"] == 3 and k["ev_departures_missed"] == 0 and k["ev_shortfall_kWh"] == 0
    # what it drove (3 × 12 kWh) came back in, through the charger's 90 %, less what the SOC gained
    soc_gain = (t["ev_soc__car"].iloc[-1] - 0.8) * 60
    assert k["ev_energy_kWh"] * 0.9 == pytest.approx(36.0 + soc_gain, abs=0.5)
    assert 0 <= k["ev_pv_share"] <= 1


def _scenario(tmp_path, ev: Ev, prices: str = "two-rate", days: float = 3.0):
    from helpers import BATTERY_HOUSE, write_scenario

    from pems.scenarios.runner import prepare
    from pems.scenarios.spec import load_scenario

    house = {**_car_house(), "ev": [ev.model_dump(exclude_none=True)]}
    return prepare(load_scenario(write_scenario(tmp_path, house, weather="greensboro-tmy3", load="h25", prices=prices,
                                                start="2024-01-08T00:00:00Z", days=days)))


def test_the_mpc_charges_the_car_in_the_cheap_hours_and_meets_every_departure(tmp_path):
    from pems.scenarios.runner import run

    prep = _scenario(tmp_path, COMMUTE)
    base, mpc = run(prep, "rule-based"), run(prep, "mpc")
    for r in (base, mpc):
        assert r.kpis["ev_departures"] == 3 and r.kpis["ev_departures_missed"] == 0
    t = mpc.trajectory
    night = t.index.tz_convert(TZ).hour.isin(range(0, 6)) | (t.index.tz_convert(TZ).hour >= 22)
    share_night = t.loc[night, "P_ev__car"].sum() / t["P_ev__car"].sum()
    base_night = base.trajectory.loc[night, "P_ev__car"].sum() / base.trajectory["P_ev__car"].sum()
    assert share_night > 0.9 > base_night  # the wallbox charges on arrival (17:30), the MPC at night
    assert mpc.kpis["cost"] < base.kpis["cost"]
    p = t["P_ev__car"].to_numpy()
    on = (p > 1e-6) & (t["ev_plugged__car"].to_numpy() == 1.0)
    assert (p[on] >= COMMUTE.charger.min_w - 1e-6).all()  # the charger's minimum current, always


def test_too_little_time_the_shortfall_is_what_the_charger_could_not_deliver(tmp_path):
    """Back at 05:30 from a trip that took 40 kWh, away again at 07:00: one and a half hours at 11 kW
    (90 % into the battery) cannot refill it; the shortfall is the rest, for every controller."""
    from pems.scenarios.runner import run

    ev = Ev(capacity_kwh=60, trips=[Trip(days=["mon"], out="07:00", back="05:30", drive_kwh=40.0),
                                    Trip(days=["tue"], out="07:00", back="18:00", drive_kwh=5.0)])
    prep = _scenario(tmp_path, ev, days=2.0)  # Monday 07:00 → Tuesday 05:30 (back), Tuesday 07:00 out
    for controller in ("rule-based", "mpc"):
        k = run(prep, controller).kpis
        delivered = 1.5 * ev.charger.max_w / 1000 * ev.eta_charge  # kWh into the battery before 07:00
        assert k["ev_departures"] == 2 and k["ev_departures_missed"] == 1
        assert k["ev_shortfall_kWh"] == pytest.approx(40.0 - delivered, abs=0.3), controller


def test_a_small_fuse_cuts_the_car_first_and_is_never_exceeded(tmp_path):
    """An 8 kW main fuse and an 11 kW wallbox: the plant's load management cuts the car's charging
    (to a power its charger can give) before it sheds any heating, and the import never exceeds it."""
    from pems.twin.signals import Action

    model, d, home = _home_with_a_car(tmp_path, COMMUTE, fuse_w=8000.0)
    home.reset()
    for _ in range(len(d)):
        home.step(Action(heat_w=np.full(model.n_rooms, 1000.0), bat_w=None))
    out, lg = home.outputs(), home.log
    assert out["P_grid"].max() <= 8000.0 + 1e-6
    assert lg.u_mean[:, model.i_ev[0]].max() < COMMUTE.charger.max_w  # cut below its 11 kW
    assert lg.shed_wh.sum() == 0.0  # the heating was never shed: the car gave way


def test_rule_based_solar_charges_from_pv_and_still_meets_the_departures(tmp_path):
    """A summer week, the car home on Tuesday and Thursday and away on the other weekdays, a charger
    that switches phases: from PV surplus, on time for every departure; much more of its energy from
    PV than a plain wallbox's."""
    from pems.scenarios.runner import prepare, run
    from pems.scenarios.spec import load_scenario
    from helpers import write_scenario

    ev = Ev(capacity_kwh=60, charger=Charger(phase_switching=True),  # 1.4–3.7 kW on one phase: a 5 kWp roof's surplus
            trips=[Trip(days=["mon", "wed", "fri"], out="07:00", back="17:30", drive_kwh=15.0)])
    house = {**_car_house(), "ev": [ev.model_dump(exclude_none=True)]}
    prep = prepare(load_scenario(write_scenario(tmp_path, house, weather="greensboro-tmy3", load="h25",
                                                prices="two-rate", start="2024-07-01T00:00:00Z", days=7.0)))
    base, solar = run(prep, "rule-based"), run(prep, "rule-based-solar")
    assert solar.kpis["ev_departures"] == 3 and solar.kpis["ev_departures_missed"] == 0
    assert solar.kpis["ev_pv_share"] > base.kpis["ev_pv_share"] + 0.2
    p = solar.trajectory["P_ev__car"].to_numpy()
    on = (p > 1e-6) & (solar.trajectory["ev_plugged__car"].to_numpy() == 1.0)
    assert (p[on] >= ev.charger.min_w - 1e-6).all()


def test_the_energy_the_cars_keep_is_reported(tmp_path):
    """``ev_stored_kWh``: what the run leaves in the cars against what it found, so that bills of runs
    that leave them more or less full can be compared."""
    from pems.scenarios.runner import run

    prep = _scenario(tmp_path, COMMUTE)
    r = run(prep, "rule-based")
    t = r.trajectory
    end = t["ev_soc_end__car"].iloc[-1]
    assert r.kpis["ev_stored_kWh"] == pytest.approx((end - 0.8) * 60)
    # the car's energy balance: charged × η − driven = stored
    driven = prep.inputs["ev_drive_w__car"].iloc[: len(t)].sum() * 0.25 / 1000
    assert r.kpis["ev_energy_kWh"] * 0.9 - driven == pytest.approx(r.kpis["ev_stored_kWh"], abs=1e-6)


def test_a_plan_for_a_step_the_car_is_home_only_part_of_is_charged_in_that_part():
    """A plan's power is a mean over the step; the plant charges at the commanded power while the car
    is plugged in. In a step the car comes home (or leaves) in, the command is the mean over the
    plugged part, so that the energy planned is the energy charged; below the minimum current the
    energy waits (carried), and none is lost at the departure."""
    from pems.twin.ev import car_commands, quantised

    c = Charger(min_current_a=6, max_current_a=16, phases=3)  # 4140–11040 W
    h = 0.25
    cmd, carry = quantised(3000.0, c, 0.0, h, share=0.5)  # home half the step: 6 kW for 7.5 min
    assert cmd == pytest.approx(6000.0) and carry == 0.0 and cmd * 0.5 == pytest.approx(3000.0)
    cmd, carry = quantised(1500.0, c, 0.0, h, share=0.5)  # 3 kW while home: below the minimum, it waits
    assert cmd == 0.0 and carry == pytest.approx(1500.0 * h)
    cmd, carry = quantised(8000.0, c, 0.0, h, share=0.5)  # more than it can give in half a step: the rest waits
    assert cmd == c.max_w and carry == pytest.approx((8000.0 - 0.5 * c.max_w) * h)
    # over a run of steps, what the plan wanted while the car was home is what it got
    car = Ev(capacity_kwh=60, charger=c)
    plans = np.array([1000.0, 2500.0, 500.0, 7000.0, 300.0, 0.0])
    shares = np.array([0.3, 1.0, 1.0, 1.0, 1.0, 0.6])
    leaving = np.array([False, False, False, False, True, False])
    carry, got = np.zeros(1), 0.0
    for p, f, lv in zip(plans, shares, leaving):
        out = car_commands([car], np.array([p]), np.array([f > 0.5]), carry, h, np.array([lv]), np.array([f]))
        assert out[0] == 0.0 or c.min_w - 1e-9 <= out[0] <= c.max_w + 1e-9
        got += out[0] * f * h
    # all that was owed given in the last step home, at the minimum current at least (so at most a
    # minimum-current step more than planned)
    planned = plans[:5].sum() * h
    assert planned - 1e-6 <= got <= planned + c.min_w * h


def test_a_car_home_early_is_planned_from_its_plug_and_its_trip_is_not_counted_twice(tmp_path):
    """Live, the plug as measured wins over the week: a car home before its scheduled return is
    planned from now to its next departure, and the energy of the trip it is back from (already in
    the SOC it reports) is not taken off again at the scheduled arrival. The estimator takes the SOC
    the car reports as it is."""
    from pems.scenarios.forecast import ForecastProvider
    from pems.twin.ev import with_measured_plugs
    from pems.twin.estimator import KalmanEstimator

    prep = _scenario(tmp_path, COMMUTE, days=2.0)
    sc, m = prep.scenario, prep.model
    fcp = ForecastProvider(sc.spec.forecast, prep.inputs, m.sym.d.names, prep.comfort_low, prep.comfort_high,
                           sc.horizon_steps, sc.step)
    k = int(round((pd.Timestamp("2024-01-08T12:00Z") - sc.start) / sc.step))  # Monday noon: away until 16:30 UTC
    fc = fcp(k)
    assert fc.column("ev_plugged__car")[0] == 0 and fc.column("ev_drive_w__car").max() > 0
    home = with_measured_plugs(m.house.ev, fc, np.array([True]))
    plug, drive, need = (home.column(f"ev_{c}__car") for c in ("plugged", "drive_w", "need_wh"))
    dep = int(np.flatnonzero(need > 0)[0])  # Tuesday 06:00 UTC
    assert np.all(plug[:dep] == 1) and np.all(drive[: dep + 1] == 0)
    np.testing.assert_array_equal(home.column("ev_plugged__car")[dep + 1:], fc.column("ev_plugged__car")[dep + 1:])
    # seen away while the week has it home (late): away until the departure
    k_home = int(round((pd.Timestamp("2024-01-08T20:00Z") - sc.start) / sc.step))
    late = with_measured_plugs(m.house.ev, fcp(k_home), np.array([False]))
    assert np.all(late.column("ev_plugged__car")[: int(np.flatnonzero(late.column("ev_need_wh__car") > 0)[0])] == 0)
    # unknown plugs leave the week alone
    assert with_measured_plugs(m.house.ev, fc, None) is fc
    # the estimator: a reported SOC is the car's state at once; a NaN one (unplugged) is predicted
    est = KalmanEstimator(m, sc.step.total_seconds())
    est.reset(est.initial_guess(prep.x0[m.air], 0.5, np.array([0.31])))
    assert est.x[m.i_ev_soc[0]] == pytest.approx(0.31)
    x = est.correct(est.measurement(prep.x0[m.air], 0.5, np.array([0.62])))
    assert x[m.i_ev_soc[0]] == pytest.approx(0.62)
    x = est.correct(est.measurement(prep.x0[m.air], 0.5, np.array([np.nan])))
    assert x[m.i_ev_soc[0]] == pytest.approx(0.62)


def test_evcc_saying_0_percent_without_a_car_is_not_a_measurement():
    from pems.live.evcc import EvccReadings, reported_soc

    def r(**kw):
        base = dict(time=pd.Timestamp("2024-01-01", tz="UTC"), plugged=True, charging=False, power_w=0.0, soc=0.55,
                    mode="pv", phases_active=0.0, max_current_a=16.0, evcc_online=True, connected=True, age_s=1.0)
        return EvccReadings(**(base | kw))

    assert reported_soc(r()) == 0.55
    assert np.isnan(reported_soc(r(plugged=False, soc=0.0)))  # evcc's "no vehicle"
    assert np.isnan(reported_soc(r(soc=0.0)))
    assert np.isnan(reported_soc(r(plugged=None)))
    assert np.isnan(reported_soc(r(evcc_online=False)))
    assert np.isnan(reported_soc(r(soc=float("nan"))))


def test_a_switching_charger_keeps_its_phases_while_they_can_give_the_power():
    """Where one and three phases both give a power (a 32 A wallbox: 1.38–7.36 kW on one phase,
    4.14–22.1 kW on three), the phases in use stay: no switching back and forth about the border."""
    c = Charger(min_current_a=6, max_current_a=32, phases=3, phase_switching=True)
    assert c.setting(5000.0) == (1, pytest.approx(5000.0 / 230))  # one phase where it reaches
    assert c.setting(8000.0) == (3, pytest.approx(8000.0 / 690))
    assert c.setting(5000.0, phases_now=3) == (3, pytest.approx(5000.0 / 690))  # stays on three
    assert c.setting(3000.0, phases_now=3)[0] == 1  # below what three phases can give: switches
    assert c.setting(7000.0, phases_now=1)[0] == 1 and c.setting(9000.0, phases_now=1)[0] == 3
    assert c.setting(0.0, phases_now=3)[1] == 0.0

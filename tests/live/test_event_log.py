"""The live loop's event log: never raises, rotates, and says when it cannot write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pems.live.event_log import EventLog, jsonable

T = pd.Timestamp("2024-01-10T00:00Z")


def test_lines_are_json_and_flushed_at_once(tmp_path):
    log = EventLog(tmp_path / "sub" / "events.jsonl")
    log.write("step", T, heat=np.array([1.0, np.nan]), n=np.int64(3))
    lines = (tmp_path / "sub" / "events.jsonl").read_text().splitlines()  # before close: flushed
    assert json.loads(lines[0]) == {"time": T.isoformat(), "kind": "step", "heat": [1.0, None], "n": 3}
    log.close()


def test_rotation_keeps_the_newest_files(tmp_path):
    p = tmp_path / "events.jsonl"
    log = EventLog(p, max_bytes=2000, keep=2)
    for k in range(100):
        log.write("step", T, step=k, pad="x" * 50)
    log.close()
    files = sorted(q.name for q in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(q.stat().st_size < 2100 for q in tmp_path.iterdir())
    last = [json.loads(x)["step"] for x in p.read_text().splitlines()]
    assert last[-1] == 99
    steps = [json.loads(x)["step"] for f in ("events.jsonl.2", "events.jsonl.1", "events.jsonl")
             for x in (tmp_path / f).read_text().splitlines()]
    assert steps == list(range(steps[0], 100))  # consecutive: nothing lost between the kept files


def test_daily_rotation_a_file_a_day_and_a_cap_on_the_total(tmp_path):
    """A file per UTC day (the loop's own times, not the machine's), the oldest removed once the
    log and its rotated files would take more than the cap; nothing lost between the kept files."""
    p = tmp_path / "events.jsonl"
    log = EventLog(p, max_bytes=10**9, keep=100, daily=True, max_total_bytes=20_000)
    for k in range(10 * 96):  # ten days of 15-minute steps, about 8.4 kB a day
        log.write("step", T + pd.Timedelta(minutes=15 * k), step=k, pad="x" * 10)
    log.close()
    files = [p, *log.rotated()]
    total = sum(f.stat().st_size for f in files)
    assert total <= 20_000 < total + files[-1].stat().st_size  # one more day would be over the cap
    days = [{json.loads(x)["time"][:10] for x in f.read_text().splitlines()} for f in files]
    assert all(len(d) == 1 for d in days) and len(files) == 2
    assert all(len(f.read_text().splitlines()) == 96 for f in files)  # whole days
    assert [d.pop() for d in days] == [f"2024-01-{19 - i}" for i in range(len(files))]  # the newest days
    steps = [json.loads(x)["step"] for f in reversed(files) for x in f.read_text().splitlines()]
    assert steps == list(range(steps[0], 10 * 96))
    # a loop restarted the same day appends to that day's file
    log = EventLog(p, daily=True)
    log.write("start", T + pd.Timedelta(days=9, hours=23, minutes=59))
    log.close()
    assert len(log.rotated()) == len(files) - 1 and json.loads(p.read_text().splitlines()[-1])["kind"] == "start"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_full_disk_is_said_once_and_the_log_recovers(tmp_path, caplog):
    said: list[str] = []
    log = EventLog("/dev/full", on_problem=said.append, keep_in_memory=5)
    for k in range(10):
        assert log.write("step", T, step=k)["step"] == k  # never raises
    assert len(said) == 1 and "No space left" in said[0] and log.dropped == 10
    assert [e["step"] for e in log.records] == [5, 6, 7, 8, 9]  # bounded in memory
    log.path = tmp_path / "events.jsonl"  # the disk has room again (the file is reopened at the next write)
    log.write("step", T, step=10)
    assert said[-1] == "" and log.problem is None and log.dropped == 0
    assert "10 events missed" in caplog.text
    assert json.loads(log.path.read_text())["step"] == 10


def test_an_unserialisable_event_loses_the_event_not_the_log(tmp_path):
    log = EventLog(tmp_path / "e.jsonl")
    log.write("odd", T, what=object())
    log.write("step", T, step=1)
    log.close()
    assert [json.loads(x)["kind"] for x in (tmp_path / "e.jsonl").read_text().splitlines()] == ["step"]


def test_jsonable():
    assert jsonable({1: (np.float32(0.5), float("inf"), T)}) == {"1": [0.5, None, T.isoformat()]}

"""The InfluxDB log's disk spool: append-only segment files with an acknowledged cursor.

Every point the log is given is appended here first (one CRC-checked record per line:
``crc32-hex TAB bucket TAB line-protocol``), fsynced in batches, and sent in order by the log's
sender thread (:mod:`pems.live.influx_log`, whose module notes describe the guarantees); the cursor
(``cursor.json``) says how far the server has acknowledged. A crash leaves at most a partial last
record, discarded on recovery; refused or corrupt records go to ``rejected.lp``; beyond the cap the
oldest (or newest) unsent records are dropped and reported. One writer per folder (a lock file).

File-system faults do not corrupt it: a failed rotation drops its descriptor (later records never
land in a file that reuses the number), and a cursor past every segment deletes nothing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pems.errors import InputError

log = logging.getLogger("pems.live.influx_log")  # one log for the InfluxDB log and its spool

SEGMENT_SUFFIX = ".seg"


def _one_line(x: str) -> str:
    return x.replace("\r", " ").replace("\n", " ")


def record(bucket: str, line: str) -> bytes:
    body = f"{bucket}\t{line}".encode()
    return b"%08x\t%s\n" % (zlib.crc32(body), body)


def parse_record(raw: bytes) -> tuple[str, str] | None:
    """(bucket, line) of one record without its newline, or ``None`` when it is corrupt."""
    crc, sep, body = raw.partition(b"\t")
    if not sep or len(crc) != 8:
        return None
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        bucket, sep, line = body.decode().partition("\t")
    except (ValueError, UnicodeDecodeError):
        return None
    return (bucket, line) if sep and bucket and line else None


def line_time(line: str) -> pd.Timestamp | None:
    """The timestamp (always the last token of our lines) as a UTC time."""
    try:
        return pd.Timestamp(int(line.rsplit(" ", 1)[1]), unit="ns", tz="UTC")
    except (IndexError, ValueError):
        return None


@dataclass
class Batch:
    """Records read from the head segment: bytes ``[start, end)`` of segment ``seq``."""

    seq: int
    start: int
    end: int
    records: list[tuple[str, str]]  # (bucket, line), in order
    corrupt: list[bytes]

    @property
    def n_lines(self) -> int:
        return len(self.records) + len(self.corrupt)


class Spool:
    """Append-only segment files with an acknowledged cursor (see the module docstring).

    Thread safety: :meth:`append` (callers' threads) and the sender's methods share ``lock``; file
    contents are read outside it (segments are append-only, and only complete records are counted).
    """

    def __init__(self, folder: Path, max_bytes: int, segment_bytes: int, when_full: str,
                 cursor_s: float = 5.0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.segment_bytes, self.when_full = max_bytes, segment_bytes, when_full
        self.cursor_s = cursor_s
        self.lock = threading.Lock()
        self._lock_fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise InputError(self.folder, "spool_dir", "in use by another InfluxDB log (one writer per spool "
                                                       "directory)") from None
        self.fd: int | None = None  # the active segment's descriptor (None: to be opened at the next append)
        self.segments: list[int] = []  # seqs, oldest first; the last one is active
        self.sizes: dict[int, int] = {}  # bytes of complete records
        self.nlines: dict[int, int] = {}
        self.head_offset = 0  # acknowledged bytes of segments[0]
        self.head_done = 0  # acknowledged lines of segments[0]
        # running totals (plain ints: other threads read them without the lock)
        self.n_pending = 0  # lines not acknowledged
        self.n_bytes = 0  # bytes of all segments
        self.dropped = 0
        self.rejected = 0
        self._dirty = False  # appended since the last fsync
        self._cursor_saved = 0.0
        self.recovery_warnings: list[str] = []
        self._recover()

    # ------------------------------------------------------------------ files
    def path(self, seq: int) -> Path:
        return self.folder / f"{seq:012d}{SEGMENT_SUFFIX}"

    def _fsync_dir(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open_active(self, seq: int) -> None:
        fd = os.open(self.path(seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # may raise: fd stays None
        self.fd = fd
        self.segments.append(seq)
        self.sizes[seq], self.nlines[seq] = 0, 0
        self._fsync_dir()  # the new file's directory entry survives a power cut

    def _recover(self) -> None:
        seqs = sorted(int(p.stem) for p in self.folder.glob(f"*{SEGMENT_SUFFIX}") if p.stem.isdigit())
        cur_seq, cur_off = 0, 0
        try:
            c = json.loads((self.folder / "cursor.json").read_text())
            cur_seq, cur_off = int(c["segment"]), int(c["offset"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError):
            self._warn("cursor.json unreadable: resending the whole spool (points are overwritten, not doubled)")
        if seqs and cur_seq > seqs[-1]:
            # A cursor past every segment on disk (copied from another spool, or damaged) would have
            # every segment deleted as acknowledged: trust the segments, not the cursor.
            self._warn(f"cursor.json points past every segment ({cur_seq} > {seqs[-1]}): resending the whole "
                       "spool (points are overwritten, not doubled)")
            cur_seq, cur_off = 0, 0
        for seq in seqs:
            p = self.path(seq)
            if seq < cur_seq:  # acknowledged, deletion interrupted
                p.unlink(missing_ok=True)
                continue
            data = p.read_bytes()
            good = data.rfind(b"\n") + 1
            if good < len(data):  # a crash mid-write: the last line is incomplete
                tail = data[good:]
                self._warn(f"{p.name}: discarding a partially written last line ({len(tail)} bytes)")
                self.reject_raw(tail, "partially written line discarded on recovery")
                with open(p, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
            if good == 0:
                p.unlink()
                continue
            self.segments.append(seq)
            self.sizes[seq] = good
            self.nlines[seq] = data.count(b"\n", 0, good)
            self.n_pending += self.nlines[seq]
            self.n_bytes += good
        if self.segments and self.segments[0] == cur_seq:
            self.head_offset = min(cur_off, self.sizes[cur_seq])
            # the cursor is always at a record boundary; the data before it was acknowledged
            data = self.path(cur_seq).read_bytes()[:self.head_offset]
            self.head_done = data.count(b"\n")
            self.n_pending -= self.head_done
            self.head_offset = data.rfind(b"\n") + 1 if self.head_offset else 0
        # always append to a fresh segment: never after a line that might be damaged
        self._open_active(max([*self.segments, cur_seq]) + 1)
        self._drop_consumed_heads()
        self._save_cursor(force=True)

    def _warn(self, msg: str) -> None:
        log.warning("InfluxDB log spool %s: %s", self.folder, msg)
        self.recovery_warnings.append(msg)

    def reject_raw(self, raw: bytes, reason: str) -> None:
        """Keep a refused or corrupt record in ``rejected.lp`` (capped at 64 MB)."""
        self.rejected += 1
        p = self.folder / "rejected.lp"
        try:
            if p.exists() and p.stat().st_size > 64 * 2**20:
                return
            stamp = pd.Timestamp.now(tz="UTC").isoformat()
            with open(p, "ab") as f:
                f.write(f"# {stamp} {_one_line(reason)}\n".encode() + raw.rstrip(b"\n") + b"\n")
        except OSError as exc:
            log.error("InfluxDB log: cannot write %s (%s)", p, exc.strerror)

    def _save_cursor(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._cursor_saved < self.cursor_s:
            return
        self._cursor_saved = now
        tmp = self.folder / "cursor.json.tmp"
        try:
            tmp.write_text(json.dumps({"segment": self.segments[0], "offset": self.head_offset}))
            os.replace(tmp, self.folder / "cursor.json")
        except OSError as exc:  # a stale cursor only means some lines are sent twice
            log.error("InfluxDB log: cannot save the spool cursor (%s)", exc.strerror)

    # ------------------------------------------------------------------ counts
    @property
    def pending_lines(self) -> int:
        return self.n_pending

    @property
    def total_bytes(self) -> int:
        return self.n_bytes

    @property
    def pending_bytes(self) -> int:
        return self.n_bytes - self.head_offset

    # ------------------------------------------------------------------ writing (callers' threads)
    def append(self, data: bytes, n: int) -> tuple[int, list[tuple[int, pd.Timestamp | None, pd.Timestamp | None]]]:
        """Append ``n`` records; returns (records written, [(lines dropped, first, last time)])."""
        drops = []
        with self.lock:
            if self.when_full == "drop_newest" and self.total_bytes + len(data) > self.max_bytes:
                self.dropped += n
                return 0, [(n, None, None)]
            if self.fd is None:  # a rotation failed after closing the full segment: a new one now
                self._open_active(self.segments[-1] + 1)
            seq = self.segments[-1]
            view, done = memoryview(data), 0
            try:
                while done < len(data):
                    done += os.write(self.fd, view[done:])
            except OSError:
                if done:  # never leave half a record for the next one to be glued to
                    os.ftruncate(self.fd, self.sizes[seq])
                raise
            self.sizes[seq] += len(data)
            self.nlines[seq] += n
            self.n_bytes += len(data)
            self.n_pending += n
            self._dirty = True
            if self.sizes[seq] >= self.segment_bytes:
                try:
                    self._rotate()
                except OSError as exc:  # the records are written; the next append opens a segment
                    log.error("InfluxDB log spool %s: cannot start a new segment (%s)", self.folder, exc.strerror)
            while self.total_bytes > self.max_bytes and len(self.segments) > 1:
                drops.append(self._drop_head())
        return n, drops

    def _rotate(self) -> None:
        # The descriptor is dropped before anything can fail: a descriptor kept after its close would
        # send later records into whatever file the system gives that number next.
        fd, self.fd = self.fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._dirty = False
        self._open_active(self.segments[-1] + 1)

    def _drop_head(self) -> tuple[int, pd.Timestamp | None, pd.Timestamp | None]:
        seq = self.segments[0]
        n = self.nlines[seq] - self.head_done
        first = self._first_time(seq, self.head_offset)
        last = self._last_time(seq)
        self._remove_head()
        self.dropped += n
        self.n_pending -= n
        return n, first, last

    def _remove_head(self) -> None:
        seq = self.segments.pop(0)
        self.path(seq).unlink(missing_ok=True)
        self.n_bytes -= self.sizes[seq]
        del self.sizes[seq], self.nlines[seq]
        self.head_offset = self.head_done = 0
        self._save_cursor(force=True)

    def _drop_consumed_heads(self) -> None:
        while len(self.segments) > 1 and self.head_offset >= self.sizes[self.segments[0]]:
            self._remove_head()

    def _first_time(self, seq: int, offset: int) -> pd.Timestamp | None:
        try:
            with open(self.path(seq), "rb") as f:
                f.seek(offset)
                raw = f.read(65536).split(b"\n", 1)[0]
        except OSError:
            return None
        rec = parse_record(raw)
        return line_time(rec[1]) if rec else None

    def _last_time(self, seq: int) -> pd.Timestamp | None:
        size = self.sizes[seq]
        try:
            with open(self.path(seq), "rb") as f:
                f.seek(max(0, size - 65536))
                raw = f.read(size - max(0, size - 65536)).rstrip(b"\n").rsplit(b"\n", 1)[-1]
        except OSError:
            return None
        rec = parse_record(raw)
        return line_time(rec[1]) if rec else None

    def oldest_time(self) -> pd.Timestamp | None:
        with self.lock:
            heads = [(s, self.head_offset if i == 0 else 0) for i, s in enumerate(self.segments)
                     if (self.head_offset if i == 0 else 0) < self.sizes[s]]
        return self._first_time(*heads[0]) if heads else None

    # ------------------------------------------------------------------ sending (the sender thread)
    def sync(self) -> None:
        """fsync the active segment if it changed (on a duplicate fd: appends are not held up)."""
        with self.lock:
            if not self._dirty or self.fd is None:
                return
            self._dirty = False
            fd = os.dup(self.fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_batch(self, max_lines: int, max_bytes: int) -> Batch | None:
        """The oldest unacknowledged records (at most ``max_lines`` / about ``max_bytes``)."""
        with self.lock:
            self._drop_consumed_heads()
            seq, start = self.segments[0], self.head_offset
            size = self.sizes[seq]
        if start >= size:
            return None
        try:
            with open(self.path(seq), "rb") as f:
                f.seek(start)
                data = f.read(min(size - start, max_bytes))
                if b"\n" not in data:  # one line longer than max_bytes: take it whole
                    data += f.read(size - start - len(data))
        except FileNotFoundError:  # dropped just now (spool full): the next segment is the head
            return self.read_batch(max_lines, max_bytes)
        lines = data[:data.rfind(b"\n") + 1].split(b"\n")[:-1][:max_lines]
        end = start + sum(len(x) + 1 for x in lines)
        records, corrupt = [], []
        for raw in lines:
            rec = parse_record(raw)
            if rec is None:
                corrupt.append(raw)
            else:
                records.append(rec)
        return Batch(seq, start, end, records, corrupt)

    def commit(self, batch: Batch) -> bool:
        """Mark a batch acknowledged; ``False`` if its segment was dropped meanwhile (spool full)."""
        with self.lock:
            if not self.segments or self.segments[0] != batch.seq or self.head_offset != batch.start:
                return False
            self.head_offset = batch.end
            self.head_done += batch.n_lines
            self.n_pending -= batch.n_lines
            done = self.head_offset >= self.sizes[batch.seq] and len(self.segments) > 1
            if done:
                self._remove_head()  # saves the cursor
            else:
                self._save_cursor()
        return True

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                os.fsync(self.fd)
                os.close(self.fd)
                self.fd = None
            self._save_cursor(force=True)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)


def read_spool(spool_dir: str | Path) -> Iterable[tuple[str, str]]:
    """The records of a spool directory in order, acknowledged ones included (for inspection).

    Yields
    ------
    tuple[str, str]
        (bucket, line protocol) of every intact record.
    """
    for p in sorted(Path(spool_dir).glob(f"*{SEGMENT_SUFFIX}")):
        for raw in p.read_bytes().split(b"\n"):
            rec = parse_record(raw) if raw else None
            if rec is not None:
                yield rec

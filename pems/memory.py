"""Memory a long run frees goes back to the system.

A year's run allocates arrays of a few to tens of MB (inputs, the plant's per-step log, the
trajectory) and frees some of them before it ends. glibc's ``malloc`` serves such sizes with
``mmap`` and gives them back on ``free`` — until the first one is freed: it then raises its "mmap
threshold" to that size (its dynamic threshold, up to 32 MB), and every later array of that size
comes from the heap, whose freed middle it keeps. A sweep worker that runs year after year then
holds what its last year freed. Fixing the threshold (as ``MALLOC_MMAP_THRESHOLD_`` would) turns the
adjustment off: the reference house's year (rule-based) peaks at 353 MB instead of 372 MB and ends
26 MB lower, at the same speed (two days of MPC measured alike with and without, within their noise).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

#: ``mallopt``'s parameter number for the mmap threshold (glibc's ``M_MMAP_THRESHOLD``).
M_MMAP_THRESHOLD = -3
#: glibc's own initial threshold [bytes]: arrays from this size are mapped, and unmapped when freed.
THRESHOLD_BYTES = 128 * 1024


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at its initial 128 KiB; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))


@contextmanager
def small_pages() -> Iterator[None]:
    """Arrays allocated inside take ordinary 4 KiB pages, not numpy's 2 MiB ("huge") ones.

    numpy asks the kernel for huge pages on every array of 4 MiB or more (``madvise``), so the first
    write anywhere in a 2 MiB stretch makes all of it resident. An array filled a column at a time,
    its columns in a scattered order, as the trajectory's table is while the plant's log is freed
    into it, is then resident almost whole long before it is full: the reference house's year ended
    ≈ 20 MB higher than the table itself needs."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage  # numpy ≥ 2
    except ImportError:  # pragma: no cover - numpy 1.x
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            yield
            return
    before = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(before)

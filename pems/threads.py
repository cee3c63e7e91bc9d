"""How many threads the numerical libraries under PEMS may use.

PEMS' solvers are single-threaded by design: HiGHS' simplex on small LPs, IPOPT with MUMPS on
sparse KKT systems, 35×35 matrix products in the plant and the estimator. Left at their defaults,
the OpenMP and BLAS runtimes underneath start a thread per core that spins between calls: a day of
MPC measured 109 s of system time against 14 s with one thread, at the same wall time. That core
belongs to the user, to a sweep's other worker or to the live loop. So the ``pems`` command limits
every runtime to one thread unless ``PEMS_THREADS`` says otherwise.
"""

from __future__ import annotations

import os

#: The environment variables the OpenMP and BLAS runtimes read when they are loaded.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_threads(n: int | None = None) -> int:
    """Limit the numerical runtimes to ``n`` threads (default: ``$PEMS_THREADS`` or 1).

    Runtimes not loaded yet read the environment when they are; those already loaded (numpy's
    BLAS, an OpenMP runtime) are limited through threadpoolctl. Returns the limit applied.
    """
    if n is None:
        n = int(os.environ.get("PEMS_THREADS", "1") or 1)
    n = max(1, int(n))
    for var in THREAD_VARIABLES:
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    return n

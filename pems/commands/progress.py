"""Progress on stderr for the long-running commands (stdout keeps the results).

Bars and spinners are drawn only on a terminal: where stderr is a file or a pipe (a log, a test) the
command prints its results and nothing else, not even a blank line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any


def stderr_console() -> Any | None:
    """A rich console on stderr where stderr is a terminal, else ``None``."""
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal else None


def progress_bar(description: str, unit: str = "steps") -> tuple[AbstractContextManager, Callable[[int, int], None]]:
    """A transient progress bar (done, per second, time left) on stderr.

    Parameters
    ----------
    description
        What is running, shown before the bar.
    unit
        What is counted.

    Returns
    -------
    tuple
        The bar, to be used as a context manager, and ``update(done, total)`` to call as work ends
        (both do nothing where stderr is not a terminal).
    """
    console = stderr_console()
    if console is None:
        return nullcontext(), lambda done, total: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn(unit), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                    console=console, transient=True)
    task = prog.add_task(description, total=None, rate="")
    t0 = time.perf_counter()
    every = 10

    def update(done: int, total: int) -> None:
        if done == 1 or done == total or done % every == 0:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            prog.update(task, completed=done, total=total, rate=f"{rate:,.1f} {unit}/s")

    return prog, update


def status(text: str) -> AbstractContextManager:
    """A spinner with ``text`` on stderr while a step without a count runs (nothing off a terminal)."""
    console = stderr_console()
    return nullcontext() if console is None else console.status(text)

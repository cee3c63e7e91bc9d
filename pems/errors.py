"""The errors a user meets, and the command line's exit codes.

Every problem a user can fix (a broken TOML file, an unknown room, a value out of range, a missing
CSV column) is raised as :class:`InputError`, naming the file, the key and what was expected. The
command line prints it on one line per problem and exits with code 2, without a traceback. A
service that does not answer or refuses (InfluxDB, the MQTT broker, a Modbus device) raises a
:class:`ServiceError`: one line, exit code 3. :class:`ExitCode` lists every code the command uses
(docs/reference/exit-codes.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """What the ``pems`` command's exit code means (one meaning per code)."""

    OK = 0  #: done
    FAILED = 1  #: an internal error, with its traceback: a bug to report
    BAD_INPUT = 2  #: bad input: one line per problem naming the file or flag and the key
    SERVICE = 3  #: a service (InfluxDB, MQTT broker, Modbus device) did not answer or refused
    DRIFT = 4  #: ``pems models drift``: the model has drifted, retrain due
    TASKS_FAILED = 5  #: ``pems sweep``: some tasks failed (each recorded with its error); the others ran
    INTERRUPTED = 130  #: Ctrl-C (SIGINT) before the work was done


@dataclass(frozen=True)
class Problem:
    """One bad value: where it is and what was expected."""

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        return f"{where}: {self.message}"


class InputError(Exception):
    """Bad user input (file, key, expectation); the CLI exits with code 2."""

    def __init__(self, source: str | Path, key: str, message: str) -> None:
        self.problems: list[Problem] = [Problem(str(source), key, message)]
        super().__init__(str(self.problems[0]))

    @classmethod
    def many(cls, problems: Iterable[Problem]) -> InputError:
        """Collect several problems of one file into one error."""
        problems = list(problems)
        err = cls(problems[0].source, problems[0].key, problems[0].message)
        err.problems = problems
        err.args = ("\n".join(str(p) for p in problems),)
        return err

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class ServiceError(Exception):
    """A service PEMS talks to did not answer, was too slow or refused (the input was fine); the
    CLI prints the message on one line and exits with code 3. The message never holds a password."""

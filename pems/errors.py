"""One error type for bad user input.

Every problem a user can fix (a broken TOML file, an unknown room, a value out of range, a missing
CSV column) is raised as :class:`InputError`, naming the file, the key and what was expected. The
command line prints it on one line per problem and exits with code 2, without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


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

"""Keep the libraries' chatter off a user's terminal.

The command prints its results on stdout and one line per problem on stderr; warnings of the
libraries underneath (matplotlib's, numpy's ``RuntimeWarning`` on an all-empty slice, pandas'
format guesses) mean nothing to a user and are silenced here, once, when a command starts. The
tests keep them (pytest installs its own filters).
"""

from __future__ import annotations

import warnings


def quiet_libraries() -> None:
    """Silence library warnings for this process (``-W`` or ``PYTHONWARNINGS`` still win when given)."""
    import sys

    if sys.warnoptions:
        return
    warnings.simplefilter("ignore")

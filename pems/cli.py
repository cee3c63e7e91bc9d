"""The ``pems`` command line: the parser of every sub-command (:mod:`pems.commands`) and what each
outcome means as an exit code (:class:`~pems.errors.ExitCode`).

Bad input ends with one line per problem naming the file or flag and the key, and exit code 2; a
service that does not answer ends with one line and exit code 3; no traceback for either.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pems import __version__
from pems.errors import ExitCode, InputError, ServiceError


def versions() -> list[tuple[str, str]]:
    """PEMS's version and those of what its numbers depend on: the solvers (CasADi, IPOPT as CasADi
    bundles it, HiGHS) and the numerical libraries; "not installed" where one is missing."""
    import glob
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    out = [("pems", __version__), ("python", platform.python_version())]
    out += [(n, pkg(n)) for n in ("casadi", "highspy", "do-mpc", "numpy", "scipy", "pandas", "pvlib",
                                  "scikit-learn", "pymodbus", "paho-mqtt", "influxdb-client")]
    try:  # IPOPT is a shared library inside CasADi's wheel: its file name carries the version
        import casadi

        libs = glob.glob(os.path.join(os.path.dirname(casadi.__file__), "libipopt.so.*.*"))
        ipopt = max((p.rsplit("libipopt.so.", 1)[1] for p in libs), default="bundled with casadi")
    except ImportError:
        ipopt = "not installed"
    out.insert(3, ("ipopt", ipopt))
    return out


class _Versions(argparse.Action):
    """``--version``: every version on its own line, then exit."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                  option_string: str | None = None) -> None:
        print("\n".join(f"{name} {v}" for name, v in versions()))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``pems`` parser with every sub-command."""
    from pems.commands import forecast, history, live, models, replay, serve, simulate, sweep

    p = argparse.ArgumentParser(prog="pems", description="Physics-first digital twin of a home energy system.",
                                epilog="Exit codes: 0 done, 1 internal error (a bug: please report it), 2 bad "
                                       "input, 3 a service did not answer, 4 drift found (models drift), "
                                       "130 interrupted; see docs/reference/exit-codes.md.")
    p.add_argument("--version", action=_Versions, nargs=0, help="the versions of pems, its solvers and libraries")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="the least level logged on stderr (default: warning; info for pems live --config)")
    p.add_argument("--log-json", action="store_true",
                   help="log one JSON object a line (time, level, logger, message) for journald or a log shipper")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    simulate.add_parsers(sub)
    history.add_parsers(sub)
    models.add_parsers(sub)
    forecast.add_parsers(sub)
    live.add_parsers(sub)
    serve.add_parsers(sub)
    sweep.add_parsers(sub)
    replay.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``pems`` command; return its exit code."""
    from pems.memory import return_freed_memory
    from pems.threads import limit_threads
    from pems.quiet import command_logging, quiet_libraries

    from pems.paths import library_caches

    limit_threads()  # before the solvers load: their runtimes read the limit then
    return_freed_memory()  # a year's arrays, once freed, go back to the system (pems.memory)
    library_caches()  # before matplotlib loads: it picks its folder then
    quiet_libraries()
    command_logging()
    from pems.commands.arguments import forget_outputs, remove_unused_folders, written_output

    args = build_parser().parse_args(argv)
    from pems.quiet import ask

    ask(args.log_level, args.log_json)
    command_logging()
    forget_outputs()
    try:
        return int(args.func(args))
    except InputError as exc:
        for p in exc.problems:
            print(f"pems: error: {p}", file=sys.stderr)
        remove_unused_folders()
        return ExitCode.BAD_INPUT
    except ServiceError as exc:  # a data source or broker that is down or refuses: one line, no traceback
        print(f"pems: error: {exc}", file=sys.stderr)
        remove_unused_folders()
        return ExitCode.SERVICE
    except KeyboardInterrupt:
        print("pems: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # the reader went away (`pems list | head`): what it wanted was written
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit must not fail again
        return ExitCode.OK
    except OSError as exc:  # the disk refused an output (full, gone, read-only): one line naming it
        out = written_output(exc.filename, str(exc))
        if out is None:
            raise  # not an output of this command: a bug, with its traceback
        where = exc.filename if exc.filename is not None else out[0]
        print(f"pems: error: {where}: {out[1]}: cannot be written ({exc.strerror or exc})", file=sys.stderr)
        remove_unused_folders()
        return ExitCode.BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

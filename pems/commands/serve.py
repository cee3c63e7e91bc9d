"""``pems serve DIR``: browse the results under a folder in a web browser."""

from __future__ import annotations

import argparse
from pathlib import Path

from pems.commands.arguments import CLI
from pems.errors import InputError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``pems`` sub-commands."""
    s = sub.add_parser("serve", help="browse results (benches, runs, calibrations, backtests, model cards) "
                                     "in a web browser")
    s.add_argument("folder", metavar="DIR", help="a folder of PEMS outputs (searched four levels down)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve ``DIR`` until interrupted."""
    folder = Path(args.folder)
    if not folder.is_dir():
        raise InputError(CLI, "DIR", f"{folder} is not a folder")
    if not 0 < args.port < 65536:
        raise InputError(CLI, "--port", f"{args.port}: expected 1–65535")
    import uvicorn

    from pems.web.app import results_app

    print(f"serving {folder.resolve()} on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(results_app(folder), host=args.host, port=args.port, log_level="warning")
    return 0

"""Fixtures of the web tests: the live tests' broker and emulated day (one definition, in tests/live)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# tests/live/conftest.py under its own name (two modules named conftest cannot both be imported as such)
_spec = importlib.util.spec_from_file_location("live_fixtures", Path(__file__).parents[1] / "live" / "conftest.py")
_live = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_live)
broker, prep = _live.broker, _live.prep

"""The project's own reference pages: generated from the code, complete, and linked.

The key tables of ``docs/reference``, the history columns, the KPIs and the README's built-in data
are rendered by :mod:`pems.docs`; these tests render them again and compare, so a schema, a
registry or a KPI changed without regenerating the pages fails here with the command to run.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pems import docs

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))


def test_generated_blocks_match_the_code() -> None:
    stale = [str(path.relative_to(ROOT)) for path, (old, new) in docs.rendered(ROOT).items() if old != new]
    assert not stale, (f"{', '.join(stale)}: out of date with the code; run `{docs.COMMAND}` and commit "
                       "the result")


def test_every_key_of_every_file_is_described() -> None:
    renderer = docs._Renderer()
    undescribed = [f"{p.page}: {s.header or 'top level'} {r.key}"
                   for p in docs.file_pages() for s in renderer.sections(p) for r in s.rows if not r.description]
    assert not undescribed, ("keys without a description (give the field an attribute docstring, with its "
                             f"unit in [brackets] at the end): {undescribed}")


def test_nested_tables_appear_with_their_dotted_names() -> None:
    scenario = (ROOT / "docs/reference/scenario.md").read_text(encoding="utf-8")
    for header in ("[comfort]", "[comfort.rooms.<room>]", "[mpc]", "[forecast]", "[tariff]", "[[truth.gains]]"):
        assert f"### `{header}`" in scenario, header
    house = (ROOT / "docs/reference/house.md").read_text(encoding="utf-8")
    for header in ("[site]", "[[rooms]]", "[rooms.params]", "[[rooms.windows]]", "[[pv]]", "[battery]"):
        assert f"### `{header}`" in house, header
    live = (ROOT / "docs/reference/live-config.md").read_text(encoding="utf-8")
    for header in ("[mqtt.tls]", "[forecast.tariff]", "[safety]"):
        assert f"### `{header}`" in live, header


def test_every_kpi_computed_is_defined() -> None:
    from pems.scenarios.kpis import KPIS, compute_kpis

    index = pd.date_range("2024-01-01", periods=4, freq="15min", tz="UTC")
    one = np.ones(len(index))
    traj = pd.DataFrame({"P_grid": 100 * one, "P_pv": one, "P_load": one, "P_bat": -one, "P_loss": one,
                         "price_import": one, "price_export": one, "compute_s": one, "T_room__a": 20 * one,
                         "P_heat__a": one, "T_set_low__a": 19 * one, "T_set_high__a": 23 * one}, index=index)
    assert list(compute_kpis(traj, ["a"], 5.0)) == list(KPIS)


def test_every_history_column_kind_is_described() -> None:
    from pems.calibration.history import COLUMNS, RANGES

    assert set(COLUMNS) == set(RANGES)


def _command_list() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Command line"):]
    return section[section.index("```"):section.index("```", section.index("```") + 3)]


def test_the_readme_lists_every_command() -> None:
    from pems.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    block = _command_list()
    missing = [name for name in sub.choices if f"pems {name}" not in block]
    assert not missing, f"README.md, '## Command line': no line for pems {', '.join(missing)}"


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_docs_stand_on_their_own(page: Path) -> None:
    """No page points at a file outside the repository (DESIGN.md is not part of it), every
    relative link resolves, and every anchor into a reference page exists."""
    text = page.read_text(encoding="utf-8")
    assert "DESIGN.md" not in text
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, frag = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(target)
        elif frag and dest.suffix == ".md" and "reference" in dest.parts:
            if f'<a id="{frag}"></a>' not in dest.read_text(encoding="utf-8") and not _heading_slug(dest, frag):
                broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def _heading_slug(page: Path, frag: str) -> bool:
    """Whether a markdown heading of ``page`` has the GitHub slug ``frag``."""
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            if slug == frag:
                return True
    return False


def test_an_unknown_key_points_at_its_reference_page() -> None:
    from pems.tomlio import REFERENCE_PAGES

    for page in docs.file_pages():
        assert REFERENCE_PAGES[page.model.__name__] == f"docs/reference/{page.page}"
        assert (ROOT / REFERENCE_PAGES[page.model.__name__]).is_file()

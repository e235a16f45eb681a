"""Every registered method has its page in docs/methods/, and each page's options table is
exactly what the method's typed config says (bench/docs.py generates it)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.docs import DOCS, MARKED, options_table, render
from methods import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_has_a_page_listing_all_its_options(name):
    page = DOCS / f"{name}.md"
    assert page.is_file(), f"{name}: write docs/methods/{name}.md (see docs/README.md)"
    text = page.read_text()
    tables = {m.group(2): m.group(3) for m in MARKED.finditer(text)}
    assert name in tables, f"{page}: mark the options table with <!-- options:{name} --> ... <!-- options:end -->"
    assert tables[name] == options_table(name), f"{page}: options table out of date; run python -m bench.docs"


def test_rendering_fills_a_marked_table_from_the_config():
    text = render("x\n<!-- options:pcns -->\nstale\n<!-- options:end -->\ny")
    assert "stale" not in text and "| `method.maxpool` | `'skip'` |" in text and text.endswith("y")


def test_docs_links_point_at_files_that_exist():
    """Relative links in README.md and docs/ resolve."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)}: broken link {target}"


def test_every_config_file_is_listed_in_the_configs_page():
    """docs/configs.md names every file under configs/, so a newcomer finds what each is for."""
    page = (ROOT / "docs" / "configs.md").read_text()
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "configs").rglob("*.yaml"))
               if f"`{p.relative_to(ROOT)}`" not in page]
    assert not missing, f"docs/configs.md does not list {missing}"

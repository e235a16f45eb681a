"""The options tables of docs/methods/*.md, generated from the methods' typed configs.

A page marks its table with `<!-- options:NAME -->` ... `<!-- options:end -->` (NAME: the
registered method whose `Config` it lists). `python -m bench.docs` rewrites every marked
table from the code; tests/test_docs.py fails when a page's table differs from what this
module generates, so a new or renamed option cannot go undocumented.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "methods"
MARKED = re.compile(r"(<!-- options:(\w+) -->\n)(.*?)(<!-- options:end -->)", re.S)


def options_table(method: str) -> str:
    """Markdown table of `method`'s options: key, default, help (as `python -m bench methods -v`)."""
    from bench.config import describe
    from methods import get_method
    config = get_method(method).Config
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for key, default, help_ in describe(config, "method."):
        if key == "method.name" or (key == "method.target_macs" and "macs" not in getattr(config, "target_kinds", ())):
            continue                                      # a target kind the method refuses
        rows.append(f"| `{key}` | `{default}` | {help_.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    """`text` with every marked options table regenerated."""
    return MARKED.sub(lambda m: m.group(1) + options_table(m.group(2)) + m.group(4), text)


def main() -> int:
    changed = 0
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        new = render(text)
        if new != text:
            page.write_text(new)
            changed += 1
            print(f"updated {page}")
    print(f"{changed} page(s) updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())

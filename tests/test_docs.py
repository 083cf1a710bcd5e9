"""docs/architecture.md stays true: every module it names exists, and it names every module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_architecture_page_names_every_module_and_only_real_ones() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"shardroute/[\w/]+\.py", text))
    real = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "shardroute").rglob("*.py")
        if "pb" not in p.parts and p.name != "__init__.py"
    }
    assert sorted(named - real) == [], "named in docs/architecture.md but gone"
    assert sorted(real - named) == [], "in the package but not in docs/architecture.md"

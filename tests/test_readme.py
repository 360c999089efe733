"""The README stays true: every environment variable is documented, with its real default."""

from __future__ import annotations

import re
from pathlib import Path

from callbox.config import environment_variables

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_every_environment_variable_is_in_the_readme_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", README, flags=re.MULTILINE))
    documented = {name: default.strip() for name, default in rows.items()}
    actual = {var.name: var.default for var in environment_variables()}
    assert documented == actual

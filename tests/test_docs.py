"""The docs a user reads point at files of this repository, and those files are there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
READMES = [ROOT / "README.md", *sorted((ROOT / "examples").glob("*/README.md"))]

# A relative link, [text](path), or a path in backquotes that starts from a parent folder
# (other paths in backquotes are files corral or the user writes: results, sockets...).
LINK = re.compile(r"\]\((?!https?:|#)([^)#\s]+)")
PATH = re.compile(r"`(\.\./[^`\s]+)`")


@pytest.mark.parametrize("readme", READMES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_file_a_readme_names_is_in_the_repository(readme):
    named = LINK.findall(readme.read_text()) + PATH.findall(readme.read_text())
    outside = []
    for name in named:
        path = (readme.parent / name).resolve()
        if not path.is_relative_to(ROOT.resolve()) or not path.exists():
            outside.append(name)
    assert not outside, f"{readme.relative_to(ROOT)} names files not in the repository: {outside}"

"""Imports run one way (docs/architecture.md): the code that runs in children never imports
the manager's, the settings import nothing of corral's runtime, and the modules every
package may use import nothing of corral's but each other.

Read from the sources (every `import` and `from ... import`, relative ones resolved), so a
new module is held to the rule without being listed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import corral

SOURCES = Path(corral.__file__).parent

# The modules every package may use: they import nothing of corral's but each other.
SHARED = {"corral.addresses", "corral.errors", "corral.identity", "corral.units", "corral.words"}

# What each part may import of corral (a package, or a shared module), besides itself.
ALLOWED = {
    "corral.child": {
        *SHARED,
        "corral",  # the package root: posix, exit_codes and the like as `from corral import`
        "corral.exit_codes",
        "corral.ipc",
        "corral.logformat",
        "corral.posix",
        "corral.settings",
    },
    "corral.settings": SHARED,
    "corral.ipc": SHARED,
    **{name: SHARED for name in SHARED},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCES.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> set[str]:
    """The corral modules `path` imports (for `from corral import x`: `corral.x` if that is a
    module, else `corral`)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (SOURCES.parent / candidate.replace(".", "/")).with_suffix(".py")
                package_dir = SOURCES.parent / candidate.replace(".", "/")
                found.add(candidate if is_module.exists() or package_dir.is_dir() else base)
    return {name for name in found if name == "corral" or name.startswith("corral.")}


def _allowed(importer: str, imported: str, allowed: set[str]) -> bool:
    if imported == importer or imported.startswith(importer + "."):
        return True  # itself, its own submodules
    # "corral" itself allows the package root's own names (`from corral import __version__`),
    # not every module under it.
    return any(
        imported == name or (name != "corral" and imported.startswith(name + "."))
        for name in allowed
    )


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_run_one_way(part: str) -> None:
    root = SOURCES.parent / part.replace(".", "/")
    paths = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    assert paths and all(path.exists() for path in paths), part
    wrong = [
        f"{_module_name(path)} imports {name}"
        for path in paths
        for name in sorted(_imported(path))
        if not _allowed(part, name, ALLOWED[part])
    ]
    assert not wrong, wrong


def test_the_rule_sees_a_wrong_import() -> None:
    """The reader of imports finds what the rule must refuse (so the test above can fail)."""
    names = _imported(SOURCES / "child" / "worker.py")
    assert "corral.ipc.messages" in names or "corral.ipc" in names, names
    assert not _allowed("corral.child", "corral.manager.supervisor", ALLOWED["corral.child"])
    assert not _allowed("corral.settings", "corral.posix", ALLOWED["corral.settings"])

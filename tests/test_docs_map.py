"""docs/architecture.md names only things that exist: every `diffaudit…` name imports."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def resolve(name: str):
    """Import the longest module prefix of a dotted name, then walk attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def test_every_name_on_the_map_imports():
    names = sorted(set(re.findall(r"`(diffaudit(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", DOC.read_text())))
    assert len(names) > 30
    missing = []
    for n in names:
        try:
            resolve(n)
        except (ImportError, AttributeError) as e:
            missing.append(f"{n}: {e}")
    assert not missing, missing


def test_every_path_on_the_map_exists():
    root = DOC.parents[1]
    paths = set(re.findall(r"`((?:src|tests|docs)/[^`]+)`", DOC.read_text()))
    assert paths and all((root / p).exists() for p in paths), [p for p in paths if not (root / p).exists()]


def test_import_diffaudit_loads_no_cli():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import diffaudit, sys; print('diffaudit.cli' in sys.modules, "
                          "'typer' in sys.modules)"], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]

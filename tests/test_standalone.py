"""The repository stands on its own: nothing in it reads or points to a folder beside the clone.

A user clones the repository and nothing else, so a path out of the checkout, or a pointer to a design
page that only the project's authors have, is a test or a doc that breaks for them. docs/architecture.md
is the description the code points to.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What would reach outside the checkout, or cite a page a user does not have.
FORBIDDEN = [
    (re.compile(r"\.\./shared"), "a path to a folder beside the clone"),
    (re.compile(r"""parents?\[\d\]\s*/\s*["']shared["']|parent\s*/\s*["']shared["']"""), "a path out of the checkout"),
    (re.compile(r"shared\s+folder"), "a pointer to a folder users do not have"),
    (re.compile(r"DESIGN\.md"), "a design page users do not have (point to docs/architecture.md)"),
    (
        re.compile(r"\b[Ii]ssue \d+\b"),
        "an issue number users cannot read",
    ),
]


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing to list")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_nothing_points_outside_the_repository():
    this = Path(__file__).resolve()
    found = []
    for path in tracked_files():
        if path.resolve() == this or not path.is_file() or path.suffix in {".json", ".png"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for pattern, why in FORBIDDEN:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {why}: {match.group(0)!r}")
    assert not found, "\n".join(found)


def test_fixtures_name_their_source():
    """Every payload under tests/fixtures is listed in its README, with where it comes from."""
    fixtures = ROOT / "tests" / "fixtures"
    readme = (fixtures / "README.md").read_text()
    files = sorted(p.relative_to(fixtures).as_posix() for p in fixtures.rglob("*.json"))
    assert files, "no fixtures found"
    missing = [name for name in files if f"| {name} |" not in readme]
    assert not missing, f"fixtures not listed in tests/fixtures/README.md: {missing}"

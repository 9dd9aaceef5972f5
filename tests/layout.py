"""Which source module has its test file, and which test file names no module.

The convention: ``src/advlab/<pkg>/<module>.py`` is tested in ``tests/<pkg>/test_<module>.py``.
Run from the repository root: ``python tests/layout.py``; it prints the modules without a test
file of their name and the test files matching no module (the deliberate exceptions of
tests/README.md among them), and exits 0. It is a report, not a test.
"""
from __future__ import annotations

from pathlib import Path


def expected_test(module: Path, src: Path) -> str:
    """tests/<pkg>/test_<module>.py for src/advlab/<pkg>/<module>.py."""
    parts = module.relative_to(src / "advlab").with_suffix("").parts
    return "/".join(["tests", *parts[:-1], f"test_{parts[-1]}.py"])


def main(root: Path = Path(".")) -> None:
    src = root / "src"
    modules = sorted(p for p in (src / "advlab").rglob("*.py") if p.name != "__init__.py")
    expected = {expected_test(m, src): m for m in modules}
    tests = sorted(str(p.relative_to(root)) for p in (root / "tests").rglob("test_*.py"))
    missing = [m for t, m in expected.items() if t not in tests]
    orphans = [t for t in tests if t not in expected]
    print(f"{len(modules)} modules, {len(tests)} test files")
    print(f"\nmodules without a test file of their name ({len(missing)}):")
    for m in missing:
        print("  ", m.relative_to(src))
    print(f"\ntest files matching no module ({len(orphans)}):")
    for t in orphans:
        print("  ", t)


if __name__ == "__main__":
    main()

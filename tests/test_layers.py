"""One floor per role: no package imports from a package above it (docs/architecture.md).

cluster/ is the ground floor every role builds on; learner/ and rollout/ stand on it side by side
and know nothing of each other; curriculum/ drives both; launch/ and benchmarks/ are the commands
on top. Read from the source (every import statement, also those inside functions), so that a
lazy import that runs upward fails here too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What each package may import from, besides itself.
BELOW = {
    "cluster": set(),
    "learner": {"cluster"},
    "rollout": {"cluster"},
    "curriculum": {"cluster", "learner", "rollout"},
    "launch": {"cluster", "learner", "rollout", "curriculum"},
    "benchmarks": {"cluster", "learner", "rollout", "curriculum", "launch"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def test_no_package_imports_from_above_or_beside_itself():
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {package}"
        for own, allowed in BELOW.items()
        for path in sorted((ROOT / own).rglob("*.py"))
        for package, line in sorted(imported_packages(path))
        if package in BELOW and package != own and package not in allowed
    ]
    assert not upward, "imports that run upward or sideways:\n" + "\n".join(upward)


def test_the_check_sees_a_lazy_import(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("def f():\n    from curriculum.controller import Controller\n    import learner.grpo\n")
    assert imported_packages(source) == {("curriculum", 2), ("learner", 3)}

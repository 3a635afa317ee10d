"""The import graph stays a layering: nothing imports the CLI, and first-party modules have no import cycle
(module level or inside functions), so each package can be read, tested and reused on its own."""

from __future__ import annotations

import ast
from pathlib import Path

from flywheel.settings import REPO_ROOT

PACKAGES = ("flywheel", "flink_jobs", "feature_repo", "training", "validation", "benchmarks", "dags", "tests")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (REPO_ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = path
    return mods


def _imports(path: Path, known: set[str]) -> set[str]:
    """First-party modules a file imports anywhere in it, resolved to the longest known module name."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {t for t in _imports(p, set(mods)) if t != m and not m.startswith(t + ".")} for m, p in mods.items()}


def test_nothing_outside_the_cli_imports_it():
    allowed = ("flywheel.cli", "tests.unit.test_cli")
    offenders = {
        m: sorted(t for t in deps if t == "flywheel.cli" or t.startswith("flywheel.cli."))
        for m, deps in graph().items()
        if not m.startswith(allowed)
    }
    assert not {m: d for m, d in offenders.items() if d}, "import the library module the CLI calls instead"


def test_clients_do_not_reach_into_the_stack_supervisor():
    """Clients of services work against any deployment; only the local stack knows how services are run."""
    offenders = {m: sorted(t for t in deps if t.startswith("flywheel.stack"))
                 for m, deps in graph().items() if m.startswith("flywheel.clients")}  # fmt: skip
    assert not {m: d for m, d in offenders.items() if d}


def test_first_party_imports_have_no_cycle():
    g = {m: deps for m, deps in graph().items() if not m.startswith("tests")}
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(g.get(m, ())):
            if state.get(t) == "open":
                cycles.append(path[path.index(t) :] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_the_check_sees_a_cycle_and_a_cli_import(tmp_path, monkeypatch):
    """The two checks above can fail: a planted cycle and a planted CLI import are found."""
    for name, body in {"a": "from flywheel.cli import app\nimport flywheel.b\n", "b": "import flywheel.a\n"}.items():
        (tmp_path / f"{name}.py").write_text(body)
    known = {"flywheel.a", "flywheel.b", "flywheel.cli"}
    assert _imports(tmp_path / "a.py", known) == {"flywheel.cli", "flywheel.b"}
    assert _imports(tmp_path / "b.py", known) == {"flywheel.a"}

"""The house rules, read from the source: no import cycle between the suite's modules,
and no function over 60 lines outside the benchmarks."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("suite", "protocols", "hydra_plugins")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _top_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of ours that ``name`` imports when it is imported: module-level imports
    only (not those inside functions, nor under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in known)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    out.add(full if full in known else base)

    visit(tree.body)
    return {m for m in out if m in known and m != name}


def test_no_import_cycle_between_the_suites_modules():
    modules = _modules()
    known = set(modules)
    graph = {name: _top_level_imports(path, name, known) for name, path in modules.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            walk(start, [start])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_function_over_60_lines_outside_the_benchmarks():
    long = []
    for name, path in _modules().items():
        if name.startswith("suite.bench"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_every_key_a_run_writes_in_its_summary_is_typed(tmp_path):
    """``suite.record.Summary`` is the summary's one type: a real run's summary.json (and a
    failed run's, and a stopped one's) holds no key it does not declare."""
    import signal

    from helpers import tiny_config

    from suite.launch import execute, failed_summary, stopped_summary
    from suite.record import STATUSES, RunDir, Summary
    from suite.spawn import Outcome

    declared = set(Summary.__annotations__)
    cfg = tiny_config("single", workers=1, results_dir=str(tmp_path))
    returned = execute(cfg)
    written = RunDir(returned["run_dir"]).read_summary()
    assert written is not None and written["status"] in STATUSES
    assert set(written) <= declared, set(written) - declared
    assert set(returned) <= declared, set(returned) - declared
    failed = failed_summary(cfg, "a reason", wall_s=1.0)
    stopped = stopped_summary(cfg, RunDir(tmp_path / "x"), signal.SIGTERM, Outcome())
    assert (set(failed) | set(stopped)) <= declared

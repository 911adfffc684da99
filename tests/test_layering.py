"""The package's import structure: no import cycle, and the runner on top.

The runner (`pipeline`) owns the stages: stages and task code never import it, so a stage can be
read, tested and reused without the runner. Every import counts, module-level or inside a
function: a cycle hidden in a function is still a cycle of the design."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "coordchannels"
# The entry points (each a command of its own: the app, the recomputation of committed tables)
# and the app's sweep callback (a study of replications: coordchannels.sweep) may import the
# runner; nothing else may.
ENTRY_POINTS = {
    "coordchannels.__main__",
    "coordchannels.sweep",
    "coordchannels.stats.restats",
}
# The bottom layer: data formats, settings, models and layers, statistics' arithmetic. It imports
# nothing above it (no stage, task, trainer or runner).
CORE = {
    "coordchannels.io",
    "coordchannels.settings",
    "coordchannels.components",
    "coordchannels.channels",
    "coordchannels.heads",
    "coordchannels.models",
    "coordchannels.coordgate",
    "coordchannels.coordgate.layer",
    "coordchannels.folds",
    "coordchannels.taskdata",
    "coordchannels.stats.inference",
    "coordchannels.environment",
    "coordchannels.entry",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The coordchannels modules a file imports (absolute and relative, anywhere in the file)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("coordchannels")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("coordchannels"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in imports(p) if i in files and i != m} for m, p in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_there_is_no_import_cycle_in_the_package():
    found = cycles(graph())
    assert not found, f"import cycles: {found}"


def test_only_entry_points_import_the_runner():
    importers = sorted(m for m, deps in graph().items() if "coordchannels.pipeline" in deps)
    assert set(importers) <= ENTRY_POINTS, f"modules importing the runner: {importers}"


def test_the_core_imports_nothing_above_it():
    edges = graph()
    upward = {m: sorted(d - CORE) for m, d in edges.items() if m in CORE and d - CORE}
    assert not upward, f"core modules importing stages, tasks, the trainer or the runner: {upward}"


def test_the_stage_contract_does_not_import_the_runner_or_the_trainer():
    deps = graph()["coordchannels.stages"]
    assert not {d for d in deps if d == "coordchannels.pipeline" or d.startswith("coordchannels.train")}

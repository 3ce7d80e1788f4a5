"""The package's import graph has no cycle: every module imports only modules below it (function-level imports too)."""

import ast
import pathlib

import sb3_iql

PACKAGE = pathlib.Path(sb3_iql.__file__).parent


def _module_names() -> dict[str, pathlib.Path]:
    """:return: dotted name -> file, for every module of the package (a package is its ``__init__.py``)"""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except under ``if TYPE_CHECKING:`` (never run)."""
    imports: list[ast.Import | ast.ImportFrom] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            imports.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return imports


def import_graph() -> dict[str, set[str]]:
    """:return: module -> the package modules it imports (``from a import b`` imports the module ``a.b`` if there is one)"""
    modules = _module_names()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative import
                    anchor = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{alias.name}" for alias in node.names]
            targets.update(target for target in map(resolve, names) if target is not None and target != module)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """:return: one cycle as a path ``[a, b, ..., a]``, or None"""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            cycle = visit(target, [*path, module])
            if cycle is not None:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert {"sb3_iql.iql.iql", "sb3_iql.presets", "sb3_iql.callbacks"} <= set(graph)
    assert "sb3_iql.presets" in graph["sb3_iql.iql.iql"]  # IQL.from_preset builds from the presets' data
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)

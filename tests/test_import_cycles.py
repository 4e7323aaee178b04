"""memosctl's modules and the servicers' conversions import one another in layers, never in a circle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"


def _module_name(path: Path, base: Path) -> str:
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph(paths: list[Path], base: Path) -> dict[str, set[str]]:
    """Each module's imports among `paths`, those inside functions included (a deferred import that closes a
    circle is a circle all the same). `from P import x` counts as importing P.x when P.x is one of the modules,
    else as importing P itself."""
    names = {_module_name(p, base) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        here = _module_name(path, base)
        package = here if path.name == "__init__.py" else here.rpartition(".")[0]
        edges = graph.setdefault(here, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in names)
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    source = f"{anchor}.{source}" if source else anchor
                for alias in node.names:
                    if f"{source}.{alias.name}" in names:
                        edges.add(f"{source}.{alias.name}")
                    elif source in names:
                        edges.add(source)
        edges.discard(here)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        path.append(name)
        for target in sorted(graph.get(name, ())):
            found = visit(target)
            if found:
                return found
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name)
        if found:
            return found
    return None


def test_the_memosctl_modules_import_one_another_without_a_circle():
    client = CLIENT / "memos_client"
    # Before the cli/ package: cli.py and cli_*.py beside the client, with _terminal.py.
    paths = sorted(p for p in {*client.glob("cli*.py"), *client.glob("cli/*.py"), client / "_terminal.py",
                               client / "unreachable.py"} if p.exists())
    graph = _graph(paths, CLIENT)
    assert "memos_client.cli" in graph and len(graph) >= 8
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_conversion_modules_import_one_another_without_a_circle():
    paths = sorted((ROOT / "memosd" / "server").glob("convert*.py"))
    graph = _graph(paths, ROOT)
    assert {"memosd.server.convert", "memosd.server.convert_tensor", "memosd.server.convert_parametric"} <= set(graph)
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)

"""The packages import in one direction, and no modules import each other.

Read from the source with ast (no module is imported): kernels know nothing of policies, the server
side or the tools; policies know kernels only; runtime code never imports the developer tools, but for
the CLI's `bench` subcommand, lazily. Imports inside functions count for the direction and for cycles
(apart from those at import time); imports under `if TYPE_CHECKING:` count for neither.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Top-level folders and the package each is installed as (pyproject's package-dir).
PACKAGES = {"lynx_sglang": "lynx_sglang", "policies": "lynx_sglang.policies", "kernels": "lynx_sglang.kernels",
            "tools": "lynx_sglang.tools"}  # fmt: skip
# What each layer may not import. The server side is lynx_sglang less the three packages below it.
FORBIDDEN = {
    "kernels": ("policies", "lynx_sglang", "tools", "sglang"),
    "policies": ("lynx_sglang", "tools", "sglang"),
    "lynx_sglang": ("tools",),
}
LAZY_TOOL_IMPORTS = {"lynx_sglang.cli"}  # `lynx-sglang bench` imports its benchmark when it runs


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> str:
    """kernels, policies, tools, lynx_sglang (the rest of ours), sglang, or '' (anything else)."""
    for folder in ("kernels", "policies", "tools"):
        if module == PACKAGES[folder] or module.startswith(PACKAGES[folder] + "."):
            return folder
    top = module.split(".")[0]
    return top if top in ("lynx_sglang", "sglang") else ""


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str, path: Path, known: dict) -> list[tuple[str, bool]]:
    """(imported module, at import time) for every import of `module`: `from x import y` names the
    module x.y where that is one of ours, else x."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, at_import) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    found.append((target if target in known else base, at_import))
            inside_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, at_import and not inside_function)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def graph():
    known = modules()
    return {module: imports(module, path, known) for module, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[frozenset]:
    """The strongly connected components of more than one module (Tarjan), and modules importing themselves."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while not component or member != node:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(frozenset(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def _edges(at_import_only: bool) -> dict[str, set[str]]:
    imported = graph()
    return {module: {target for target, at_import in targets
                     if (at_import or not at_import_only) and target in imported and target != module}
            for module, targets in imported.items()}  # fmt: skip


def test_no_modules_import_each_other_at_import_time():
    assert cycles(_edges(at_import_only=True)) == []


def test_no_modules_import_each_other_even_lazily():
    """An import inside a function breaks a cycle at import time, not in the design: two modules that
    need each other are one concept split in the wrong place."""
    found = cycles(_edges(at_import_only=False))
    assert found == [], f"import cycles: {[sorted(c) for c in found]}"


def test_packages_import_in_one_direction():
    wrong = []
    for module, targets in graph().items():
        for target, _ in targets:
            if layer(target) in FORBIDDEN.get(layer(module), ()):
                if layer(target) == "tools" and module in LAZY_TOOL_IMPORTS:
                    continue
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the direction kernels <- policies <- lynx_sglang <- tools:\n" + "\n".join(wrong)


def test_the_cli_imports_the_tools_only_inside_a_function():
    for target, at_import in graph()["lynx_sglang.cli"]:
        assert not (layer(target) == "tools" and at_import), target


def test_the_reader_resolves_imports_and_finds_cycles(tmp_path):
    """The checks above rest on this reader: relative imports resolve to our modules, an import inside a
    function is not one at import time, TYPE_CHECKING imports are skipped, and a cycle is found."""
    source = tmp_path / "a.py"
    source.write_text("from typing import TYPE_CHECKING\nfrom . import b\nfrom ..policies.base import Policy\n"
                      "if TYPE_CHECKING:\n    from . import c\n"
                      "def f():\n    from lynx_sglang.tools import bench\n")  # fmt: skip
    known = dict.fromkeys(["lynx_sglang.kernels.a", "lynx_sglang.kernels.b", "lynx_sglang.policies.base"])
    assert imports("lynx_sglang.kernels.a", source, known) == [
        ("typing", True), ("lynx_sglang.kernels.b", True), ("lynx_sglang.policies.base", True),
        ("lynx_sglang.tools", False),
    ]  # fmt: skip
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}) == [frozenset("abc"), frozenset("e")]
    assert layer("lynx_sglang.policies.base") == "policies" and layer("lynx_sglang.kernels") == "kernels"
    assert layer("lynx_sglang.server.routes") == "lynx_sglang" and layer("sglang.srt") == "sglang"

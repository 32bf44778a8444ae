"""The shape of resilfs/sets, read from its source (issue 15): a core with peer strategies.

Static checks, no imports of the modules under test: the runtime imports between the sets
modules form no circle; the strategies never import each other; no module reaches into
another's underscore names; sets name no concrete transport (they ask a client for a
capability instead), and import nothing above them.
"""
import ast
from pathlib import Path

import pytest

SETS = Path(__file__).resolve().parents[2] / "resilfs" / "sets"
STRATEGIES = {"mirror", "coded", "forward", "mapped", "resync", "scrub"}
TRANSPORT_CLASSES = {"ShmClient", "TcpClient", "RdmaClient", "StreamClient"}


def trees() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(SETS.glob("*.py"))}


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def runtime_imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module as written, names) of every import not under ``if TYPE_CHECKING``."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            if isinstance(child, ast.ImportFrom):
                base = "." * child.level + (child.module or "")
                found.append((base, [a.name for a in child.names]))
            elif isinstance(child, ast.Import):
                found.extend((a.name, []) for a in child.names)
            visit(child)

    visit(tree)
    return found


def sibling_imports(tree: ast.Module) -> set[str]:
    """The sets modules a module imports at run time."""
    out = set()
    for module, names in runtime_imports(tree):
        if module == ".":
            out.update(names)
        elif module.startswith(".") and not module.startswith(".."):
            out.add(module[1:].split(".")[0])
    return out


def test_no_import_circle_among_the_sets_modules():
    graph = {name: sibling_imports(tree) & set(trees()) for name, tree in trees().items()}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import circle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_strategies_never_import_each_other():
    for name in STRATEGIES:
        tree = trees()[name]
        others = (sibling_imports(tree) & STRATEGIES) - {name}
        assert not others, f"strategy {name} imports strategies {sorted(others)}"


def test_no_module_uses_another_modules_underscore_names():
    for name, tree in trees().items():
        own = {n.name for n in ast.walk(tree)
               if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
        own |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                and isinstance(n.ctx, ast.Store)}
        own |= {t.id for n in ast.walk(tree) if isinstance(n, ast.AnnAssign | ast.Assign)
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                if isinstance(t, ast.Name)}
        own |= {n.target.id for n in ast.walk(tree)
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        for module, names in runtime_imports(tree):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{name} imports {private} from {module}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                assert on_self or node.attr in own, \
                    f"{name}:{node.lineno} uses {ast.unparse(node)}, another module's name"


def test_sets_name_no_concrete_transport_and_nothing_above():
    for name, tree in trees().items():
        for module, names in runtime_imports(tree):
            assert not module.startswith("..transport.") or module == "..transport.base", \
                f"{name} imports {module}: ask the client for a capability instead"
            assert not (set(names) & TRANSPORT_CLASSES), f"{name} imports {names}"
            assert not module.startswith(("..fs", "..cli", "..appliance")), \
                f"{name} imports the higher layer {module}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Name | ast.Attribute):
                ident = node.id if isinstance(node, ast.Name) else node.attr
                assert ident not in TRANSPORT_CLASSES, \
                    f"{name}:{node.lineno} names the transport class {ident}"

"""The package's import graph, read statically (ast, nothing imported): one-way layers, no
import circles inside a package, and sets that ask transports for capabilities instead of
naming their classes.

Every import counts: at module level, inside functions and under ``TYPE_CHECKING``; each is
a dependency a reader has to follow.
"""
import ast
import pathlib
from collections.abc import Iterator

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "resilfs"

# The layers, lowest first (docs/design.md "Layers"). Each may import itself and the layers
# listed for it, nothing else: codec and protocol are peers (neither imports the other), so
# are appliance and sets.
BASE = "base"  # errors, scheme, auth, copy: used everywhere, use nothing of resilfs
ALLOWED: dict[str, set[str]] = {
    BASE: set(),
    "codec": {BASE},
    "protocol": {BASE},
    "transport": {BASE, "protocol"},
    "appliance": {BASE, "protocol", "codec", "transport"},
    "sets": {BASE, "codec", "transport"},
    "fs": {BASE, "codec", "transport", "sets"},
    "cli": {BASE, "codec", "protocol", "transport", "appliance", "sets", "fs"},
}
LAYER_OF_TOP_MODULE = {
    "resilfs": BASE,  # the package itself: its version
    "resilfs.errors": BASE,
    "resilfs.scheme": BASE,
    "resilfs.auth": BASE,
    "resilfs.copy": BASE,
    "resilfs.taskdump": BASE,  # imports only trio; any daemon can log its tasks
    "resilfs.protocol": "protocol",
    "resilfs.protocol_io": "protocol",
    "resilfs.__main__": "cli",
}
KERNELS = {"_copy", "_isal", "_stripe", "_xor"}  # compiled from ext/; they import nothing


def module_name(path: pathlib.Path) -> str:
    parts = ["resilfs", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    if module in LAYER_OF_TOP_MODULE:
        return LAYER_OF_TOP_MODULE[module]
    package = module.split(".")[1]
    if package in ALLOWED:
        return package
    if package in KERNELS:
        return BASE
    raise AssertionError(f"{module} is in no layer: add it to LAYER_OF_TOP_MODULE")


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imports(module: str) -> Iterator[tuple[str, int]]:
    """(imported resilfs module, line) for every import in ``module``."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    package = module if is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "resilfs":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "resilfs":
                continue
            for alias in node.names:  # ``from . import x`` imports the module x
                sub = f"{source}.{alias.name}"
                if sub in MODULES or source == "resilfs" and alias.name in KERNELS:
                    yield sub, node.lineno
                else:
                    yield source, node.lineno


def graph() -> dict[str, set[str]]:
    return {m: {target for target, _ in imports(m)} for m in MODULES}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        assert layer(module) in ALLOWED


def test_no_module_imports_a_higher_layer():
    wrong = []
    for module in MODULES:
        own = layer(module)
        for target, line in imports(module):
            other = layer(target)
            if other != own and other not in ALLOWED[own]:
                wrong.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} "
                             f"({own}) imports {target} ({other})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def cycles(package: str) -> list[list[str]]:
    """The import circles among the modules of one package (its own ``__init__`` excluded:
    it re-exports what its modules define)."""
    edges = {m: {t for t in targets if t.rpartition(".")[0] == package and t != package}
             for m, targets in graph().items()
             if m.rpartition(".")[0] == package and m != package}
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            circle = path[path.index(node):]
            if min(circle) == circle[0]:  # report each circle once, from its least name
                found.append(circle + [node])
            return
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, path + [node])

    for start in sorted(edges):
        visit(start, [])
        done.add(start)
    return found


PACKAGES = sorted({m for m in MODULES if is_package(m)})
@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle_inside_a_package(package):
    found = cycles(package)
    assert not found, "\n".join(" -> ".join(c) for c in found)


def concrete_transport_classes() -> set[str]:
    """Classes the transport package defines outside its interface module (base.py)."""
    names = set()
    for module, path in MODULES.items():
        if module.startswith("resilfs.transport.") and module != "resilfs.transport.base":
            names |= {node.name for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.ClassDef) and node.name.endswith("Client")}
    return names


def test_concrete_transport_classes_are_found():
    assert {"TcpClient", "ShmClient", "RdmaClient", "StreamClient"} <= \
        concrete_transport_classes()


def test_sets_name_no_concrete_transport_class():
    classes = concrete_transport_classes()
    named = []
    for module, path in MODULES.items():
        if layer(module) != "sets":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = (node.id if isinstance(node, ast.Name) else
                    node.attr if isinstance(node, ast.Attribute) else
                    None)
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else [name]
            for n in names:
                if n in classes:
                    named.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {n}")
    assert not named, "\n".join(sorted(set(named)))


def test_the_appliance_server_uses_no_client_side_module():
    """The appliance answers with the protocol's refusals; only its peer connections
    (appliance/peers.py, a client of other appliances) use the transport layer."""
    wrong = [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {target}"
             for m in MODULES if layer(m) == "appliance" and m != "resilfs.appliance.peers"
             for target, line in imports(m) if layer(target) == "transport"]
    assert not wrong, "\n".join(sorted(set(wrong)))

"""No closure in resilfs reads a variable of its enclosing function that is assigned only
after the closure was made (read statically, with ast).

Such a closure works only as long as nobody calls it before the assignment: called earlier
it raises NameError, and nothing in its own code says when "earlier" ends. (fs/mount.py's
failsafe flag was one: ``Control`` got ``lambda: operations.read_only`` before
``operations`` existed.)
"""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "resilfs"
FUNCTIONS = (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)
SCOPES = (*FUNCTIONS, ast.ClassDef, ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp)


def own_nodes(scope):
    """The nodes of ``scope`` outside its nested scopes (the nested scopes' roots included)."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, SCOPES):
            stack.extend(ast.iter_child_nodes(node))


def parameters(function) -> set[str]:
    a = function.args
    names = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
    return names | {x.arg for x in (a.vararg, a.kwarg) if x is not None}


def locals_of(function) -> set[str]:
    """Every name ``function`` (or a scope inside it) binds."""
    names = parameters(function)
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def late_reads(source: str, filename: str) -> list[str]:
    found = []
    for outer in ast.walk(ast.parse(source, filename)):
        if not isinstance(outer, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first_store: dict[str, int] = {}
        for node in own_nodes(outer):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                first_store[node.id] = min(first_store.get(node.id, node.lineno), node.lineno)
        for inner in own_nodes(outer):
            if not isinstance(inner, FUNCTIONS):
                continue
            own = locals_of(inner)
            for node in ast.walk(inner):
                if (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
                        and node.id not in own and node.id not in parameters(outer)
                        and first_store.get(node.id, 0) > inner.lineno):
                    found.append(f"{filename}:{inner.lineno} reads {node.id}, assigned on "
                                 f"line {first_store[node.id]}")
    return sorted(set(found))


def test_the_check_finds_a_late_read():
    source = ("def wire():\n"
              "    control = Control(lambda: operations.read_only)\n"
              "    operations = Operations(control)\n")
    assert late_reads(source, "x.py") == ["x.py:2 reads operations, assigned on line 3"]
    fine = ("def wire():\n"
            "    failsafe = Failsafe()\n"
            "    control = Control(lambda: failsafe.read_only)\n")
    assert late_reads(fine, "x.py") == []


def test_no_closure_reads_a_variable_assigned_after_it():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += late_reads(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert not found, "\n".join(found)

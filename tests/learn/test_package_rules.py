"""Package-wide rules of issue 13, checked on the source: no module reaches into another's
private (underscore) state, and no import circle between synclearn modules."""

import ast
from pathlib import Path

import synclearn

PACKAGE = Path(synclearn.__file__).parent

# ``x._name`` is allowed on these receivers: the object itself, its class, and a peer of the same
# class (``other``, as in ``__eq__(self, other)``; the Learner's fork/adopt use it)
OWN = {"self", "cls", "other"}
# private names of third-party libraries that have no public spelling (keep this short and honest)
ALLOWED = {"torch._C", "sys._getframe", "os._exit",
           "type(module)._apply_gate"}  # transformers experts: how a class gates its experts (model/hf_layouts.py)


def _receiver(node: ast.AST) -> str:
    return ast.unparse(node)


def private_accesses(path: Path) -> list[str]:
    """``file:line: expr`` for every access to another object's underscore attribute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        name, base = None, None
        if isinstance(node, ast.Attribute):
            name, base = node.attr, node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            name, base = node.args[1].value, node.args[0]
        if not name or not name.startswith("_") or name.startswith("__"):
            continue
        if isinstance(base, ast.Name) and base.id in OWN:
            continue
        expr = f"{_receiver(base)}.{name}"
        if expr in ALLOWED:
            continue
        found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {expr}")
    return found


def test_no_module_touches_another_objects_private_attributes():
    violations = [v for path in sorted(PACKAGE.rglob("*.py")) for v in private_accesses(path)]
    assert not violations, "private attributes used from outside:\n" + "\n".join(violations)


def module_imports(path: Path) -> set[str]:
    """synclearn modules imported at module level (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ([node] if not isinstance(node, (ast.If, ast.Try)) else ast.walk(node)):
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("synclearn") and not sub.level:
                out.add(sub.module)
                out.update(f"{sub.module}.{a.name}" for a in sub.names)
            elif isinstance(sub, ast.Import):
                out.update(a.name for a in sub.names if a.name.startswith("synclearn"))
    return out


def test_no_import_circle_between_modules():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {name: {m for m in module_imports(path) if m in modules and m != name and not name.startswith(m + ".")}
             for name, path in modules.items()}
    # a package's __init__ re-exporting its modules is not a circle: only module <-> module edges count
    packages = {n for n, p in modules.items() if p.name == "__init__.py"}
    graph = {n: {m for m in deps if m not in packages} for n, deps in graph.items() if n not in packages}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles:\n" + "\n".join(cycles)

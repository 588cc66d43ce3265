"""The first-party import graph, read with ast (nothing is imported): cycles and layering.

    python scripts/import_graph.py            # prints import cycles among top-level imports; exit 1 if any
    python scripts/import_graph.py --local    # also lists imports inside functions (each needs a reason)

Only module-level imports count as edges (including those under a module-level ``if``/``try``);
an import inside a function or class body runs late and is listed by ``--local`` instead, so a
cycle hidden by one shows up there. tests/test_layout.py runs the same checks.
"""
import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("core", "smtpd_worker", "webapp", "cli")
MODULES = ("models", "settings", "runtime")


def module_files():
    """{dotted module name: path} for every first-party module."""
    found = {name: ROOT / f"{name}.py" for name in MODULES}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _targets(node, module, known):
    """First-party modules an Import/ImportFrom node names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")[:-node.level] if not module_is_package(module) else module.split(".")
            base = ".".join(package + ([base] if base else []))
        submodules = [f"{base}.{alias.name}" for alias in node.names]
        # ``from pkg import sub`` needs only pkg.sub (pkg is already importing, or imported, when
        # sub loads); it depends on pkg/__init__ itself only if it takes a name defined there
        names = submodules if all(name in known for name in submodules) else [base] + submodules
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def module_is_package(module):
    return (ROOT / module.replace(".", "/") / "__init__.py").exists()


def _walk_module_level(body):
    """Statements executed at import time: the body, descending into if/try/with but not def/class."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _walk_module_level(inner)


def graph():
    """({module: set of first-party modules it imports at import time}, [(path, line, text) of
    imports inside functions or classes])."""
    files = module_files()
    edges, local = {}, []
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        top = set()
        module_level = set()
        for node in _walk_module_level(tree.body):
            module_level.add(id(node))
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                top |= _targets(node, module, files)
        top.discard(module)
        edges[module] = top
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in module_level:
                line = path.read_text().splitlines()[node.lineno - 1].strip()
                local.append((path.relative_to(ROOT), node.lineno, line))
    return edges, local


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def main(argv):
    edges, local = graph()
    found = cycles(edges)
    for component in found:
        print("cycle:", " <-> ".join(component))
    if "--local" in argv:
        for path, line, text in local:
            print(f"local import: {path}:{line}: {text}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

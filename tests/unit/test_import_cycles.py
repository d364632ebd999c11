"""No import cycles in divlab.

1. Every module of the package imports on its own: one subprocess imports each module first, after
   removing every divlab module from sys.modules, so a cycle that only bites when a module is the
   first one loaded (an ImportError of a partly initialised module) fails here.
2. The graph of *top-level* imports between divlab modules (module body, including `if` and `try`
   blocks, but not function bodies: a function-level import runs after every module has loaded and
   is how a module may reach up the data flow, e.g. a task builder importing provisioning) is acyclic.
   A `from package import name` edge goes to `package.name` when that is a module, else to `package`.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import divlab

SRC = Path(divlab.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def top_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """divlab modules imported by the body of `name` (not inside functions or classes' methods)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.split(".")[0] == "divlab")
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1]
                        + ([base] if base else [])
                    )
                if base.split(".")[0] != "divlab":
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    out.add(sub if sub in known else base)
            if isinstance(node, ast.ClassDef):
                visit([n for n in node.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))])
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []) or [])

    visit(tree.body)
    return {m for m in out if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def dfs(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_top_level_import_graph_is_acyclic():
    names = module_names()
    graph = {name: top_level_imports(path, name, set(names)) for name, path in names.items()}
    assert sum(len(v) for v in graph.values()) > 20, "the import graph is suspiciously small"
    cycle = find_cycle(graph)
    assert cycle is None, "top-level import cycle: " + " -> ".join(cycle)


CHILD = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "divlab" or m.startswith("divlab.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as e:
        failures[name] = f"{type(e).__name__}: {e}"
print(json.dumps(failures))
"""


def test_every_module_imports_first():
    names = sorted(module_names())
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", **__import__("os").environ},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, failures


def all_imports(path: Path, known: set[str]) -> set[str]:
    """divlab modules imported anywhere in the file (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.update(
                {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                    for a in node.names
                }
            )
    return {m for m in out if m in known}


# (importer prefix, forbidden prefix): imports point down the data flow (shared/DESIGN.md), at any level
LAYERS = [
    ("divlab.divergences", "divlab.models"),
    ("divlab.divergences", "divlab.tasks"),
    ("divlab.data", "divlab.models"),
    ("divlab.data", "divlab.tasks"),
    ("divlab.objectives", "divlab.tasks"),
    ("divlab.tasks", "divlab.runner"),
    ("divlab.tasks", "divlab.cli"),
    ("divlab.provision", "divlab.tasks"),
    ("divlab.mixing", "divlab.tasks"),
    ("divlab.utils", "divlab.tasks"),
    ("divlab.utils", "divlab.runner"),
    ("divlab.decoding", "divlab.tasks"),
    ("divlab.decoding", "divlab.runner"),
]


def test_imports_point_down_the_data_flow():
    names = module_names()
    known = set(names)
    broken = [
        f"{name} imports {dep}"
        for name, path in names.items()
        for dep in all_imports(path, known)
        for low, high in LAYERS
        if name.startswith(low) and dep.startswith(high)
    ]
    assert not broken, broken


def test_no_module_over_400_lines():
    root = SRC.parents[1]
    files = [*SRC.rglob("*.py"), *(root / "scripts").rglob("*.py")]
    long = {str(p.relative_to(root)): n for p in files if (n := len(p.read_text().splitlines())) > 400}
    assert len(files) > 50 and not long, f"split these modules (at most 400 lines each): {long}"

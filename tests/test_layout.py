"""The package layout: imports run one way (no cycles), and each package imports only the layers below it."""

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "memlib"

# package -> the memlib packages it may import (besides itself). FREE may import anything; a package or top-level
# module in neither is an error (a new one says where it sits).
FREE = {"memlib", "stages", "__main__"}  # memlib: its __init__
ALLOWED = {
    "config": set(),
    "seeds": set(),
    "columns": set(),
    "files": set(),
    "machine": set(),
    "data": {"config", "seeds", "files"},
    "train": {"config", "seeds", "columns", "data", "files", "machine"},
    "runs": {"config", "seeds", "columns", "data", "train", "files", "machine"},
    "analysis": {
        "config",
        "columns",
        "files",
        "machine",
    },  # numpy, scipy, torch (fast masked sums) and the run arrays; no training
    "report": {"config", "analysis", "files"},
}


def _module(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lazy_exports(root: Path = ROOT) -> dict[str, str]:
    """The names memlib/__init__.py loads on first use (its `_HOME` table) -> the module each comes from."""
    for node in ast.walk(ast.parse((root / "__init__.py").read_text())):
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["_HOME"]:
            return {name: f"{root.name}.{module}" for name, module in ast.literal_eval(node.value).items()}
    raise AssertionError(f"{root / '__init__.py'} has no _HOME table: the layer rule cannot see its re-exports")


def imports(root: Path = ROOT) -> dict[str, set[str]]:
    """Every memlib module -> the memlib modules it imports (at the top or inside functions), a name re-exported by
    memlib/__init__.py (`from memlib import Store`, `memlib.Store`) counted as an import of the module it is from."""
    modules = {_module(p, root): p for p in root.rglob("*.py")}
    lazy = lazy_exports(root)
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from memlib.x import y` may name a module y
                    found |= {m for m in (f"{target}.{alias.name}", target) if m in modules}
                    if target == root.name and alias.name in lazy:
                        found.add(lazy[alias.name])
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.Attribute) and ast.unparse(node.value) == root.name and node.attr in lazy:
                found.add(lazy[node.attr])  # memlib.Store after `import memlib`
        graph[name] = {m for m in found if m != name and not name.startswith(m + ".") and m != root.name}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "memlib"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> modules it imports) as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of `graph` against ALLOWED, and modules of a package or top-level module it does not name."""
    wrong = []
    for module, targets in sorted(graph.items()):
        layer = _layer(module)
        if layer in FREE:
            continue
        if layer not in ALLOWED:
            wrong.append(f"{module} is in no layer: add {layer} to ALLOWED (or FREE) in tests/test_layout.py")
            continue
        for target in sorted(targets):
            if _layer(target) != layer and _layer(target) not in ALLOWED[layer]:
                wrong.append(f"{module} imports {target}")
    return wrong


def test_each_package_imports_only_the_layers_below_it():
    wrong = layer_violations(imports())
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_layer_rule_sees_a_planted_violation(tmp_path):
    """The checker itself, on a copy of memlib with three planted faults: an analysis module reaching a stage
    through memlib/__init__.py's lazy re-exports (`from memlib import train_subsets`, and `memlib.Store` after
    `import memlib`), and a new top-level module that no layer names. The real tree passes; the copy must not."""
    root = tmp_path / "memlib"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    (root / "analysis" / "planted.py").write_text("from memlib import train_subsets\n")
    (root / "analysis" / "planted2.py").write_text("import memlib\n\n\ndef f():\n    return memlib.Store\n")
    (root / "newtop.py").write_text("import numpy\n")
    graph = imports(root)
    assert graph["memlib.analysis.planted"] == {"memlib.stages.train"}
    assert graph["memlib.analysis.planted2"] == {"memlib.runs.store"}
    assert set(layer_violations(graph)) - set(layer_violations(imports())) == {
        "memlib.analysis.planted imports memlib.stages.train",
        "memlib.analysis.planted2 imports memlib.runs.store",
        "memlib.newtop is in no layer: add newtop to ALLOWED (or FREE) in tests/test_layout.py",
    }


def test_the_graph_sees_imports_inside_functions():
    """The checker itself: a lazy import inside a function counts (a checker that misses them proves nothing)."""
    source = (ROOT / "train" / "models.py").read_text()
    assert "        from ..data.own import import_user_module" in source  # inside build_model: a lazy import
    assert "memlib.data.own" in imports()["memlib.train.models"]


def test_stages_reach_the_executors_through_their_table():
    """A stage that imported memlib.runs.local itself would train locally under `executor: slurm` (it once did)."""
    wrong = [
        f"{module} imports {target}"
        for module, targets in sorted(imports().items())
        for target in targets
        if target in ("memlib.runs.local", "memlib.runs.slurm")
        and _layer(module) not in ("runs", "__main__")  # the CLI: submit and status
    ]
    assert not wrong, "\n".join(wrong)


LONG = 60  # lines; a longer function says why in a comment on its `def` line: `# long: <reason>`


def long_functions(source: str) -> list[str]:
    """The functions of `source` over LONG lines whose def line gives no `# long:` reason."""
    lines = source.splitlines()
    return [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > LONG
        and "# long:" not in lines[node.lineno - 1]
    ]


def test_no_function_is_long_without_saying_why():
    long = [
        f"{p.relative_to(ROOT.parent)}: {f}" for p in sorted(ROOT.rglob("*.py")) for f in long_functions(p.read_text())
    ]
    assert not long, "split these, or say why on the def line (# long: ...):\n" + "\n".join(long)


def test_the_length_check_sees_a_long_function():
    body = "".join(f"    x{i} = {i}\n" for i in range(LONG))
    assert long_functions(f"def f():\n{body}") == [f"f ({LONG + 1} lines)"]
    assert long_functions(f"def f():  # long: one table\n{body}") == []
    assert long_functions(f"def f():\n{body[: -len(body.splitlines()[-1]) - 1]}") == []


def test_the_config_names_the_executors_of_the_table():
    """config.EXECUTORS (what a profile may say; config imports nothing) is the table's names, in its order."""
    from memlib import config
    from memlib.runs.executors import EXECUTORS

    assert config.EXECUTORS == tuple(EXECUTORS)


def test_the_slurm_executor_imports_no_torch():
    """A SLURM task unpickles its GroupTask from memlib.runs.slurm; torch imported there changed how a signalled task
    ended (resubmitted, not requeued). Torch comes in only when the task builds its learner."""
    import subprocess
    import sys

    code = "import sys, memlib.runs.slurm; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, check=True)
    assert out.stdout.strip() == "False"

"""House rules that stay at zero: no import circles in the package, imports that flow one way (core <- hosts <- tools,
docs/DESIGN.md section 4), no module (or test) reaching into another module's private `_names`, and no script
importing a name that does not exist. The checks read the source with `ast`; each is first shown to catch a planted
case."""

import ast
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "tensorrt_llm_dwdp"
# A compiled extension is a module, not a private name, whatever its spelling.
EXTENSIONS = {f"{PACKAGE}._C"}


def modules(root: Path, package: str) -> Dict[str, Path]:
    """Dotted name -> file of every module of `package` under `root`."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _absolute(name: str, importer: str, is_package: bool, level: int) -> str:
    if not level:
        return name
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _import_time(tree: ast.Module):
    """Nodes executed when the module is imported: everything outside function bodies."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def _imports(tree: ast.Module, me: str, is_package: bool, known: Set[str], import_time: bool):
    """(target module, imported name or None, alias bound here, line) for each import of a module in `known`."""
    nodes = _import_time(tree) if import_time else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known:
                    yield a.name, None, a.asname or a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            mod = _absolute(node.module or "", me, is_package, node.level)
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in known or sub in EXTENSIONS:
                    yield sub, None, a.asname or a.name, node.lineno  # `from pkg import module`
                elif mod in known:
                    yield mod, a.name, a.asname or a.name, node.lineno


def import_cycles(root: Path, package: str) -> List[List[str]]:
    """Strongly connected groups of modules importing each other at import time (Tarjan), each sorted."""
    mods = modules(root, package)
    graph: Dict[str, Set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        found = _imports(tree, name, path.name == "__init__.py", set(mods), True)
        graph[name] = {t for t, _, _, _ in found if t in mods}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph[v]:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


# docs/DESIGN.md section 4: the core (the top level, memory/, prefetch/, moe/) imports no host and no tool; hosts
# (runtime/, integrations/) import no tool, except where named here with why.
HOSTS = ("runtime", "integrations")
TOOLS = ("bench", "sim", "verify", "commands")
HOST_TO_TOOL = {
    # mode auto in a TensorRT-LLM deployment asks the one prediction, as the bench does
    ("integrations.trtllm.predict", "sim"), ("integrations.trtllm.options", "sim"),
    # `trtllm-dwdp launch` is a command that lives beside the adapter whose options it checks
    ("integrations.trtllm.launch", "commands"),
}


def _room(module: str, package: str) -> Tuple[str, str]:
    """(kind, top-level room) of a module: kind core, host, tool or shared (workloads: what a run is given)."""
    parts = module.split(".")[1:]
    if parts == ["__main__"]:  # `python -m tensorrt_llm_dwdp`: the command line
        return "tool", "commands"
    top = parts[0] if len(parts) > 1 else ""
    if top in HOSTS:
        return "host", top
    if top in TOOLS:
        return "tool", top
    return ("shared" if top == "workloads" else "core"), top


def wrong_way_imports(root: Path, package: str, allowed=frozenset()) -> List[Tuple[str, str]]:
    """(importer, imported) for every import (at import time or inside functions) against the flow."""
    mods = modules(root, package)
    out = []
    for name, path in mods.items():
        kind, _ = _room(name, package)
        tree = ast.parse(path.read_text(), str(path))
        for target, _, _, _ in _imports(tree, name, path.name == "__init__.py", set(mods), False):
            tkind, troom = _room(target, package)
            rel = name.split(".", 1)[1] if "." in name else name
            if kind == "core" and tkind in ("host", "tool") or \
                    kind == "host" and tkind == "tool" and (rel, troom) not in allowed:
                out.append((name, target))
    return sorted(set(out))


def _private(name: Optional[str]) -> bool:
    return bool(name) and name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reaches(root: Path, package: str, files: List[Path]) -> List[Tuple[str, int, str]]:
    """(file, line, what) for each `from m import _x` and `m._x` where m is another module of the package."""
    mods = modules(root, package)
    known = set(mods)
    found = []
    for path in files:
        rel = path.relative_to(root)
        me = ".".join(rel.with_suffix("").parts) if rel.parts[0] == package else rel.stem
        is_package = path.name == "__init__.py"
        if is_package:
            me = me.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(), str(path))
        aliases: Dict[str, str] = {}
        for target, name, alias, line in _imports(tree, me, is_package, known, False):
            if name is None:
                if target in EXTENSIONS:
                    continue
                if alias == target and "." in target:  # `import a.b` binds `a`; `a.b._x` is followed below
                    alias = target = target.split(".")[0]
                aliases[alias] = target
            elif _private(name) and target != me:
                found.append((str(rel), line, f"from {target} import {name}"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                chain = []
                v = node.value
                while isinstance(v, ast.Attribute):
                    chain.append(v.attr)
                    v = v.value
                if isinstance(v, ast.Name) and v.id in aliases:
                    target = ".".join([aliases[v.id]] + chain[::-1])
                    if target in known and target != me:
                        found.append((str(rel), node.lineno, f"{target}.{node.attr}"))
    return found


def _package_and_tests(root: Path, package: str) -> List[Path]:
    return sorted((root / package).rglob("*.py")) + sorted((root / "tests").rglob("*.py"))


def _plant(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from .b import f\n\ndef g():\n    from . import c  # lazy: no circle\n",
        "b.py": "from . import a\nfrom .c import _hidden\n\ndef f():\n    return a\n",
        "c.py": "import pkg.sub.d as d\nimport pkg.sub.d\n_hidden = 1\n\n"
                "def h():\n    return d._secret + d.public + pkg.sub.d._secret\n",
        "sub/__init__.py": "",
        "sub/d.py": "from .. import c\n_secret = public = 2\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(textwrap.dedent(text))
    return tmp_path


def test_the_checks_catch_planted_cases(tmp_path):
    root = _plant(tmp_path)
    (root / "pkg" / "runtime").mkdir()
    (root / "pkg" / "sim").mkdir()
    for name, text in {"runtime/__init__.py": "", "runtime/host.py": "def f():\n    from ..sim import tool\n",
                       "sim/__init__.py": "", "sim/tool.py": "from ..runtime import host\n",
                       "core.py": "from .runtime import host\nfrom .sim import tool\n"}.items():
        (root / "pkg" / name).write_text(text)
    assert wrong_way_imports(root, "pkg") == [("pkg.core", "pkg.runtime.host"), ("pkg.core", "pkg.sim.tool"),
                                              ("pkg.runtime.host", "pkg.sim.tool")]
    assert wrong_way_imports(root, "pkg", {("runtime.host", "sim")}) == [("pkg.core", "pkg.runtime.host"),
                                                                        ("pkg.core", "pkg.sim.tool")]
    assert import_cycles(root, "pkg") == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub.d"]]
    got = {(Path(f).name, what) for f, _, what in private_reaches(root, "pkg", sorted((root / "pkg").rglob("*.py")))}
    assert got == {("b.py", "from pkg.c import _hidden"), ("c.py", "pkg.sub.d._secret")}
    assert len([w for f, _, w in private_reaches(root, "pkg", [root / "pkg" / "c.py"])]) == 2  # via both names


def test_no_import_circles():
    assert import_cycles(ROOT, PACKAGE) == []


def test_no_module_reaches_into_another_modules_private_names():
    found = private_reaches(ROOT, PACKAGE, _package_and_tests(ROOT, PACKAGE))
    assert found == []


def test_imports_flow_one_way():
    assert wrong_way_imports(ROOT, PACKAGE, HOST_TO_TOOL) == []


def missing_names(files: List[Path]) -> List[Tuple[str, int, str]]:
    """(file, line, name) for each `from tensorrt_llm_dwdp... import name` in `files` that the module lacks."""
    import importlib
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith(PACKAGE):
                try:
                    mod = importlib.import_module(node.module)
                except ImportError as e:
                    found.append((path.name, node.lineno, f"{node.module} ({e})"))
                    continue
                for a in node.names:
                    if f"{node.module}.{a.name}" in EXTENSIONS:  # built only where a CUDA toolkit is
                        continue
                    is_module = hasattr(mod, "__path__") and importlib.util.find_spec(f"{node.module}.{a.name}")
                    if not hasattr(mod, a.name) and not is_module:
                        found.append((path.name, node.lineno, f"{node.module}.{a.name}"))
    return found


def test_examples_and_benchmark_scripts_import_names_that_exist(tmp_path):
    """Scripts no test runs whole (GPU benchmarks, examples) still import only what the package has."""
    bad = tmp_path / "bad.py"
    bad.write_text(f"from {PACKAGE}.sim.batches import parse_isl\nfrom {PACKAGE}.sim.nowhere import x\n")
    assert [(n, w.split(" ")[0]) for _, n, w in missing_names([bad])] == [(1, f"{PACKAGE}.sim.batches.parse_isl"),
                                                                          (2, f"{PACKAGE}.sim.nowhere")]
    scripts = sorted((ROOT / "examples").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    assert missing_names(scripts) == []

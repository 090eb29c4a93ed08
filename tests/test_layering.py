"""The layering rule (docs/architecture.md), read from the source with `ast`, no import run.

- Library packages never import the jobs (`mmar.jobs`) or the command line (`mmar.cli`);
  only `mmar.cli` imports the jobs.
- Every import goes down `LAYERS` (or stays in its own package), so the package graph is a
  DAG; and no two modules import each other, directly or through others.
- `mmar.config` (validation) stands on `mmar.vocab` and `mmar.derived` alone, so checking a
  config loads no JAX, data set or model.
- No imports inside functions (they hide cycles and upward imports), except optional heavy
  third-party packages and `mmar.cli`'s job imports (`mmar --help` must not load JAX).

Each failure names the importing module, the line and the imported module.
"""
from __future__ import annotations

import ast
import collections
import pathlib

from mmar import config as config_lib
from mmar.parallel import rules

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Lowest first. A module may import modules of its own package or of a lower layer; packages
# in one layer may import each other as long as no cycle forms (test_package_graph_is_acyclic).
LAYERS = (
    ("mmar.errors",),
    ("mmar", "mmar.vocab", "mmar.derived", "mmar.config_fields"),
    ("mmar.schema", "mmar.config"),
    ("mmar.parallel",),
    ("mmar.model",),
    ("mmar.data",),
    ("mmar.eval",),
    ("mmar.train",),
    ("mmar.tokenizers",),
    ("mmar.sample", "mmar.scaling", "mmar.export", "mmar.launch"),
    ("mmar.rundir",),
    ("mmar.jobs",),
    ("mmar.commands",),
    ("mmar.cli", "mmar.__main__"),
)
CONFIG_LEVEL = {"mmar.errors", "mmar.vocab", "mmar.derived", "mmar.config_fields",
                "mmar.schema", "mmar.config"}
# Optional or heavy third-party packages that may be imported where they are used.
HEAVY = {"torch", "transformers", "tensorflow", "tensorflow_datasets", "keras", "matplotlib",
         "sklearn", "skimage", "safetensors", "tokenizers"}

Import = collections.namedtuple("Import", "module target line in_function")


def _modules(root: pathlib.Path) -> dict[str, tuple[pathlib.Path, bool]]:
    """{dotted name: (file, is a package __init__)} of every module under root/mmar."""
    out = {}
    for path in sorted((root / "mmar").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _resolve(name: str, modules) -> str:
    """The deepest module of `name` that exists (`mmar.data.tokens.TokensError` ->
    `mmar.data.tokens`)."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def _function_nodes(tree) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside |= {id(sub) for sub in ast.walk(node) if sub is not node}
    return inside


def read_imports(root: pathlib.Path = ROOT) -> tuple[dict, list[Import]]:
    """(modules, every import statement's target) of mmar's source under `root`. A target is
    the imported mmar module (resolved, `from a import b` -> a.b when b is a module) or, for
    third-party imports, the top-level name."""
    modules = _modules(root)
    imports = []
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        inside = _function_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:   # relative: from the module's package, level - 1 up
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod
                           for a in node.names]
            else:
                continue
            for target in targets:
                if target == "mmar" or target.startswith("mmar."):
                    target = _resolve(target, modules)
                    if target == name:
                        continue
                else:
                    target = target.split(".")[0]
                imports.append(Import(name, target, node.lineno, id(node) in inside))
    return modules, imports


def package(module: str) -> str:
    """mmar.data.builders.shapes -> mmar.data; mmar.rundir -> mmar.rundir; mmar -> mmar."""
    return ".".join(module.split(".")[:2])


def layer(pkg: str) -> int | None:
    return next((i for i, names in enumerate(LAYERS) if pkg in names), None)


def _internal(imports):
    return [i for i in imports if i.target.startswith("mmar")]


def _where(i: Import) -> str:
    return f"{i.module} (line {i.line}) imports {i.target}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# ---- the checks, each a list of problems (empty: the rule holds) -----------------------------

def unknown_packages(modules, imports) -> list[str]:
    """Every package has a place in LAYERS."""
    return sorted({f"{m}: package {package(m)} is in no layer of LAYERS (add it where it "
                   "belongs)" for m in modules if layer(package(m)) is None})


def library_imports_of_jobs_or_cli(modules, imports) -> list[str]:
    """Only mmar.cli imports mmar.jobs; jobs may import each other; nothing imports the CLI
    but `python -m mmar` (mmar.__main__)."""
    bad = []
    for i in _internal(imports):
        src, dst = package(i.module), package(i.target)
        if dst == "mmar.jobs" and src not in ("mmar.jobs", "mmar.cli"):
            bad.append(f"{_where(i)}: only mmar.cli may import the jobs")
        if dst == "mmar.cli" and i.module != "mmar.__main__":
            bad.append(f"{_where(i)}: nothing but mmar/__main__.py imports the command line")
    return bad


def upward_imports(modules, imports) -> list[str]:
    """Imports go down LAYERS (or stay in their package)."""
    bad = []
    for i in _internal(imports):
        src, dst = package(i.module), package(i.target)
        if src == dst or layer(src) is None or layer(dst) is None:
            continue
        if layer(dst) > layer(src):
            bad.append(f"{_where(i)}: {dst} is above {src} in LAYERS")
    return bad


def config_imports(modules, imports) -> list[str]:
    """Validation (mmar.config) stands on the config level alone: no JAX, data or model."""
    return [f"{_where(i)}: validation imports only {sorted(CONFIG_LEVEL - {'mmar.config'})}"
            for i in _internal(imports)
            if i.module in CONFIG_LEVEL and i.target not in CONFIG_LEVEL | {"mmar"}]


def package_cycles(modules, imports) -> list[str]:
    """The package graph is a DAG."""
    graph = collections.defaultdict(set)
    for i in _internal(imports):
        if package(i.module) != package(i.target) and i.target != "mmar":
            graph[package(i.module)].add(package(i.target))
    bad = []
    for cycle in _cycles(graph):
        edges = sorted({_where(i) for i in _internal(imports)
                        if package(i.module) in cycle and package(i.target) in cycle
                        and package(i.module) != package(i.target)})
        bad.append(f"packages {cycle} import each other: " + "; ".join(edges))
    return bad


def module_cycles(modules, imports) -> list[str]:
    """Cycles between modules, through imports at any place (one inside a function is a
    cycle Python only survives because it runs late)."""
    graph = collections.defaultdict(set)
    for i in _internal(imports):
        graph[i.module].add(i.target)
    bad = []
    for cycle in _cycles(graph):
        edges = sorted({_where(i) for i in _internal(imports)
                        if i.module in cycle and i.target in cycle})
        bad.append(f"modules {cycle} import each other: " + "; ".join(edges))
    return bad


def imports_in_functions(modules, imports) -> list[str]:
    """No imports inside functions but HEAVY third-party ones and mmar.cli's jobs."""
    bad = []
    for i in imports:
        if not i.in_function or i.target in HEAVY:
            continue
        if i.module == "mmar.cli" and package(i.target) == "mmar.jobs":
            continue   # the jobs, lazily, so that `mmar --help` loads no JAX
        bad.append(f"{_where(i)} inside a function: import it at the top of the module")
    return bad


CHECKS = (unknown_packages, library_imports_of_jobs_or_cli, upward_imports, config_imports,
          package_cycles, module_cycles, imports_in_functions)


def _check(rule) -> None:
    problems = rule(*read_imports())
    assert not problems, f"{rule.__doc__ or rule.__name__}\n  " + "\n  ".join(problems)


def test_every_package_has_a_layer():
    _check(unknown_packages)


def test_only_the_cli_imports_the_jobs():
    _check(library_imports_of_jobs_or_cli)


def test_imports_go_down_the_layers():
    _check(upward_imports)


def test_config_stands_on_vocab_and_derived():
    _check(config_imports)


def test_package_graph_is_acyclic():
    _check(package_cycles)


def test_no_module_import_cycles():
    _check(module_cycles)


def test_no_imports_inside_functions():
    _check(imports_in_functions)


def test_the_checks_see_imports():
    """The reader finds what is there (a guard against a checker that passes on nothing)."""
    modules, imports = read_imports()
    targets = {(i.module, i.target) for i in imports}
    assert ("mmar.config", "mmar.vocab") in targets
    assert ("mmar.data.pipeline", "mmar.data.builders.shapes") in targets
    assert any(i.module == "mmar.cli" and i.target.startswith("mmar.jobs.") and i.in_function
               for i in imports)
    assert {"mmar.cli", "mmar.rundir", "mmar.jobs.train"} <= set(modules)


def test_config_strategies_name_the_rule_tables():
    """config.py lists the strategy names without importing mmar.parallel (JAX)."""
    assert config_lib.STRATEGIES == tuple(rules.STRATEGIES)

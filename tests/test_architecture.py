"""The package's shape (docs/architecture.md): no module shadowed by a function of the same name,
no import cycles, and the plotting and terminal libraries loaded only where something is drawn or
printed. The layer rules themselves are the import-linter contract in pyproject.toml
(``lint-imports``, run by ``.ci/run``)."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import metagrad


def _submodules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(metagrad.__path__))


def test_no_submodule_is_shadowed_by_a_public_name():
    # ``from metagrad.x import x`` in __init__ would rebind ``metagrad.x`` to the function, and
    # ``metagrad.x.helper`` would then raise AttributeError.
    for name in _submodules():
        module = importlib.import_module(f"metagrad.{name}")
        assert getattr(metagrad, name) is module, (
            f"metagrad.{name} is {getattr(metagrad, name)!r}, not the module metagrad.{name}"
        )


def test_plan_unroll_is_public():
    from metagrad.unrolling import plan_unroll

    assert metagrad.plan_unroll is plan_unroll
    assert callable(metagrad.unroll)


ENGINE = (
    "autodiff",
    "bilevel",
    "diagnostics",
    "distributed",
    "implicit",
    "memory",
    "nonfinite",
    "planner",
    "reversible",
    "schedules",
    "transforms",
    "treecheck",
    "unrolling",
)
UTILITIES = ("checkpoints", "files", "markdown", "progress", "runs", "stats", "validation")
APPLICATIONS = ("data", "fewshot", "meta", "models", "optim")
HEAVY = ("matplotlib", "rich", "PIL")


def _modules_of(package: str) -> list[str]:
    """``metagrad.<package>`` and its modules, found on disk (nothing is imported)."""
    path = Path(metagrad.__path__[0]) / package
    found = pkgutil.walk_packages([str(path)], f"metagrad.{package}.")
    return [f"metagrad.{package}", *(m.name for m in found)]


def test_importing_loads_no_plotting_or_terminal_library():
    # One fresh interpreter imports the package, every engine and utility module, and every
    # application and bench module one after another, and names the first that loads matplotlib,
    # rich or PIL. Those are imported inside the functions that draw, render or print.
    names = ["metagrad", *(f"metagrad.{m}" for m in ENGINE + UTILITIES)]
    for package in (*APPLICATIONS, "bench"):
        names += _modules_of(package)
    assert len(names) > 60
    script = f"""
import importlib, sys
for name in {names!r}:
    importlib.import_module(name)
    loaded = [h for h in {HEAVY!r} if h in sys.modules]
    if loaded:
        sys.exit(f"importing {{name}} loads {{', '.join(loaded)}}")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_no_import_cycles():
    # Every import counts, including those inside functions (grimp reads the source).
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("metagrad", cache_dir=None)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_engine_depends_on_jax_optax_numpy_only():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("metagrad", include_external_packages=True, cache_dir=None)
    allowed = {"jax", "optax", "numpy", *sys.stdlib_module_names} - {"argparse", "pickle"}
    for name in ENGINE:
        module = f"metagrad.{name}"
        imported = graph.find_modules_directly_imported_by(module)
        external = {m for m in imported if not m.startswith("metagrad")}
        assert external <= allowed, f"{module} imports {sorted(external - allowed)}"
        internal = {m.split(".")[1] for m in imported - external if m != "metagrad"}
        assert internal <= set(ENGINE), f"{module} imports {sorted(internal - set(ENGINE))}"

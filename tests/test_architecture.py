"""The package's shape (docs/architecture.md): no module shadowed by a function of the same name,
no import cycles, and the plotting and terminal libraries loaded only where something is drawn or
printed. The layer rules themselves are the import-linter contract in pyproject.toml
(``lint-imports``, run by ``.ci/run``)."""

import importlib
import pkgutil
from pathlib import Path

import metagrad

SRC = Path(metagrad.__file__).resolve().parents[1]


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

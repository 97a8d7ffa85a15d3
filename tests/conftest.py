"""Shared fixtures.

Float64 is switched on per test (fixture ``x64``), never globally, so that tests of default-dtype
behaviour keep seeing float32.

XLA's LLVM backend optimisation is lowered for the test suite. The JAX compile time of the
second-order programs dominates the suite, and this halves it. It changes neither numerical results
beyond rounding nor XLA's buffer assignment, so memory figures are the same. Benchmarks run at the
default level.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats (derivative comparisons need them)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def cli_error(capsys):
    """``cli_error(argv)``: runs ``metagrad argv``, expects it to exit, returns what it said.

    A flag refused when parsed exits with argparse's message on stderr (status 2); a value refused
    by a command exits with a ``SystemExit`` message. Both are returned, with the status.
    """
    from metagrad.cli import main

    def run(argv):
        with pytest.raises(SystemExit) as err:
            main(argv)
        return f"status {err.value.code}: {err.value}\n{capsys.readouterr().err}"

    return run

"""Command-line flags of ``metagrad.distributed``: several hosts, the device mesh, FSDP.

``add_arguments(parser)`` adds ``--coordinator-address``, ``--num-processes``, ``--process-id``,
``--devices``, ``--mesh`` and ``--params``; :func:`initialize_from_args` and :func:`mesh_from_args`
turn the parsed flags into ``metagrad.distributed.initialize(...)`` and a mesh. The engine itself
takes plain arguments (or the ``JAX_*`` environment variables) and knows nothing of ``argparse``.
"""

from __future__ import annotations

import argparse

from jax.sharding import Mesh

from metagrad.cli.arguments import non_negative_int, positive_int
from metagrad.distributed import PARAM_MODES, initialize, make_mesh


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the multi-host and mesh flags to a command-line parser.

    ``--coordinator-address``, ``--num-processes``, ``--process-id`` (default: the environment
    variables read by ``metagrad.distributed.initialize``), ``--mesh DxM`` (devices along data x model; default all
    devices along data) and ``--params replicate|fsdp``. Use :func:`initialize_from_args` and
    :func:`mesh_from_args` on the parsed arguments.

    Args:
      parser: an ``argparse`` parser (or argument group).
    """
    group = parser.add_argument_group("distributed (metagrad.distributed)")
    group.add_argument("--coordinator-address", help="host:port of process 0 (several hosts)")
    group.add_argument(
        "--num-processes", type=positive_int, help="processes in the job (several hosts)"
    )
    group.add_argument("--process-id", type=non_negative_int, help="this process's index, 0..N-1")
    group.add_argument(
        "--devices",
        type=positive_int,
        help="use the first N devices (default: all of them when --mesh is given)",
    )
    group.add_argument(
        "--mesh", help="devices along data x model, e.g. 8x1 or 4x2 (-1: the rest); default Nx1"
    )
    group.add_argument(
        "--params",
        choices=PARAM_MODES,
        default="replicate",
        help="meta-parameters replicated, or sharded FSDP-style along the model axis",
    )


def initialize_from_args(args: argparse.Namespace) -> bool:
    """``metagrad.distributed.initialize`` from the flags of :func:`add_arguments` (unset flags: environment)."""
    return initialize(
        getattr(args, "coordinator_address", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
    )


def mesh_from_args(args: argparse.Namespace) -> Mesh:
    """The mesh that ``--mesh`` names (``"4x2"``, ``"-1x2"``) over the first ``--devices``
    devices (default all); every device along data if ``--mesh`` is unset."""
    text = getattr(args, "mesh", None)
    devices = getattr(args, "devices", None)
    if devices is not None and devices < 1:
        raise ValueError(f"--devices must be a positive number of devices; got {devices}.")
    if not text:
        return make_mesh(devices=devices)
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 2:
        raise ValueError(
            f"--mesh expects DATAxMODEL with integers, e.g. 8x1 or 4x2 (-1 for the rest); "
            f"got {text!r}."
        )
    return make_mesh(shape, devices=devices)


__all__ = ["add_arguments", "initialize_from_args", "mesh_from_args"]

"""Scaling out: device meshes, sharded meta-batches and FSDP-style meta-parameters.

A meta-training step has an obvious parallel axis: the meta-batch of tasks, each with its own inner
loop. This module runs a meta-training step, the mean over the meta-batch of a per-task objective,
on a device mesh with JAX's SPMD runtime. It knows nothing about any application: a
:class:`ShardedMetaStep` takes a mapped per-task objective; :func:`shard_meta_train_step` builds
one for a ``Bilevel`` problem (``metagrad.meta_train_step`` semantics), and
``metagrad.fewshot.shard_fewshot_meta_step`` one for the MAML family. On the mesh:

* tasks are sharded along the ``"data"`` axis; every device runs the unchanged ``jax.lax.map``
  over its own tasks (inside ``jax.shard_map``);
* meta-parameters and the outer optimiser state are replicated, or sharded FSDP-style along the
  ``"model"`` axis (each leaf's largest axis that the axis size divides);
* the whole step is one ``jax.jit`` with ``in_shardings`` / ``out_shardings``. The meta-gradient
  is reduced by collectives that JAX derives (the transpose of broadcasting the meta-parameters
  to the devices is a ``psum``) and the compiler places (all-gathers of the FSDP shards before
  use; one all-reduce of the gradient, of which each device keeps its shard). Nothing here sends
  data by hand.

Why ``shard_map`` rather than only ``jit`` shardings around the single-device step: that step maps
the tasks with ``jax.lax.map``, a sequential loop, and XLA cannot split a loop's iterations across
devices, so it all-gathers the whole meta-batch onto every device (measured: 21 all-gathers and no
fall in per-device memory). Inside ``shard_map`` each device loops over its own tasks only.

Why the meta-parameters are cast to "varying" inside the per-device function: in ``shard_map`` the
gradient with respect to a value that is the same on every device is summed over the devices (it
is the gradient of the sum of the per-device functions). The *inner* gradients of MAML must stay
per-task, so the meta-parameters are first marked as differing per device
(``jax.lax.pcast(..., to="varying")``); the transpose of that cast is the ``psum`` that reduces the
*outer* gradient, exactly once. Without it, the inner loops silently use the sum of all devices'
gradients (we hit this: losses off by ~1 after one inner step).

Several hosts: call :func:`initialize` (arguments or ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; command-line flags: ``metagrad.cli.distributed_args``)
before anything else touches JAX; the mesh then spans every process's devices. Checkpoints that
restore on any device count: ``metagrad.checkpoints``. See ``docs/distributed.md``.

References:
  Xu et al., *GSPMD: General and Scalable Parallelization for ML Computation Graphs*, 2021,
  arXiv:2105.04663.
  Rajbhandari et al., *ZeRO: Memory Optimizations Toward Training Trillion Parameter Models*,
  SC 2020 (FSDP / ZeRO-3: parameters, gradients and optimiser state sharded across devices).
  Finn et al., ICML 2017 (MAML).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Collection, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from metagrad.bilevel import Bilevel, meta_train_step
from metagrad.nonfinite import leaf_finiteness

Meta = Any
PyTree = Any

DATA_AXIS = "data"
MODEL_AXIS = "model"
PARAM_MODES: tuple[str, ...] = ("replicate", "fsdp")


# -- start-up -------------------------------------------------------------------------------------


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    auto: bool = False,
) -> bool:
    """Starts JAX's multi-process runtime when several processes are configured.

    Every argument left ``None`` is read from the environment: ``JAX_COORDINATOR_ADDRESS``
    (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. When none is set
    the call does nothing (a single process), unless ``auto=True``, which lets JAX detect a
    cluster (SLURM, Open MPI, Kubernetes, Cloud TPU). Call it once per process, before any other
    JAX call creates arrays.

    Args:
      coordinator_address: ``host:port`` that process 0 listens on and the others reach.
      num_processes: number of processes in the job.
      process_id: this process's index, ``0 .. num_processes - 1``.
      local_device_ids: restrict this process to some of its local devices.
      auto: with nothing configured, let ``jax.distributed.initialize`` detect the cluster.

    Returns:
      ``True`` when the multi-process runtime was started, ``False`` for a single process.

    References:
      ``jax.distributed.initialize`` (JAX multi-process documentation).
    """
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if address is None and count is None and pid is None:
        if auto:
            jax.distributed.initialize(local_device_ids=local_device_ids)
            return True
        return False
    if address is None or count is None or pid is None:
        raise ValueError(
            "initialize: a multi-process start needs all three of coordinator_address "
            f"(--coordinator-address / JAX_COORDINATOR_ADDRESS, got {address!r}), num_processes "
            f"(--num-processes / JAX_NUM_PROCESSES, got {count!r}) and process_id "
            f"(--process-id / JAX_PROCESS_ID, got {pid!r}). Set the missing ones."
        )
    if count < 1 or not 0 <= pid < count:
        raise ValueError(
            f"initialize: process_id must be in [0, num_processes) = [0, {count}); got {pid}."
        )
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=count,
        process_id=pid,
        local_device_ids=local_device_ids,
    )
    return True


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"initialize: environment variable {name} must be an int; got {value!r}."
        ) from None


# -- meshes and shardings ---------------------------------------------------------------------------


def make_mesh(
    shape: Sequence[int] | None = None,
    axis_names: Sequence[str] = (DATA_AXIS, MODEL_AXIS),
    *,
    devices: int | Sequence[Any] | None = None,
) -> Mesh:
    """A device mesh, by default every device along ``"data"``.

    Args:
      shape: size of each axis; one entry may be ``-1`` (the remaining devices). Default:
        ``(n_devices, 1, ...)``: all devices on the first (data) axis.
      axis_names: names of the axes (default ``("data", "model")``).
      devices: the devices (default ``jax.devices()``, every process's), or an int: the first
        that many of them.

    Returns:
      A ``jax.sharding.Mesh`` whose axes are in ``Auto`` mode (the compiler places collectives).
    """
    all_devices = jax.devices()
    if devices is None:
        devs = list(all_devices)
    elif isinstance(devices, int):
        if not 1 <= devices <= len(all_devices):
            raise ValueError(
                f"make_mesh: devices={devices} but {len(all_devices)} are available; pass a "
                "number in that range (simulate more CPU devices with XLA_FLAGS="
                "--xla_force_host_platform_device_count=N, set before JAX starts)."
            )
        devs = list(all_devices[:devices])
    else:
        devs = list(devices)
    names = tuple(axis_names)
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"make_mesh: axis_names must be distinct and non-empty; got {names}.")
    n = len(devs)
    if shape is None:
        dims = [n] + [1] * (len(names) - 1)
    else:
        dims = [int(s) for s in shape]
        if len(dims) != len(names):
            raise ValueError(
                f"make_mesh: shape {tuple(shape)} has {len(dims)} axes but axis_names {names} "
                f"has {len(names)}; give one size per axis."
            )
        if dims.count(-1) > 1 or any(d == 0 or d < -1 for d in dims):
            raise ValueError(
                f"make_mesh: shape entries must be positive, with at most one -1; got {dims}."
            )
        if -1 in dims:
            rest = int(np.prod([d for d in dims if d != -1]))
            if n % rest:
                raise ValueError(
                    f"make_mesh: cannot fill -1 in shape {tuple(shape)}: {n} devices are not "
                    f"divisible by {rest}."
                )
            dims[dims.index(-1)] = n // rest
    if int(np.prod(dims)) != n:
        raise ValueError(
            f"make_mesh: shape {tuple(dims)} needs {int(np.prod(dims))} devices but {n} are "
            "given; change the shape (use -1 for 'the rest') or pass devices=..."
        )
    return jax.make_mesh(tuple(dims), names, axis_types=(AxisType.Auto,) * len(names), devices=devs)


def _auto(mesh: Mesh) -> Mesh:
    """The same mesh with every axis in ``Auto`` mode.

    ``shard_map`` in ``Explicit`` mode requires inputs already laid out as its ``in_specs``; the
    FSDP-sharded meta-parameters are not (they are all-gathered at the boundary), and in ``Auto``
    mode the compiler inserts that all-gather for us.
    """
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    """How a meta-training step is laid out on a mesh.

    Attributes:
      mesh: the device mesh.
      params: ``"replicate"`` (every device holds the meta-parameters and outer optimiser state)
        or ``"fsdp"`` (each leaf is split along ``model_axis`` on its largest dimension that the
        axis size divides; leaves with no such dimension are replicated).
      data_axis: mesh axis that splits the meta-batch of tasks.
      model_axis: mesh axis that splits the meta-parameters in ``"fsdp"`` mode.
    """

    mesh: Mesh
    params: str = "replicate"
    data_axis: str = DATA_AXIS
    model_axis: str = MODEL_AXIS

    def __post_init__(self) -> None:
        if not isinstance(self.mesh, Mesh):
            raise TypeError(
                f"ShardingPlan: mesh must be a jax.sharding.Mesh (see make_mesh); got "
                f"{type(self.mesh).__name__}."
            )
        if self.params not in PARAM_MODES:
            raise ValueError(
                f"ShardingPlan: params must be one of {PARAM_MODES}; got {self.params!r}."
            )
        if self.data_axis not in self.mesh.axis_names:
            raise ValueError(
                f"ShardingPlan: data_axis {self.data_axis!r} is not an axis of the mesh "
                f"{self.mesh.axis_names}; build the mesh with make_mesh(shape, axis_names=...) or "
                "pass data_axis=..."
            )
        if self.params == "fsdp" and self.model_axis not in self.mesh.axis_names:
            raise ValueError(
                f"ShardingPlan: params='fsdp' shards along model_axis {self.model_axis!r}, which "
                f"is not an axis of the mesh {self.mesh.axis_names}; add it or pass model_axis=..."
            )
        object.__setattr__(self, "mesh", _auto(self.mesh))

    @property
    def data_size(self) -> int:
        """Number of devices along the data axis (the meta-batch must be a multiple of it)."""
        return int(self.mesh.shape[self.data_axis])

    @property
    def model_size(self) -> int:
        """Number of devices along the model axis (1 when the mesh has none)."""
        return int(self.mesh.shape.get(self.model_axis, 1))

    def replicated(self) -> NamedSharding:
        """The sharding of a value held whole by every device."""
        return NamedSharding(self.mesh, P())

    def param_spec(self, shape: Sequence[int]) -> P:
        """The partition spec of one meta-parameter (or optimiser state) leaf of ``shape``."""
        if self.params != "fsdp":
            return P()
        return fsdp_spec(shape, self.model_size, self.model_axis)

    def param_shardings(self, tree: PyTree) -> PyTree:
        """``NamedSharding`` for each leaf of meta-parameters or an outer optimiser state."""
        return jax.tree.map(lambda x: NamedSharding(self.mesh, self.param_spec(np.shape(x))), tree)

    def task_shardings(self, tree: PyTree, name: str = "tasks") -> PyTree:
        """``NamedSharding`` splitting the leading (task) axis of every leaf along the data axis.

        Raises:
          ValueError: when a leaf's leading axis is not a multiple of the data axis size.
        """
        d = self.data_size
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            shape = np.shape(leaf)
            if not shape or shape[0] % d:
                got = "a scalar" if not shape else f"{shape[0]} tasks (shape {shape})"
                raise ValueError(
                    f"{name}{jax.tree_util.keystr(path)}: the meta-batch must be split evenly "
                    f"along the {self.data_axis!r} mesh axis of size {d}; got {got}. Use a "
                    f"meta-batch that is a multiple of {d}, or a mesh with a smaller "
                    f"{self.data_axis!r} axis (e.g. make_mesh(({_fitting_data_axis(shape, self.mesh.size)}, -1)))."
                )
        return jax.tree.map(lambda _: NamedSharding(self.mesh, P(self.data_axis)), tree)

    def put_params(self, tree: PyTree) -> PyTree:
        """Places meta-parameters (or an outer optimiser state) on the mesh."""
        return put(tree, self.param_shardings(tree))

    def put_tasks(self, tree: PyTree) -> PyTree:
        """Places a meta-batch of tasks (leading axis) on the mesh, split along the data axis."""
        return put(tree, self.task_shardings(tree))

    def vary(self, tree: PyTree) -> PyTree:
        """Inside ``shard_map``: marks values as differing along the data axis (see module doc)."""
        return jax.tree.map(lambda x: jax.lax.pcast(x, self.data_axis, to="varying"), tree)


def fsdp_spec(shape: Sequence[int], axis_size: int, axis_name: str = MODEL_AXIS) -> P:
    """FSDP rule: split the largest dimension that ``axis_size`` divides; else replicate.

    Args:
      shape: the leaf's shape.
      axis_size: number of devices along the sharding axis.
      axis_name: the mesh axis to split along.

    Returns:
      A ``PartitionSpec`` naming ``axis_name`` at most once (``P()``: replicated).
    """
    if axis_size == 1:
        return P()
    # The largest dimension that splits evenly saves the most memory per leaf, without padding;
    # ties go to the first such dimension.
    candidates = [(d, -i) for i, d in enumerate(shape) if d % axis_size == 0 and d >= axis_size]
    if not candidates:
        return P()
    _, neg_axis = max(candidates)
    spec: list[str | None] = [None] * len(shape)
    spec[-neg_axis] = axis_name
    return P(*spec)


def _fitting_data_axis(shape: tuple[int, ...], n_devices: int) -> int:
    """A data-axis size that divides both the meta-batch and the device count (for the hint)."""
    return math.gcd(shape[0] if shape else 1, n_devices)


def put(tree: PyTree, shardings: PyTree) -> PyTree:
    """Places each leaf of ``tree`` with its sharding; leaves already placed so are kept as they are.

    Host values (numpy) are cut into shards on the host, so this works with several processes as
    long as every process passes the same global value.
    """

    def one(x: Any, sharding: NamedSharding) -> jax.Array:
        if isinstance(x, jax.Array):
            if x.sharding.is_equivalent_to(sharding, x.ndim):
                return x
            if x.is_fully_addressable:
                return jax.device_put(x, sharding)
            x = _to_host(x)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


# -- sharded meta-training steps ------------------------------------------------------------------


class ShardedMetaStep:
    """A meta-training step jitted with the shardings of a :class:`ShardingPlan`.

    ``step(meta, outer_state, *tasks, **data) -> (meta, outer_state, metrics)``. Positional and
    keyword data carry a leading meta-batch axis and are split along the data axis, except the
    keyword arguments named in ``shared`` (same value for every task), which are replicated.
    Inputs are placed on the mesh before the call (a no-op for outputs of the previous step), so
    host arrays, e.g. restored from a checkpoint, can be passed directly.

    ``step.value_and_grad(meta, *tasks, **data) -> (value, meta_grad)`` is the same sharded
    program without the optimiser update, and ``step.lower(...)`` lowers the step for XLA's
    memory and cost analyses (per device).
    """

    def __init__(
        self,
        per_task: Callable[..., tuple[jax.Array, Any]],
        outer_optimizer: optax.GradientTransformation,
        plan: ShardingPlan,
        *,
        finish: Callable[[jax.Array, Any], Any],
        shared: Collection[str] = (),
    ) -> None:
        self.plan = plan
        self.outer_optimizer = outer_optimizer
        self.shared = frozenset(shared)
        self._per_task = per_task
        self._finish = finish
        self._cache: dict[Any, Any] = {}

    # The objective: the mean over tasks of per-task values computed on each device's own tasks.
    def _objective(self, meta: Meta, args: tuple, kwargs: dict, shared: dict) -> tuple[Any, Any]:
        plan = self.plan
        data_spec = P(plan.data_axis)

        def local(meta: Meta, args: tuple, kwargs: dict, shared: dict) -> tuple[Any, Any]:
            # Differ per device, so that inner gradients are not summed across devices.
            meta = plan.vary(meta)
            shared = plan.vary(shared)
            return self._per_task(meta, *args, **kwargs, **shared)

        values, aux = jax.shard_map(
            local,
            mesh=plan.mesh,
            in_specs=(P(), data_spec, data_spec, P()),
            out_specs=data_spec,
        )(meta, args, kwargs, shared)
        return jnp.mean(values), (values, aux)

    def _value_and_grad(self, meta: Meta, args: tuple, kwargs: dict, shared: dict) -> Any:
        (value, (_, aux)), grads = jax.value_and_grad(self._objective, has_aux=True)(
            meta, args, kwargs, shared
        )
        return value, aux, grads

    def _step(self, meta: Meta, state: Any, args: tuple, kwargs: dict, shared: dict) -> Any:
        # The one meta-step (metagrad.meta_train_step), jitted here with the mesh's shardings.
        update = meta_train_step(
            lambda m, **d: self._objective(m, d["args"], d["kwargs"], d["shared"]),
            self.outer_optimizer,
            has_aux=True,
            return_grad=True,
            jit=False,
        )
        meta, state, value, (_, aux), grad = update(
            meta, state, args=args, kwargs=kwargs, shared=shared
        )
        out = self._finish(value, aux)
        if isinstance(out, dict):  # as the single-device few-shot step: which leaves are finite
            norm = optax.tree_utils.tree_norm(grad)
            out = {**out, "meta_grad_finite": leaf_finiteness(grad), "meta_grad_norm": norm}
        return meta, state, out

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        per = {k: v for k, v in kwargs.items() if k not in self.shared}
        shared = {k: v for k, v in kwargs.items() if k in self.shared}
        return per, shared

    def _jitted(self, kind: str, tree: Any, out_shardings: Any, in_shardings: Any) -> Any:
        key = (kind, jax.tree.structure(tree), tuple(_signature(x) for x in jax.tree.leaves(tree)))
        fn = self._cache.get(key)
        if fn is None:
            body = self._step if kind == "step" else self._vg_body
            fn = jax.jit(body, in_shardings=in_shardings, out_shardings=out_shardings)
            self._cache[key] = fn
        return fn

    def _vg_body(self, meta: Meta, args: tuple, kwargs: dict, shared: dict) -> Any:
        value, _, grads = self._value_and_grad(meta, args, kwargs, shared)
        return value, grads

    def _prepare_step(self, meta: Meta, state: Any, args: tuple, kwargs: dict) -> Any:
        plan = self.plan
        per, shared = self._split(kwargs)
        meta_sh, state_sh = plan.param_shardings(meta), plan.param_shardings(state)
        in_sh = (
            meta_sh,
            state_sh,
            plan.task_shardings(args, "tasks"),
            plan.task_shardings(per, "data"),
            jax.tree.map(lambda _: plan.replicated(), shared),
        )
        inputs = (meta, state, args, per, shared)
        placed = put(inputs, in_sh)
        out_sh = (meta_sh, state_sh, plan.replicated())
        return self._jitted("step", inputs, out_sh, in_sh), placed

    def __call__(self, meta: Meta, outer_state: Any, *tasks: Any, **data: Any) -> Any:
        """One meta-training step; returns ``(meta, outer_state, metrics)`` on the mesh."""
        fn, placed = self._prepare_step(meta, outer_state, tasks, data)
        return fn(*placed)

    def lower(self, meta: Meta, outer_state: Any, *tasks: Any, **data: Any) -> Any:
        """``jax.jit(...).lower`` of the step for these inputs.

        ``.compile()`` of the result is the sharded program; its ``memory_analysis()`` gives
        sizes per device. Call the compiled program with :meth:`place` of the same inputs.
        """
        fn, placed = self._prepare_step(meta, outer_state, tasks, data)
        return fn.lower(*placed)

    def place(self, meta: Meta, outer_state: Any, *tasks: Any, **data: Any) -> tuple[Any, ...]:
        """The inputs placed on the mesh, as the arguments of the program :meth:`lower` gives."""
        return self._prepare_step(meta, outer_state, tasks, data)[1]

    def value_and_grad(self, meta: Meta, *tasks: Any, **data: Any) -> tuple[jax.Array, Meta]:
        """The mean outer value over the meta-batch and its meta-gradient, sharded like the step.

        The gradient has the meta-parameters' sharding (replicated, or FSDP shards).
        """
        plan = self.plan
        per, shared = self._split(data)
        meta_sh = plan.param_shardings(meta)
        in_sh = (
            meta_sh,
            plan.task_shardings(tasks, "tasks"),
            plan.task_shardings(per, "data"),
            jax.tree.map(lambda _: plan.replicated(), shared),
        )
        inputs = (meta, tasks, per, shared)
        fn = self._jitted("value_and_grad", inputs, (plan.replicated(), meta_sh), in_sh)
        return fn(*put(inputs, in_sh))


def _signature(x: Any) -> tuple[Any, ...]:
    return (np.shape(x), str(jnp.result_type(x)))


def _plan(mesh: Mesh | ShardingPlan, params: str) -> ShardingPlan:
    if isinstance(mesh, ShardingPlan):
        return mesh
    return ShardingPlan(mesh, params=params)


def shard_meta_train_step(
    problem: Bilevel,
    outer_optimizer: optax.GradientTransformation,
    mesh: Mesh | ShardingPlan | None = None,
    *,
    params: str = "replicate",
    shared: Collection[str] = (),
) -> Callable[..., tuple[Meta, Any, jax.Array]]:
    """The meta-training step of a ``Bilevel`` problem over a meta-batch of tasks, on a mesh.

    The objective is the mean of ``problem.outer_value`` over the tasks: every keyword argument
    of ``Bilevel.value_and_grad`` (``outer_batch``, ``inner_batches`` / ``inner_batch``,
    ``params``) gets a leading task axis, except those named in ``shared``.

    Args:
      problem: the bilevel problem (one task).
      outer_optimizer: optax transformation of the meta-parameters.
      mesh: a mesh from :func:`make_mesh` (or a :class:`ShardingPlan`). ``None`` (default): the
        single-device step, ``jax.jit`` of ``jax.lax.map`` over the tasks, nothing sharded.
      params: ``"replicate"`` or ``"fsdp"`` (split meta-parameters and optimiser state along the
        mesh's ``"model"`` axis). Ignored when ``mesh`` is a ``ShardingPlan``.
      shared: names of keyword arguments that are the same for every task (no task axis), e.g.
        ``("params",)`` for fixed initial parameters.

    Returns:
      ``step(meta, outer_state, **data) -> (meta, outer_state, mean outer value)``; with a mesh,
      a :class:`ShardedMetaStep` (also ``step.value_and_grad(meta, **data)``).

    References:
      Finn et al., ICML 2017 (meta-batches of tasks); Rajbhandari et al., SC 2020 (FSDP).
    """
    if not isinstance(problem, Bilevel):
        raise TypeError(
            f"shard_meta_train_step: problem must be a metagrad.Bilevel; got "
            f"{type(problem).__name__}. For few-shot models use metagrad.fewshot.shard_fewshot_meta_step."
        )
    shared = frozenset(shared)

    def per_task(meta: Meta, **data: Any) -> tuple[jax.Array, None]:
        per = {k: v for k, v in data.items() if k not in shared}
        common = {k: v for k, v in data.items() if k in shared}
        values = jax.lax.map(lambda d: problem.outer_value(meta, **d, **common), per)
        return values, None

    if mesh is None:
        return meta_train_step(lambda m, **data: jnp.mean(per_task(m, **data)[0]), outer_optimizer)
    return ShardedMetaStep(
        per_task,
        outer_optimizer,
        _plan(mesh, params),
        finish=lambda value, aux: value,
        shared=shared,
    )


# -- memory -----------------------------------------------------------------------------------------


def bytes_per_device(tree: PyTree, shardings: PyTree | None = None) -> int:
    """Bytes of ``tree`` held by one device (the largest shard of each leaf), from its shardings.

    Args:
      tree: arrays (their own ``.sharding`` is used) or shapes with ``shardings`` given.
      shardings: optional shardings for the leaves of ``tree``.

    Returns:
      The per-device size in bytes.
    """
    if shardings is None:
        shardings = jax.tree.map(lambda x: x.sharding, tree)
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        shard = s.shard_shape(np.shape(x))
        total += int(np.prod(shard)) * jnp.dtype(jnp.result_type(x)).itemsize
    return total


def _to_host(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


__all__ = [
    "PARAM_MODES",
    "ShardedMetaStep",
    "ShardingPlan",
    "bytes_per_device",
    "fsdp_spec",
    "initialize",
    "make_mesh",
    "put",
    "shard_meta_train_step",
]

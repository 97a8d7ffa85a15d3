"""Runs the sharded meta-training steps on simulated CPU devices; run by ``test_distributed.py``.

The number of simulated devices is fixed when JAX starts (``XLA_FLAGS=
--xla_force_host_platform_device_count=N``), so this runs in a subprocess that the test starts
with the flag set. One process runs every mesh shape (JAX start-up and compilation dominate).

    python tests/distributed_worker.py meshes OUT_DIR      # 8 devices: 1x8, 2x4, 8x1, checkpoint
    python tests/distributed_worker.py restore OUT_DIR     # 2 devices: restore, continue
    python tests/distributed_worker.py multihost OUT_DIR   # 2 processes x 2 devices (loopback)

Writes ``OUT_DIR/<phase>.json``: the largest relative error of every comparison, by name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metagrad import Bilevel, checkpoints, distributed
from metagrad.fewshot import (
    make_algorithm,
    make_meta_step,
    meta_batch_loss,
    shard_fewshot_meta_step,
)
from metagrad.models import MLP

STEPS = 3  # meta-training steps compared on each mesh
META_BATCH = 8
MESHES = {  # name: (shape of (data, model), params mode)
    "8x1-replicate": ((8, 1), "replicate"),
    "2x4-fsdp": ((2, 4), "fsdp"),
    "1x8-fsdp": ((1, 8), "fsdp"),
}


def rel_error(a: Any, b: Any) -> float:
    """Largest leaf-wise relative error ``|a - b| / |b|`` (Frobenius norms) over two pytrees."""
    errs = []
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        errs.append(float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)))
    return max(errs)


def fewshot_setup() -> tuple[Any, ...]:
    """A tiny 3-way MLP few-shot problem: model, algorithm, outer optimiser, meta, tasks(t)."""
    net = MLP((4, 16, 16, 3), activation="tanh")
    alg = make_algorithm("maml", steps=2, inner_lr=0.3)
    outer = optax.adam(3e-2)
    meta = alg.init_meta(net.init(jax.random.PRNGKey(0)))

    def tasks(t: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng(t)
        labels_s = np.tile(np.arange(3).repeat(2), (META_BATCH, 1)).astype(np.int32)
        labels_q = np.tile(np.arange(3).repeat(3), (META_BATCH, 1)).astype(np.int32)
        centres = rng.normal(size=(META_BATCH, 3, 4)).astype(np.float32)
        sx = centres[:, labels_s[0]] + 0.5 * rng.normal(size=(META_BATCH, 6, 4))
        qx = centres[:, labels_q[0]] + 0.5 * rng.normal(size=(META_BATCH, 9, 4))
        return sx.astype(np.float32), labels_s, qx.astype(np.float32), labels_q

    return net, alg, outer, meta, tasks


def bilevel_setup() -> tuple[Any, ...]:
    """MAML with a meta-learned inner learning rate, written directly as a ``Bilevel`` problem."""
    net = MLP((3, 16, 1), activation="tanh")

    def loss(p: Any, meta: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        del meta
        return jnp.mean((net.apply(p, batch[0]) - batch[1]) ** 2)

    problem = Bilevel(
        inner_loss=loss,
        outer_loss=loss,
        inner_optimizer=lambda m: optax.sgd(m["lr"]),
        steps=2,
        init_params=lambda m: m["params"],
    )
    meta = {"params": net.init(jax.random.PRNGKey(1)), "lr": jnp.asarray(0.1, jnp.float32)}

    def data(t: int) -> dict[str, Any]:
        rng = np.random.default_rng(100 + t)
        w = rng.normal(size=(META_BATCH, 3, 1)).astype(np.float32)
        xs = rng.normal(size=(META_BATCH, 10, 3)).astype(np.float32)
        ys = np.tanh(np.einsum("bnd,bdo->bno", xs, w)).astype(np.float32)
        return {"inner_batch": (xs[:, :5], ys[:, :5]), "outer_batch": (xs[:, 5:], ys[:, 5:])}

    return problem, optax.adam(1e-2), meta, data


def weight_decay_setup() -> tuple[Any, ...]:
    """Learned weight decay with fixed initial parameters shared by every task (``shared``)."""
    net = MLP((3, 8, 1), activation="tanh")

    def inner(p: Any, meta: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        mse = jnp.mean((net.apply(p, batch[0]) - batch[1]) ** 2)
        l2 = sum(jnp.sum(x**2) for x in jax.tree.leaves(p))
        return mse + jnp.exp(meta["log_wd"]) * l2

    def outer(p: Any, meta: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        return jnp.mean((net.apply(p, batch[0]) - batch[1]) ** 2)

    problem = Bilevel(inner, outer, optax.sgd(0.2), steps=3)
    meta = {"log_wd": jnp.asarray(-2.0, jnp.float32)}
    params = net.init(jax.random.PRNGKey(2))
    return problem, optax.sgd(0.5), meta, params


def run_steps(step: Any, meta: Any, state: Any, batches: list[Any]) -> tuple[Any, Any, list]:
    values = []
    for b in batches:
        if isinstance(b, dict):
            meta, state, v = step(meta, state, **b)
        else:
            meta, state, v = step(meta, state, b)
        values.append(v)
    return meta, state, values


def phase_meshes(out: Path) -> dict[str, float]:
    assert jax.device_count() == 8, jax.devices()
    errors: dict[str, float] = {}

    # Few-shot (MAML, tiny MLP): single-device reference = the unchanged make_meta_step.
    net, alg, outer, meta0, tasks = fewshot_setup()
    batches = [tasks(t) for t in range(STEPS)]
    ref_step = make_meta_step(net, alg, outer)
    ref_value, ref_grad = jax.jit(
        jax.value_and_grad(lambda m, t: meta_batch_loss(net, alg, m, t)[0])
    )(meta0, batches[0])
    ref_meta, ref_state, ref_metrics = run_steps(ref_step, meta0, outer.init(meta0), batches)
    for name, (shape, mode) in MESHES.items():
        mesh = distributed.make_mesh(shape)
        step = shard_fewshot_meta_step(net, alg, outer, mesh, params=mode)
        value, grad = step.value_and_grad(meta0, batches[0])
        errors[f"fewshot/{name}/value"] = rel_error(value, ref_value)
        errors[f"fewshot/{name}/meta-grad"] = rel_error(grad, ref_grad)
        meta, state, metrics = run_steps(step, meta0, outer.init(meta0), batches)
        errors[f"fewshot/{name}/meta-after-{STEPS}-steps"] = rel_error(meta, ref_meta)
        errors[f"fewshot/{name}/adam-state"] = rel_error(state, ref_state)
        errors[f"fewshot/{name}/losses"] = rel_error(
            [m["loss"] for m in metrics], [m["loss"] for m in ref_metrics]
        )
        if mode == "fsdp":
            # The largest axis of the 16x16 hidden weight is split 4 or 8 ways: really sharded.
            spec = meta["params"][1]["w"].sharding.spec
            assert "model" in tuple(spec), spec

    # A meta-batch that the data axis does not divide: a ValueError that says what to do.
    step = shard_fewshot_meta_step(net, alg, outer, distributed.make_mesh((8, 1)))
    try:
        step(meta0, outer.init(meta0), tuple(x[:6] for x in batches[0]))
    except ValueError as err:
        assert "multiple of 8" in str(err) and "make_mesh((2, -1))" in str(err), err
        errors["checks/indivisible-meta-batch-error"] = 0.0

    # Bilevel API: MAML with a learned learning rate, every argument with a task axis.
    problem, outer_b, bmeta0, data = bilevel_setup()
    bbatches = [data(t) for t in range(STEPS)]
    single = distributed.shard_meta_train_step(problem, outer_b)  # mesh=None: one device
    bref_meta, _, bref_values = run_steps(single, bmeta0, outer_b.init(bmeta0), bbatches)
    bref_value, bref_grad = jax.jit(
        jax.value_and_grad(
            lambda m: jnp.mean(jax.lax.map(lambda d: problem.outer_value(m, **d), bbatches[0]))
        )
    )(bmeta0)
    # The single-device step's first value is the mean outer value at meta0.
    errors["bilevel/1x1/value"] = rel_error(bref_values[0], bref_value)
    for name, (shape, mode) in MESHES.items():
        mesh = distributed.make_mesh(shape)
        step = distributed.shard_meta_train_step(problem, outer_b, mesh, params=mode)
        value, grad = step.value_and_grad(bmeta0, **bbatches[0])
        errors[f"bilevel/{name}/value"] = rel_error(value, bref_value)
        errors[f"bilevel/{name}/meta-grad"] = rel_error(grad, bref_grad)
        meta, _, values = run_steps(step, bmeta0, outer_b.init(bmeta0), bbatches)
        errors[f"bilevel/{name}/meta-after-{STEPS}-steps"] = rel_error(meta, bref_meta)
        errors[f"bilevel/{name}/values"] = rel_error(values, bref_values)

    # Shared (replicated) keyword arguments: fixed initial parameters, per-task data.
    problem, outer_w, wmeta0, params = weight_decay_setup()
    wdata = bbatches[0]
    single = distributed.shard_meta_train_step(problem, outer_w, shared=("params",))
    wref_meta, _, wref_values = run_steps(
        single, wmeta0, outer_w.init(wmeta0), [dict(wdata, params=params)] * 2
    )
    step = distributed.shard_meta_train_step(
        problem, outer_w, distributed.make_mesh((4, 2)), shared=("params",)
    )
    wmeta, _, wvalues = run_steps(
        step, wmeta0, outer_w.init(wmeta0), [dict(wdata, params=params)] * 2
    )
    errors["shared-params/4x2/meta"] = rel_error(wmeta, wref_meta)
    errors["shared-params/4x2/values"] = rel_error(wvalues, wref_values)

    # Checkpoint from the 8-device 2x4 FSDP run after 2 steps; the reference continues here.
    mesh = distributed.make_mesh((2, 4))
    step = shard_fewshot_meta_step(net, alg, outer, mesh, params="fsdp")
    meta, state, _ = run_steps(step, meta0, outer.init(meta0), [tasks(t) for t in range(2)])
    # Each of the 8 devices' shards is written as it is (orbax), nothing gathered to the host.
    assert not meta_is_replicated(meta), "the FSDP meta-parameters should be sharded"
    checkpoints.save_checkpoint(out / "ckpt", {"meta": meta, "opt_state": state}, step=2)
    meta, state, metrics = run_steps(step, meta, state, [tasks(t) for t in range(2, 4)])
    checkpoints.save_checkpoint(
        out / "final8", {"meta": meta, "losses": jnp.stack([m["loss"] for m in metrics])}, step=4
    )
    errors.update(fewshot_trainer(out / "trainer"))
    return errors


def fewshot_trainer(out: Path) -> dict[str, float]:
    """``metagrad.fewshot.training.train`` with a mesh equals the single-device run, and a run
    checkpointed on 4 devices continues on 2 (FSDP) with the same metrics."""
    from metagrad.data import ClassDataset, Splits
    from metagrad.fewshot.training import TrainConfig, train

    rng = np.random.default_rng(0)

    def dataset(n_classes: int) -> ClassDataset:
        images = rng.integers(0, 255, (n_classes, 6, 8, 8, 1), dtype=np.uint8)
        return ClassDataset.from_grid(images, [f"c{i}" for i in range(n_classes)])

    splits = Splits(dataset(8), dataset(5), dataset(5))
    config = TrainConfig(
        ways=3, shots=1, queries=2, steps=2, meta_batch=4, iterations=4, channels=4, n_blocks=2,
        val_every=2, val_tasks=4, checkpoint_every=2,
    )  # fmt: skip
    short = TrainConfig(**{**config.__dict__, "iterations": 2})

    def metrics(folder: Path) -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in x.items() if k != "time_s"} for x in lines]

    def numbers(lines: list[dict[str, Any]]) -> list[float]:
        return [float(v) for x in lines for k, v in sorted(x.items()) if k != "kind"]

    quiet = {"splits": splits, "show_progress": False}
    train(config, out / "single", **quiet)
    train(config, out / "4x1", mesh=distributed.make_mesh((4, 1), devices=4), **quiet)
    train(short, out / "resumed", mesh=distributed.make_mesh((4, 1), devices=4), **quiet)
    train(config, out / "resumed", mesh=distributed.make_mesh((1, 2), devices=2), params="fsdp",
          **quiet)  # fmt: skip
    reference = metrics(out / "single")
    assert [x["step"] for x in reference] == [1, 2, 2, 3, 4, 4], reference
    errors = {}
    for name in ("4x1", "resumed"):
        lines = metrics(out / name)
        assert [x["step"] for x in lines] == [x["step"] for x in reference], lines
        errors[f"trainer/{name}/metrics"] = rel_error(numbers(lines), numbers(reference))
    return errors


def meta_is_replicated(meta: Any) -> bool:
    return all(x.sharding.is_fully_replicated for x in jax.tree.leaves(meta))


def phase_restore(out: Path) -> dict[str, float]:
    assert jax.device_count() == 2, jax.devices()
    net, alg, outer, meta0, tasks = fewshot_setup()
    fresh = {"meta": meta0, "opt_state": outer.init(meta0)}
    final8 = checkpoints.load_checkpoint(out / "final8").state  # no target: host numpy arrays
    errors: dict[str, float] = {}
    candidates = {
        "2x1-replicate": shard_fewshot_meta_step(net, alg, outer, distributed.make_mesh((2, 1))),
        "1x2-fsdp": shard_fewshot_meta_step(
            net, alg, outer, distributed.make_mesh((1, 2)), params="fsdp"
        ),
        "single-device": make_meta_step(net, alg, outer),
    }
    for name, step in candidates.items():
        # The target gives the structure (Adam's NamedTuples) and the placement: on the 2-device
        # mesh each device reads its own shards of the 8-device checkpoint; on one device, whole.
        target = step.plan.put_params(fresh) if hasattr(step, "plan") else fresh
        ckpt = checkpoints.load_checkpoint(out / "ckpt", target=target)
        assert ckpt.step == 2
        meta, state = ckpt.state["meta"], ckpt.state["opt_state"]
        assert jax.tree.structure(state) == jax.tree.structure(fresh["opt_state"])
        if name == "1x2-fsdp":
            assert not meta_is_replicated(meta), "restored onto the 1x2 FSDP shardings"
        meta, _, metrics = run_steps(step, meta, state, [tasks(t) for t in range(2, 4)])
        errors[f"restore-8-on-{name}/meta"] = rel_error(meta, final8["meta"])
        errors[f"restore-8-on-{name}/losses"] = rel_error(
            np.stack([m["loss"] for m in metrics]), final8["losses"]
        )
    return errors


def phase_multihost(out: Path) -> dict[str, float]:
    """One of two processes (``JAX_PROCESS_ID``), 2 CPU devices each: a 2x2 FSDP mesh."""
    assert distributed.initialize(), "JAX_COORDINATOR_ADDRESS etc. are not set"
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    net, alg, outer, meta0, tasks = fewshot_setup()
    step = shard_fewshot_meta_step(net, alg, outer, distributed.make_mesh((2, 2)), params="fsdp")
    meta, state, metrics = run_steps(step, meta0, outer.init(meta0), [tasks(t) for t in range(2)])
    losses = [float(m["loss"]) for m in metrics]  # replicated: readable on every process
    # Each process writes its own shards; loading is collective too (every process calls it).
    checkpoints.save_checkpoint(out / "multihost", {"meta": meta}, step=2)
    saved = checkpoints.load_checkpoint(out / "multihost")
    if jax.process_index() != 0:
        return {}
    written = sorted(p.name for p in (out / "multihost" / "2" / "state").glob("ocdbt.process_*"))
    assert written == ["ocdbt.process_0", "ocdbt.process_1"], written  # each its own shards
    # The reference: the unchanged single-device step on this process's first device.
    ref_meta, _, ref_metrics = run_steps(
        make_meta_step(net, alg, outer), meta0, outer.init(meta0), [tasks(t) for t in range(2)]
    )
    return {
        "multihost/2x2-fsdp/meta": rel_error(saved.state["meta"], ref_meta),
        "multihost/2x2-fsdp/losses": rel_error(losses, [m["loss"] for m in ref_metrics]),
    }


def main(argv: list[str]) -> int:
    phase, out = argv[0], Path(argv[1])
    phases = {"meshes": phase_meshes, "restore": phase_restore, "multihost": phase_multihost}
    errors = phases[phase](out)
    if not errors:  # a process other than 0 of a multi-process phase
        return 0
    (out / f"{phase}.json").write_text(json.dumps(errors, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``metagrad.distributed``: sharded meta-training equals the single-device results.

The sharded runs need several devices, and the number of simulated CPU devices is fixed when JAX
starts, so they run in subprocesses (``tests/distributed_worker.py``) started with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``: one with 8 devices runs every mesh shape
and writes a checkpoint, one with 2 devices restores it, and two processes with 2 devices each
run one mesh over loopback (``jax.distributed.initialize``). The tests here read their figures.
Float32 throughout; tolerance: relative error 1e-5 (the sums over tasks are reordered by the
all-reduce, nothing else changes).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metagrad import Bilevel, checkpoints, distributed
from metagrad.cli import distributed_args, main

WORKER = Path(__file__).with_name("distributed_worker.py")
TOL = 1e-5


def _start(phase: str, devices: int, out: Path, **env_vars: str) -> subprocess.Popen:
    env = dict(os.environ)
    # Keep the suite's XLA flags (conftest lowers the optimisation level) and add the devices.
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.update(env_vars)
    return subprocess.Popen(
        [sys.executable, str(WORKER), phase, str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, phase: str, out: Path) -> dict[str, float]:
    try:
        output, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    assert proc.returncode == 0, f"{phase} worker failed:\n{output}"
    path = out / f"{phase}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    out = tmp_path_factory.mktemp("distributed")
    # Two processes (2 CPU devices each) over loopback, started first: JAX compiles on one core,
    # so they overlap with the single-process phases.
    coordinator = {
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}",
        "JAX_NUM_PROCESSES": "2",
    }
    hosts = [_start("multihost", 2, out, JAX_PROCESS_ID=str(i), **coordinator) for i in range(2)]
    errors = _finish(_start("meshes", 8, out), "meshes", out)
    errors.update(_finish(_start("restore", 2, out), "restore", out))
    for proc in hosts:
        errors.update(_finish(proc, "multihost", out))
    return errors


def _check(figures: dict[str, float], prefix: str, expected: int) -> None:
    selected = {k: v for k, v in figures.items() if k.startswith(prefix)}
    assert len(selected) == expected, sorted(figures)
    bad = {k: v for k, v in selected.items() if not v <= TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


@pytest.mark.parametrize("mesh", ["8x1-replicate", "2x4-fsdp", "1x8-fsdp"])
def test_fewshot_meta_grad_and_steps_equal_single_device(figures, mesh):
    # value, meta-gradient, meta-parameters and Adam state after 3 steps, the 3 losses.
    _check(figures, f"fewshot/{mesh}/", 5)


@pytest.mark.parametrize("mesh", ["8x1-replicate", "2x4-fsdp", "1x8-fsdp"])
def test_bilevel_meta_grad_and_steps_equal_single_device(figures, mesh):
    _check(figures, f"bilevel/{mesh}/", 4)


def test_bilevel_single_device_step_and_shared_arguments(figures):
    _check(figures, "bilevel/1x1/", 1)
    _check(figures, "shared-params/", 2)
    _check(figures, "checks/", 1)  # the indivisible meta-batch error (6 tasks on 8 devices)


def test_checkpoint_from_8_devices_restores_on_2_and_1(figures):
    # Written after 2 steps on a 2x4 FSDP mesh; 2 more steps on 2 devices (replicated, FSDP) and
    # on one device (the unchanged make_meta_step) give the 8-device run's numbers.
    _check(figures, "restore-8-on-", 6)


def test_fewshot_trainer_on_a_mesh_equals_single_device_and_resumes_on_fewer(figures):
    # metagrad.fewshot.training.train(mesh=...): 4 meta-steps with validation on a 4x1 mesh equal
    # the single-device run; a run checkpointed on 4 devices and continued on 2 (FSDP) as well.
    _check(figures, "trainer/", 2)


def test_two_processes_over_loopback_equal_single_device(figures):
    # jax.distributed.initialize from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
    # a 2x2 FSDP mesh over 2 processes x 2 CPU devices (gloo collectives); 2 meta-steps and a
    # checkpoint gathered from both processes equal the single-device run.
    _check(figures, "multihost/", 2)


# -- in-process checks (one device is enough) ------------------------------------------------------


def test_make_mesh_shapes_and_errors():
    n = jax.device_count()
    assert distributed.make_mesh().shape == {"data": n, "model": 1}
    assert distributed.make_mesh((1, -1)).shape == {"data": 1, "model": n}
    with pytest.raises(ValueError, match="needs 2 devices but 1 are given"):
        distributed.make_mesh((2, 1), devices=1)
    with pytest.raises(ValueError, match="devices=99 but"):
        distributed.make_mesh(devices=99)
    with pytest.raises(ValueError, match="one size per axis"):
        distributed.make_mesh((1,))


def test_fsdp_spec_splits_the_largest_divisible_axis():
    spec = jax.sharding.PartitionSpec
    assert distributed.fsdp_spec((8, 12), 4) == spec(None, "model")
    assert distributed.fsdp_spec((8, 6), 4) == spec("model", None)
    assert distributed.fsdp_spec((8, 8), 4) == spec("model", None)  # ties: the first axis
    assert distributed.fsdp_spec((3, 5), 4) == spec()  # nothing divides: replicated
    assert distributed.fsdp_spec((), 4) == spec()
    assert distributed.fsdp_spec((8, 12), 1) == spec()
    plan = distributed.ShardingPlan(distributed.make_mesh(devices=1), params="fsdp")
    assert plan.param_spec((8, 4)) == spec()  # a model axis of size 1 splits nothing


def test_errors_name_the_argument():
    mesh = distributed.make_mesh(devices=1)
    with pytest.raises(ValueError, match="params must be one of"):
        distributed.ShardingPlan(mesh, params="zero3")
    with pytest.raises(ValueError, match="data_axis 'batch' is not an axis"):
        distributed.ShardingPlan(mesh, data_axis="batch")
    with pytest.raises(ValueError, match=r"tasks\[0\]: the meta-batch must be split evenly"):
        distributed.ShardingPlan(mesh).task_shardings((np.float32(1.0),))
    with pytest.raises(TypeError, match="problem must be a metagrad.Bilevel"):
        distributed.shard_meta_train_step(lambda m: m, optax.sgd(0.1), mesh)


def test_command_line_flags(capsys):
    parser = argparse.ArgumentParser()
    distributed_args.add_arguments(parser)
    args = parser.parse_args(["--mesh", "1x-1", "--params", "fsdp"])
    assert distributed_args.mesh_from_args(args).shape == {"data": 1, "model": jax.device_count()}
    assert args.params == "fsdp" and args.process_id is None
    with pytest.raises(ValueError, match="--mesh expects DATAxMODEL"):
        distributed_args.mesh_from_args(parser.parse_args(["--mesh", "4"]))
    with pytest.raises(SystemExit, match="--meta-batch 6 must be a multiple of every device"):
        main(["bench", "scale", "--devices", "1,4", "--meta-batch", "6"])
    with pytest.raises(SystemExit):
        main(["fewshot", "train", "--out", "unused", "--devices", "0"])
    assert "argument --devices: must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=f"devices=99 but {jax.device_count()} are available"):
        main(["fewshot", "train", "--out", "unused", "--devices", "99"])
    with pytest.raises(SystemExit, match="--strategies takes a comma-separated subset"):
        main(["bench", "scale", "--strategies", "pipeline"])


def test_initialize_reads_environment(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False  # nothing configured: one process
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    with pytest.raises(ValueError, match="num_processes"):
        distributed.initialize()
    with pytest.raises(ValueError, match=r"process_id must be in \[0, num_processes\)"):
        distributed.initialize(num_processes=2, process_id=2)


def test_one_device_mesh_matches_meta_train_step_style_step(tmp_path):
    # In-process: a 1-device mesh, a checkpoint round trip and the bytes-per-device helper.
    problem = Bilevel(
        inner_loss=lambda p, m, b: jnp.mean((p * b - 1.0) ** 2) + m["wd"] * jnp.sum(p**2),
        outer_loss=lambda p, m, b: jnp.mean((p * b - 1.0) ** 2),
        inner_optimizer=optax.sgd(0.1),
        steps=2,
        init_params=lambda m: m["p"],
    )
    meta = {"p": jnp.ones((4,)), "wd": jnp.asarray(0.1)}
    data = {"inner_batch": jnp.arange(8.0).reshape(2, 4), "outer_batch": jnp.ones((2, 4))}
    outer = optax.sgd(0.1)
    single = distributed.shard_meta_train_step(problem, outer)
    sharded = distributed.shard_meta_train_step(problem, outer, distributed.make_mesh(devices=1))
    a = single(meta, outer.init(meta), **data)
    b = sharded(meta, outer.init(meta), **data)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    checkpoints.save_checkpoint(tmp_path / "c", {"meta": b[0]}, step=1)
    restored = checkpoints.load_checkpoint(tmp_path / "c").state
    assert isinstance(restored["meta"]["p"], np.ndarray)
    np.testing.assert_array_equal(restored["meta"]["p"], b[0]["p"])
    assert distributed.bytes_per_device(b[0]) == 5 * 4

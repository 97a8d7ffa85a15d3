"""``metagrad bench scale``: step time and per-device memory of the sharded meta-training step.

For each device count ``n`` and strategy:

* ``data``: mesh ``(n, 1)``, the meta-batch of tasks split along ``"data"``, meta-parameters
  replicated (data parallelism over tasks);
* ``params``: mesh ``(1, n)``, meta-parameters and the outer optimiser state split FSDP-style
  along ``"model"``, every device running every task (what parameter sharding alone saves);

the few-shot meta-training step (``metagrad.fewshot.shard_fewshot_meta_step``, MAML on conv4
or an MLP, random episodes) is compiled and XLA's memory analysis of the sharded program is read:
it is per device. The parameter bytes per device come from the shardings. Times are the median of
repeated runs after a warm-up.

Simulated CPU devices (``--xla_force_host_platform_device_count``) share the host's cores, so the
step time does not fall with more devices there; memory per device does. The number of devices is
fixed when JAX starts, so when this process has fewer devices than asked for, the measurement
runs in a subprocess started with that flag.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STRATEGIES: tuple[str, ...] = ("data", "params")
MODELS: tuple[str, ...] = ("conv4", "mlp")
MiB = 1024 * 1024


def run(
    devices: Sequence[int] = (1, 2, 4, 8),
    strategies: Sequence[str] = STRATEGIES,
    *,
    model: str = "conv4",
    channels: int = 64,
    hidden: int = 256,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    steps: int = 5,
    meta_batch: int = 8,
    repeats: int = 3,
) -> dict[str, Any]:
    """Measures every (device count, strategy); spawns a subprocess when devices are missing.

    Args:
      devices: device counts to measure.
      strategies: subset of ``STRATEGIES``.
      model: ``"conv4"`` (28x28 glyph-sized images) or ``"mlp"`` (two hidden layers of
        ``hidden`` units on 64 features).
      channels: conv4 channels.
      hidden: MLP width.
      ways, shots, queries: episode shape.
      steps: inner steps.
      meta_batch: tasks per meta-step; must be a multiple of every device count.
      repeats: timed runs after one warm-up.

    Returns:
      ``{"backend", "device_kind", "simulated", "rows": [...]}``; one row per measurement.
    """
    config = {
        "devices": [int(d) for d in devices],
        "strategies": list(strategies),
        "model": model,
        "channels": channels,
        "hidden": hidden,
        "ways": ways,
        "shots": shots,
        "queries": queries,
        "steps": steps,
        "meta_batch": meta_batch,
        "repeats": repeats,
    }
    for n in config["devices"]:
        if n < 1 or meta_batch % n:
            raise ValueError(
                f"bench scale: meta_batch={meta_batch} must be a multiple of every device count; "
                f"got devices {config['devices']}. Use e.g. --meta-batch {_lcm(devices)}."
            )
    import jax

    if jax.device_count() >= max(config["devices"]):
        return _measure_all(config)
    return _in_subprocess(config)


def _lcm(values: Sequence[int]) -> int:
    import math

    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


def _in_subprocess(config: dict[str, Any]) -> dict[str, Any]:
    """Runs the measurement in a fresh Python with enough simulated CPU devices."""
    n = max(config["devices"])
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    env["JAX_PLATFORMS"] = "cpu"  # simulated devices are CPU devices
    with tempfile.TemporaryDirectory() as tmp:
        cfg, out = Path(tmp) / "config.json", Path(tmp) / "result.json"
        cfg.write_text(json.dumps(config))
        proc = subprocess.run(
            [sys.executable, "-m", "metagrad.bench.scale", str(cfg), str(out)], env=env
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"bench scale: the measuring subprocess ({n} simulated devices) failed with exit "
                f"code {proc.returncode}; its error is printed above."
            )
        result = json.loads(out.read_text())
    result["simulated"] = True
    return result


def _measure_all(config: dict[str, Any]) -> dict[str, Any]:
    import jax

    from metagrad.bench.report import console

    rows = []
    for strategy in config["strategies"]:
        for n in config["devices"]:
            console.print(f"bench scale: {strategy} on {n} device(s) ...")
            rows.append(measure_one(config, n, strategy))
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "simulated": jax.default_backend() == "cpu" and len(devices) > 1,
        "config": config,
        "rows": rows,
    }


def _problem(config: dict[str, Any]) -> tuple[Any, Any, Any, Any, tuple[Any, ...]]:
    """Model, algorithm, outer optimiser, meta-parameters and a random meta-batch of episodes."""
    import jax
    import jax.numpy as jnp
    import optax

    from metagrad.fewshot import make_algorithm
    from metagrad.models import MLP, Conv4

    ways, b = config["ways"], config["meta_batch"]
    n_s, n_q = ways * config["shots"], ways * config["queries"]
    if config["model"] == "conv4":
        net = Conv4(n_classes=ways, channels=config["channels"])
        shape: tuple[int, ...] = (28, 28, 1)
    else:
        net = MLP((64, config["hidden"], config["hidden"], ways))
        shape = (64,)
    k_p, k_s, k_q = jax.random.split(jax.random.PRNGKey(0), 3)
    alg = make_algorithm("maml", steps=config["steps"], inner_lr=0.4)
    meta = alg.init_meta(net.init(k_p))
    tasks = (
        jax.random.uniform(k_s, (b, n_s, *shape)),
        jnp.tile(jnp.arange(ways, dtype=jnp.int32).repeat(config["shots"]), (b, 1)),
        jax.random.uniform(k_q, (b, n_q, *shape)),
        jnp.tile(jnp.arange(ways, dtype=jnp.int32).repeat(config["queries"]), (b, 1)),
    )
    return net, alg, optax.adam(1e-3), meta, tasks


def measure_one(config: dict[str, Any], n: int, strategy: str) -> dict[str, Any]:
    """Compiles and times the sharded step on ``n`` devices with ``strategy``; one table row."""
    import jax

    from metagrad import distributed
    from metagrad.bench.report import measure
    from metagrad.fewshot import shard_fewshot_meta_step

    if strategy not in STRATEGIES:
        raise ValueError(f"bench scale: strategy must be one of {STRATEGIES}; got {strategy!r}.")
    net, alg, outer, meta, tasks = _problem(config)
    shape = (n, 1) if strategy == "data" else (1, n)
    mode = "replicate" if strategy == "data" else "fsdp"
    mesh = distributed.make_mesh(shape, devices=n)
    step = shard_fewshot_meta_step(net, alg, outer, mesh, params=mode)
    state = outer.init(meta)
    timing = measure(
        step, step.place(meta, state, tasks), config["repeats"], lower_args=(meta, state, tasks)
    )
    plan = step.plan
    param_bytes = distributed.bytes_per_device(
        (meta, state), (plan.param_shardings(meta), plan.param_shardings(state))
    )
    full_param_bytes = distributed.bytes_per_device(
        (meta, state),
        jax.tree.map(lambda _: plan.replicated(), (meta, state)),
    )
    return {
        "strategy": strategy,
        "devices": n,
        "mesh": f"{shape[0]}x{shape[1]}",
        "params_mode": mode,
        "tasks_per_device": config["meta_batch"] // shape[0],
        "param_mib_per_device": param_bytes / MiB,
        "param_mib_total": full_param_bytes / MiB,
        **{k: v for k, v in timing.items() if k != "output"},
    }


def main(argv: list[str] | None = None) -> int:
    """Subprocess entry point: ``python -m metagrad.bench.scale CONFIG.json RESULT.json``."""
    argv = sys.argv[1:] if argv is None else argv
    config = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(_measure_all(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

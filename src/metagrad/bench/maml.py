"""``metagrad bench maml``: time of one second-order MAML meta-iteration on conv4.

The step is the one ``metagrad fewshot train`` runs (``fewshot.make_meta_step``: tasks mapped
with ``jax.lax.map``, mean query loss, ``jax.value_and_grad``, Adam), on random images of the
episode shape, for each differentiation mode and optionally a Lambda pattern.

Wall-clock on a shared machine depends on what else runs, so every row also reports the CPU time
the process used per step and the load average around the measurement
(:func:`metagrad.bench.report.measure`): ``cores_used`` is the number of cores the step got.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from metagrad.bench.report import measure
from metagrad.fewshot import Pattern, make_algorithm, make_meta_step
from metagrad.models import Conv4


def run(
    modes: list[str],
    *,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    steps: int = 5,
    meta_batch: int = 8,
    channels: int = 64,
    repeats: int = 3,
    patterns: list[str] | None = None,
    conv_impl: str = "auto",
) -> list[dict[str, Any]]:
    """Measures the compiled meta-step for every mode (and pattern); returns one row each."""
    net = Conv4(n_classes=ways, channels=channels, conv_impl=conv_impl)
    k_p, k_s, k_q = jax.random.split(jax.random.PRNGKey(0), 3)
    params = net.init(k_p)
    tasks = (
        jax.random.uniform(k_s, (meta_batch, ways * shots, 28, 28, 1)),
        jnp.tile(jnp.arange(ways, dtype=jnp.int32).repeat(shots), (meta_batch, 1)),
        jax.random.uniform(k_q, (meta_batch, ways * queries, 28, 28, 1)),
        jnp.tile(jnp.arange(ways, dtype=jnp.int32).repeat(queries), (meta_batch, 1)),
    )
    rows = []
    for code in patterns or [None]:
        pattern = Pattern.parse(code) if code else None
        for mode in modes:
            alg = make_algorithm("maml", steps=steps, inner_lr=0.4, mode=mode, pattern=pattern)
            outer = optax.adam(1e-3)
            meta = alg.init_meta(params)
            step = make_meta_step(net, alg, outer)
            r = measure(step, (meta, outer.init(meta), tasks), repeats)
            r.pop("output")
            rows.append(
                {
                    "mode": mode,
                    "pattern": code or "full",
                    "conv_impl": conv_impl,
                    "resolved_conv_impl": _resolved(conv_impl),
                    **r,
                }
            )
    return rows


def _resolved(conv_impl: str) -> str:
    from metagrad.models.layers import resolve_conv_impl

    return resolve_conv_impl(conv_impl)

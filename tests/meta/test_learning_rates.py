"""Learned learning rates: the meta-gradient is exact (central differences in float64), the layer
groups cover the model, and a short run resumes exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metagrad.meta.learning_rates import LRConfig, layer_groups, learned_optimizer
from metagrad.meta.online import window_value_and_grad
from metagrad.models import DecoderLM


def test_layer_groups_cover_every_parameter():
    params = DecoderLM(width=8, depth=3, heads=2, max_len=8).init(jax.random.PRNGKey(0))
    names, groups = layer_groups(params)
    assert names == ("embed", "block0.attn", "block0.mlp", "block1.attn", "block1.mlp",
                     "block2.attn", "block2.mlp", "head")  # fmt: skip
    leaves = jax.tree.leaves(groups)
    assert len(leaves) == len(jax.tree.leaves(params)) and set(leaves) == set(range(len(names)))
    assert jax.tree.structure(groups) == jax.tree.structure(params)


def _tiny_window(seed, steps, batch):
    """A float64 one-block LM with learned per-layer Adam rates: ``(names, optimizer_of, loss,
    (meta, params, state, batches, outer_batch))``."""
    model = DecoderLM(vocab_size=256, width=8, depth=1, heads=2, max_len=8)
    params = model.init(jax.random.PRNGKey(seed), dtype=jnp.float64)
    names, groups = layer_groups(params)
    optimizer_of = learned_optimizer(groups)
    rng = np.random.default_rng(seed)
    batches = jnp.asarray(rng.integers(0, 256, (steps, batch, 8)), jnp.int32)
    outer_batch = jnp.asarray(rng.integers(0, 256, (batch, 8)), jnp.int32)
    meta = {"log_lr": jnp.log(jnp.array([3e-3, 1e-2, 5e-3, 2e-2], jnp.float64))}
    state = optimizer_of(meta).init(params)

    def loss(p, _, tokens):
        return jnp.mean(model.sequence_losses(p, tokens))

    return names, optimizer_of, loss, (meta, params, state, batches, outer_batch)


def test_learned_lr_meta_gradient_matches_finite_differences(x64):
    # T=3 steps of 4 sequences.
    names, optimizer_of, loss, (meta, params, state, batches, outer_batch) = _tiny_window(0, 3, 4)
    # Start mid-training: Adam's state after a few plain steps, not its fresh (sign-like) start.
    window = jax.jit(window_value_and_grad(loss, loss, optimizer_of, mode="mixflow"))
    warm = window(meta, params, state, batches, outer_batch)
    params, state = warm.params, warm.inner_state
    result = window(meta, params, state, batches, outer_batch)
    h = 1e-5
    fd = []
    for i in range(len(names)):
        e = jnp.zeros(len(names)).at[i].set(h)
        up = window({"log_lr": meta["log_lr"] + e}, params, state, batches, outer_batch).outer
        down = window({"log_lr": meta["log_lr"] - e}, params, state, batches, outer_batch).outer
        fd.append((up - down) / (2 * h))
    np.testing.assert_allclose(result.meta_grad["log_lr"], np.array(fd), rtol=1e-6, atol=1e-10)
    assert np.all(np.abs(np.array(fd)) > 1e-6)  # a meaningful check: the gradient is not ~0


def test_lr_config_errors():
    with pytest.raises(ValueError, match="grid"):
        LRConfig(grid=(1e-3, -1.0))
    with pytest.raises(ValueError, match="mode"):
        LRConfig(mode="forward")
    assert LRConfig(grid=(1e-3, 1e-1)).initial_lr == pytest.approx(1e-2)


def test_auto_mode_with_a_memory_budget_gives_the_mixflow_meta_gradient(x64):
    # "auto" chooses a mode and a checkpoint schedule that fit the budget: the numbers must not
    # change (float64, so agreement is to rounding of different but exact programs).
    _, optimizer_of, loss, args = _tiny_window(1, 4, 2)
    reference = window_value_and_grad(loss, loss, optimizer_of, mode="mixflow")(*args)
    auto = window_value_and_grad(loss, loss, optimizer_of, mode="auto", memory_budget=2**30)
    result = auto(*args)
    np.testing.assert_allclose(result.meta_grad["log_lr"], reference.meta_grad["log_lr"],
                               rtol=1e-10, atol=1e-14)  # fmt: skip
    np.testing.assert_allclose(result.outer, reference.outer, rtol=1e-12)


def test_auto_mode_config():
    assert LRConfig(mode="auto", memory_budget=2**30).memory_budget == 2**30
    assert LRConfig(mode="auto").memory_budget is None  # no limit
    with pytest.raises(ValueError, match="memory_budget must be None, or a positive int .* "
                       "with mode='auto'; got memory_budget=1024 with mode='mixflow'"):  # fmt: skip
        LRConfig(mode="mixflow", memory_budget=1024)
    with pytest.raises(ValueError, match="memory_budget=0"):
        LRConfig(mode="auto", memory_budget=0)

"""Meta-training: resume after a simulated kill, checkpoints, CLI errors."""

import jax
import numpy as np
import optax
import pytest

from metagrad.checkpoints import checkpoint_steps
from metagrad.data import episodes_at
from metagrad.fewshot.adaptation import meta_batch_loss
from metagrad.fewshot.report import write_report
from metagrad.fewshot.training import (
    CHECKPOINTS,
    TrainConfig,
    initial_state,
    load_run_state,
    make_model,
    read_config,
    train,
)

# The tiny run (data, configuration) that the reliability tests use too.
from reliability.common import CONFIG
from reliability.common import metrics as _metrics
from reliability.common import splits as _splits


def test_resume_after_kill_gives_the_same_metrics(tmp_path):
    splits = _splits()
    train(CONFIG, tmp_path / "a", splits=splits, show_progress=False)
    # Killed after step 5: the checkpoint is at step 4, step 5's metrics line is orphaned.
    killed = train(CONFIG, tmp_path / "b", splits=splits, show_progress=False, stop_after=5)
    assert killed["killed"]
    assert len(_metrics(tmp_path / "b" / "metrics.jsonl")) > 0
    resumed = train(CONFIG, tmp_path / "b", splits=splits, show_progress=False)
    a, b = _metrics(tmp_path / "a" / "metrics.jsonl"), _metrics(tmp_path / "b" / "metrics.jsonl")
    assert [m["step"] for m in a] == [1, 2, 3, 3, 4, 5, 6, 6]
    assert a == b
    # The checkpoint rebuilds the configuration (eval / select read it back).
    assert read_config(tmp_path / "b") == (CONFIG, 6)
    assert checkpoint_steps(tmp_path / "b" / CHECKPOINTS) == [4, 6]  # the last two are kept
    # eval / select restore the meta-parameters into the freshly initialised structure.
    meta = load_run_state(tmp_path / "b", CONFIG, make_model(CONFIG, splits)).state["meta"]
    for x, y in zip(jax.tree.leaves(meta), jax.tree.leaves(resumed["meta"]), strict=True):
        np.testing.assert_array_equal(x, y)
    # The run folder's Markdown report: settings, training summary and the validation table.
    report = write_report(tmp_path / "b").read_text()
    assert "## Training" in report and "| meta_batch | 2 |" in report
    assert "6 meta-steps logged" in report and "| 6 | " in report  # validation at step 6
    # A finished run extended to more iterations continues exactly where it stopped.
    short = TrainConfig(**{**CONFIG.__dict__, "iterations": 4})
    train(short, tmp_path / "c", splits=splits, show_progress=False)
    train(CONFIG, tmp_path / "c", splits=splits, show_progress=False)
    assert _metrics(tmp_path / "c" / "metrics.jsonl") == a


def test_resume_refuses_another_configuration(tmp_path):
    splits = _splits()
    small = TrainConfig(**{**CONFIG.__dict__, "iterations": 2, "val_every": 0})
    train(small, tmp_path, splits=splits, show_progress=False)
    other = TrainConfig(**{**small.__dict__, "inner_lr": 0.1})
    with pytest.raises(ValueError, match="another configuration; it differs in inner_lr"):
        train(other, tmp_path, splits=splits, show_progress=False)
    # A run folder of an older metagrad (checkpoint.pkl) is not silently started over.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoint.pkl").write_bytes(b"")
    with pytest.raises(ValueError, match="older metagrad.*--restart"):
        train(small, tmp_path / "old", splits=splits, show_progress=False)


def test_cosine_outer_schedule_decays_to_zero_and_resumes(tmp_path):
    # Adam's update for a constant gradient is -lr(t) (its normalised moment is 1): the schedule
    # is read off the updates, lr·(1 + cos(π t / T)) / 2 for t = 0 … T - 1.
    config = TrainConfig(outer_lr=0.01, outer_lr_schedule="cosine", iterations=4)
    optimizer = config.outer_optimizer()
    params = {"w": jax.numpy.zeros(3)}
    grads = {"w": jax.numpy.ones(3)}
    state, lrs = optimizer.init(params), []
    for _ in range(5):
        updates, state = optimizer.update(grads, state)
        lrs.append(-float(updates["w"][0]))
    expected = [0.01 * (1 + np.cos(np.pi * t / 4)) / 2 for t in range(4)] + [0.0]
    np.testing.assert_allclose(lrs, expected, rtol=1e-4, atol=1e-12)  # Adam in float32
    # A cosine run killed and resumed writes the uninterrupted run's metrics (the schedule's
    # position is part of the checkpointed optimiser state), and they differ from a constant rate.
    splits = _splits()
    cosine = TrainConfig(**{**CONFIG.__dict__, "outer_lr_schedule": "cosine"})
    train(cosine, tmp_path / "a", splits=splits, show_progress=False)
    train(cosine, tmp_path / "b", splits=splits, show_progress=False, stop_after=5)
    train(cosine, tmp_path / "b", splits=splits, show_progress=False)
    a = _metrics(tmp_path / "a" / "metrics.jsonl")
    assert a == _metrics(tmp_path / "b" / "metrics.jsonl")
    train(CONFIG, tmp_path / "c", splits=splits, show_progress=False)
    constant = _metrics(tmp_path / "c" / "metrics.jsonl")
    assert [m["step"] for m in a] == [m["step"] for m in constant]
    assert a[0]["loss"] == constant[0]["loss"]  # step 1 is before either update
    assert a[-1]["loss"] != constant[-1]["loss"]
    # More iterations would change the whole schedule: not an extension of the run.
    longer = TrainConfig(**{**cosine.__dict__, "iterations": 8})
    with pytest.raises(ValueError, match="it differs in iterations"):
        train(longer, tmp_path / "a", splits=splits, show_progress=False)
    with pytest.raises(ValueError, match="outer_lr_schedule must be one of 'constant', 'cosine'"):
        TrainConfig(outer_lr_schedule="linear")
    # "constant" is stored as None, as checkpoints from before the field read (they resume).
    assert TrainConfig(outer_lr_schedule="constant") == TrainConfig()
    assert TrainConfig().outer_lr_schedule is None


def test_outer_clip_clips_before_adam_and_the_norm_is_logged(tmp_path):
    # The optimiser: Adam of the meta-gradient scaled to global norm ≤ clip. A first gradient of
    # norm 10 and a second of norm 0.5 (below the clip) give Adam's updates of (g1 / 10, g2).
    config = TrainConfig(outer_lr=0.01, outer_clip=1.0)
    g1 = {"w": jax.numpy.array([6.0, 8.0, 0.0])}
    g2 = {"w": jax.numpy.array([0.3, -0.4, 0.0])}
    clipped, adam = config.outer_optimizer(), optax.adam(0.01)
    params = {"w": jax.numpy.zeros(3)}
    s_clip, s_adam = clipped.init(params), adam.init(params)
    for g, scaled in ((g1, jax.tree.map(lambda x: x / 10, g1)), (g2, g2)):
        u_clip, s_clip = clipped.update(g, s_clip)
        u_adam, s_adam = adam.update(scaled, s_adam)
        np.testing.assert_allclose(u_clip["w"], u_adam["w"], rtol=1e-6)
    # Without clipping: plain Adam, the optimiser state of runs from before the option.
    plain = TrainConfig(outer_lr=0.01).outer_optimizer().init(params)
    assert jax.tree.structure(plain) == jax.tree.structure(adam.init(params))
    with pytest.raises(ValueError, match="outer_clip must be a finite number > 0"):
        TrainConfig(outer_clip=0.0)
    # The logged norm is the meta-gradient's before clipping: step 1's equals the norm of the
    # meta-batch loss's gradient at the initial meta-parameters, recomputed in float64.
    splits = _splits()
    small = TrainConfig(**{**CONFIG.__dict__, "iterations": 2, "val_every": 0, "outer_clip": 1e-3})
    train(small, tmp_path / "a", splits=splits, show_progress=False)
    logged = [m["grad_norm"] for m in _metrics(tmp_path / "a" / "metrics.jsonl")]
    model = make_model(small, splits)
    algorithm = small.make_algorithm()
    episodes = episodes_at(splits.train, small.ways, small.shots, small.queries, small.meta_batch,
                           small.seed, 0)  # fmt: skip
    with jax.enable_x64(True):
        meta = jax.tree.map(lambda x: x.astype(np.float64), initial_state(small, model)["meta"])
        tasks = tuple(np.asarray(a, np.float64) if a.dtype.kind == "f" else a for a in episodes)
        grad = jax.grad(lambda m: meta_batch_loss(model, algorithm, m, tasks)[0])(meta)
        expected = float(optax.tree_utils.tree_norm(grad))
    assert logged[0] == pytest.approx(expected, rel=1e-4)
    assert logged[0] > 1e-3  # so the step was clipped, and the norm is logged before that
    assert "| outer_clip | 0.001 |" in write_report(tmp_path / "a").read_text()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["fewshot", "train", "--algorithm", "reptile"], "--algorithm"),
        (["fewshot", "train", "--mode", "forward"], "--mode"),
        (["fewshot", "train", "--memory-budget", "1GiB"], "--memory-budget applies to --mode auto"),
        (["fewshot", "train", "--mode", "auto", "--memory-budget", "lots"], "--memory-budget"),
        (["fewshot", "train", "--pattern", "01x"], "--pattern"),
        (["fewshot", "train", "--pattern", "11111/11111", "--steps", "5"], "--pattern"),
        (["fewshot", "train", "--ways", "0"], "--ways"),
        (["fewshot", "train", "--outer-lr-schedule", "linear"], "--outer-lr-schedule must be one"),
        (["fewshot", "train", "--outer-clip", "0"], "--outer-clip"),
        (["fewshot", "train", "--dataset", "omniglot"], "--data-root"),
        (["fewshot", "select", "--out", "nowhere", "--threshold", "-1"], "--threshold"),
        (["fewshot", "eval", "--out", "nowhere"], "--out"),
    ],
)
def test_cli_errors_name_the_argument(argv, flag, tmp_path, cli_error):
    out = ["--out", str(tmp_path / "x")] if argv[1] == "train" else []
    assert flag in cli_error([*argv, *out])


def test_patterns_parse_and_family():
    from metagrad.fewshot import Pattern, all_patterns, structured_family

    p = Pattern.parse("00011/11111")
    assert p.steps == 2 and p.layers == 5 and p.frozen_prefix == 0
    assert Pattern.top(3, 5, 1).frozen_prefix == 4
    assert len(list(all_patterns(2, 2))) == 15
    fam = structured_family(3, 5)
    assert len({q.matrix for q in fam}) == len(fam)
    with pytest.raises(ValueError, match="0/1"):
        Pattern.parse("012")

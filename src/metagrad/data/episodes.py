"""N-way K-shot Q-query episodes, sampled a whole meta-batch at a time.

An episode (task) draws ``ways`` distinct classes, and from each class ``shots + queries``
distinct images: the first ``shots`` go to the support set, the rest to the query set, so support
and query never share an image. Classes get labels ``0 .. ways-1`` in a random order per task,
so a learner cannot tie a label to a class across tasks.

Sampling is vectorised with numpy: random keys are drawn for all tasks at once and ``argpartition``
picks the classes and images, then one fancy-indexing operation gathers every image of the
meta-batch. The arrays come out stacked over tasks, ready for a jitted step that ``vmap``s or
``lax.map``s over the leading axis.

Within a task, examples are ordered class by class (support labels ``[0]*shots + [1]*shots +
...``); the class *identities* behind the labels are random. Per-example losses and batch
statistics do not depend on this order.

References:
    Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra (2016), "Matching networks for one shot
    learning", NeurIPS -- the N-way K-shot episode protocol.
    Finn, Abbeel and Levine (2017), "Model-agnostic meta-learning for fast adaptation of deep
    networks", ICML -- meta-batches of episodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from .class_dataset import ClassDataset


class Episodes(NamedTuple):
    """A meta-batch of few-shot classification tasks (a pytree of arrays, ready for ``jax.jit``).

    Attributes:
        support_x: (meta_batch, ways * shots, height, width, channels) images.
        support_y: (meta_batch, ways * shots) int32 labels in ``[0, ways)``.
        query_x: (meta_batch, ways * queries, height, width, channels) images.
        query_y: (meta_batch, ways * queries) int32 labels in ``[0, ways)``.
    """

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray


class EpisodeIndex(NamedTuple):
    """Which classes and images make up a meta-batch of episodes.

    Attributes:
        classes: (meta_batch, ways) int64 dataset class behind each label ``0 .. ways-1``.
        support: (meta_batch, ways * shots) int64 indices into ``dataset.images``.
        query: (meta_batch, ways * queries) int64 indices into ``dataset.images``.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray


def sample_episodes(
    dataset: ClassDataset,
    ways: int,
    shots: int,
    queries: int,
    meta_batch: int,
    rng: np.random.Generator | int,
    *,
    dtype: type | np.dtype = np.float32,
) -> Episodes:
    """Sample ``meta_batch`` independent N-way K-shot Q-query episodes.

    Only classes with at least ``shots + queries`` images are eligible. Equivalent to
    ``gather_episodes(dataset, sample_episode_indices(...), dtype)``.

    Args:
        dataset: the classes to sample from.
        ways: classes per task (N).
        shots: support images per class (K).
        queries: query images per class (Q).
        meta_batch: number of tasks.
        rng: a numpy Generator (advanced in place) or an integer seed.
        dtype: dtype of the returned images: float types are scaled to [0, 1]; ``np.uint8``
            returns the stored pixels (a quarter of the bytes, for moving to an accelerator).

    Returns:
        The episodes; see :class:`Episodes` for shapes.

    Raises:
        ValueError: if an argument is not a positive integer, or too few classes have enough
            images for ``ways`` classes of ``shots + queries`` images.

    References:
        Vinyals et al. (2016), "Matching networks for one shot learning", NeurIPS.
    """
    index = sample_episode_indices(dataset, ways, shots, queries, meta_batch, rng)
    return gather_episodes(dataset, index, dtype=dtype)


def sample_episode_indices(
    dataset: ClassDataset,
    ways: int,
    shots: int,
    queries: int,
    meta_batch: int,
    rng: np.random.Generator | int,
) -> EpisodeIndex:
    """Draw the classes and image indices of ``meta_batch`` episodes, without gathering pixels.

    Args:
        dataset, ways, shots, queries, meta_batch, rng: as in :func:`sample_episodes`.

    Returns:
        The :class:`EpisodeIndex`; within each (task, class) the ``shots + queries`` images are
        distinct, the first ``shots`` being the support images.
    """
    for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        _check_positive(name, value)
    _check_positive("meta_batch", meta_batch)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    per_class = shots + queries
    eligible = np.flatnonzero(dataset.class_sizes >= per_class)
    if len(eligible) < ways:
        raise ValueError(
            f"sample_episodes: `ways`={ways} needs {ways} classes with at least shots + queries = "
            f"{per_class} images each, but dataset {dataset.name!r} has only {len(eligible)} such "
            f"classes (of {dataset.n_classes}; largest class: "
            f"{int(dataset.class_sizes.max(initial=0))} images). Lower `ways`, `shots` or "
            "`queries`, or use a larger split"
        )

    # Classes: the `ways` smallest of one uniform key per eligible class, in key order; that order
    # is uniformly random, so it also assigns the labels at random.
    keys = rng.random((meta_batch, len(eligible)))
    chosen = _smallest(keys, ways)
    classes = eligible[chosen]  # (meta_batch, ways)

    # Images: per (task, class), the `per_class` smallest keys among that class's images. Keys
    # beyond a class's size are set to 2 (above any uniform draw), so ragged classes work too.
    sizes = dataset.class_sizes[classes]
    width = int(sizes.max())
    image_keys = rng.random((meta_batch, ways, width))
    image_keys[np.arange(width) >= sizes[..., None]] = 2.0
    positions = _smallest(image_keys, per_class)
    index = dataset.class_starts[classes][..., None] + positions  # (meta_batch, ways, per_class)
    return EpisodeIndex(
        classes=classes,
        support=index[..., :shots].reshape(meta_batch, ways * shots),
        query=index[..., shots:].reshape(meta_batch, ways * queries),
    )


def gather_episodes(
    dataset: ClassDataset, index: EpisodeIndex, *, dtype: type | np.dtype = np.float32
) -> Episodes:
    """Gather the images and labels of episodes drawn by :func:`sample_episode_indices`.

    Args:
        dataset: the dataset the indices refer to.
        index: classes and image indices.
        dtype: image dtype, as in :func:`sample_episodes`.

    Returns:
        The :class:`Episodes`; labels are class-major (``[0]*shots + [1]*shots + ...``).
    """
    meta_batch, ways = index.classes.shape
    shots = index.support.shape[1] // ways
    queries = index.query.shape[1] // ways
    labels = np.arange(ways, dtype=np.int32)
    return Episodes(
        support_x=_images(dataset, index.support, dtype),
        support_y=np.tile(np.repeat(labels, shots), (meta_batch, 1)),
        query_x=_images(dataset, index.query, dtype),
        query_y=np.tile(np.repeat(labels, queries), (meta_batch, 1)),
    )


def iterate_episodes(
    dataset: ClassDataset,
    ways: int,
    shots: int,
    queries: int,
    meta_batch: int,
    seed: int,
    *,
    start: int = 0,
    stop: int | None = None,
    dtype: type | np.dtype = np.float32,
) -> Iterator[Episodes]:
    """Yield meta-batches of episodes for steps ``start, start + 1, ...`` (forever if no ``stop``).

    The episodes of step ``t`` depend only on ``(seed, t)``, not on earlier steps: training that
    resumes from a checkpoint at step ``t`` with ``start=t`` sees exactly the batches an
    uninterrupted run would have seen.

    Args:
        dataset: the classes to sample from.
        ways: classes per task.
        shots: support images per class.
        queries: query images per class.
        meta_batch: tasks per batch.
        seed: base seed.
        start: first step.
        stop: step at which to stop (exclusive); None for an endless stream.
        dtype: image dtype, as in :func:`sample_episodes`.

    Yields:
        :class:`Episodes` for each step.
    """
    step = start
    while stop is None or step < stop:
        yield episodes_at(dataset, ways, shots, queries, meta_batch, seed, step, dtype=dtype)
        step += 1


def episodes_at(
    dataset: ClassDataset,
    ways: int,
    shots: int,
    queries: int,
    meta_batch: int,
    seed: int,
    step: int,
    *,
    dtype: type | np.dtype = np.float32,
) -> Episodes:
    """The meta-batch of step ``step`` of the stream :func:`iterate_episodes` yields.

    Args:
        dataset, ways, shots, queries, meta_batch, dtype: as in :func:`sample_episodes`.
        seed: base seed.
        step: the step number (>= 0).

    Returns:
        The episodes, from a generator seeded by ``(seed, step)``.
    """
    if step < 0:
        raise ValueError(f"episodes_at: `step` must be >= 0; received {step}")
    rng = np.random.default_rng([seed, step])
    return sample_episodes(dataset, ways, shots, queries, meta_batch, rng, dtype=dtype)


def _smallest(keys: np.ndarray, k: int) -> np.ndarray:
    # Positions of the k smallest keys along the last axis, in increasing key order: argpartition
    # is O(n), and only the k selected keys are sorted.
    part = np.argpartition(keys, k - 1, axis=-1)[..., :k]
    order = np.argsort(np.take_along_axis(keys, part, axis=-1), axis=-1)
    return np.take_along_axis(part, order, axis=-1)


def _images(dataset: ClassDataset, index: np.ndarray, dtype: type | np.dtype) -> np.ndarray:
    x = dataset.images[index]
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return x
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(
            f"sample_episodes: `dtype` must be a float dtype or np.uint8; received {dtype}"
        )
    # Multiply by a precomputed reciprocal in the target dtype: one pass, no float64 temporary.
    return np.multiply(x, dtype.type(1 / 255), dtype=dtype)


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"sample_episodes: `{name}` must be a positive integer; received {value!r}"
        )

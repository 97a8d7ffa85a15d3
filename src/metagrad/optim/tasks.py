"""Classification tasks for the width experiments (coordinate check and transfer sweep).

The data source is pluggable: :func:`load_task` knows ``"synthetic"`` (always available,
deterministic, generated in memory), ``"glyphs"`` (the built-in rendered-character benchmark
of :mod:`metagrad.data`, used as an ordinary supervised problem) and ``"text"`` (next-byte
prediction on the standard-library corpus of :mod:`metagrad.data.text`, for the decoder LM), and
any
:class:`ClassificationTask` can be passed to the experiment functions directly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

TASKS = ("synthetic", "glyphs", "text")


class ClassificationTask(NamedTuple):
    """A supervised classification problem held in memory.

    Attributes:
      x_train: float32 inputs ``(n_train, *input_shape)``.
      y_train: int32 labels ``(n_train,)``.
      x_eval: float32 held-out inputs.
      y_eval: int32 held-out labels.
      n_classes: number of classes.
      name: a short description for reports.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    n_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input."""
        return tuple(self.x_train.shape[1:])

    def flat(self) -> ClassificationTask:
        """The same task with every input flattened to a vector (for MLPs)."""
        n, m = len(self.x_train), len(self.x_eval)
        return self._replace(x_train=self.x_train.reshape(n, -1), x_eval=self.x_eval.reshape(m, -1))


def synthetic_task(
    *,
    seed: int = 0,
    n_train: int = 8192,
    n_eval: int = 2048,
    image_size: int = 28,
    n_classes: int = 10,
    latent_dim: int = 16,
    teacher_width: int = 64,
    noise: float = 0.1,
) -> ClassificationTask:
    """A deterministic teacher-student classification task with image-shaped inputs.

    Latent vectors ``z ~ N(0, I)`` are mapped to ``image_size²`` pixels by a fixed random smooth
    map (a random linear map followed by ``tanh``, plus Gaussian noise) and labelled by a fixed
    random teacher network ``argmax(W_2 tanh(W_1 z))``. The labels depend non-linearly on a
    low-dimensional structure of the inputs, as for real images, so wider and better-trained
    networks keep improving for a while. Inputs are standardised per pixel.

    Args:
      seed: seed of the teacher, the pixel map and the samples.
      n_train: number of training examples.
      n_eval: number of held-out examples.
      image_size: inputs are ``(image_size, image_size, 1)``.
      n_classes: number of classes.
      latent_dim: dimension of ``z``.
      teacher_width: hidden width of the teacher.
      noise: standard deviation of the pixel noise.

    Returns:
      A :class:`ClassificationTask`.
    """
    for name, v in (
        ("n_train", n_train),
        ("n_eval", n_eval),
        ("image_size", image_size),
        ("n_classes", n_classes),
        ("latent_dim", latent_dim),
        ("teacher_width", teacher_width),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"synthetic_task: {name} must be a positive int; got {v!r}.")
    if n_classes < 2:
        raise ValueError(f"synthetic_task: n_classes must be at least 2; got {n_classes}.")
    rng = np.random.default_rng(seed)
    d = image_size * image_size
    pixel_map = rng.normal(size=(latent_dim, d)) / np.sqrt(latent_dim)
    w1 = rng.normal(size=(latent_dim, teacher_width)) / np.sqrt(latent_dim)
    w2 = rng.normal(size=(teacher_width, n_classes)) / np.sqrt(teacher_width)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        z = rng.normal(size=(n, latent_dim))
        x = np.tanh(2.0 * z @ pixel_map) + noise * rng.normal(size=(n, d))
        y = np.argmax(np.tanh(z @ w1 * 2.0) @ w2, axis=1)
        return x, y

    x_tr, y_tr = sample(n_train)
    x_ev, y_ev = sample(n_eval)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    shape = (image_size, image_size, 1)
    return ClassificationTask(
        ((x_tr - mean) / std).astype(np.float32).reshape(n_train, *shape),
        y_tr.astype(np.int32),
        ((x_ev - mean) / std).astype(np.float32).reshape(n_eval, *shape),
        y_ev.astype(np.int32),
        n_classes,
        f"synthetic(seed={seed}, n_train={n_train}, classes={n_classes})",
    )


def glyph_task(
    *, n_classes: int = 100, eval_per_class: int = 5, seed: int = 0, progress: bool = True
) -> ClassificationTask:
    """The built-in glyph benchmark as ordinary supervised classification.

    Takes ``n_classes`` classes of the benchmark's training split (chosen with ``seed``) and
    holds out ``eval_per_class`` renderings of each for evaluation. Pixels are standardised with
    the training set's mean and standard deviation. The first call renders and caches the
    benchmark (see :func:`metagrad.data.load_glyphs`).

    Args:
      n_classes: number of characters to classify.
      eval_per_class: held-out renderings per character.
      seed: seed of the class choice.
      progress: show the rendering progress bar on a first build.

    Returns:
      A :class:`ClassificationTask` with ``(28, 28, 1)`` inputs.
    """
    from metagrad.data import load_glyphs  # imported lazily: rendering needs Pillow and fonts

    bench = load_glyphs(progress=progress)
    ds = bench.train
    total = len(ds.class_names)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or not 2 <= n_classes <= total:
        raise ValueError(
            f"glyph_task: n_classes must be an int between 2 and {total} (the training split's "
            f"classes); got {n_classes!r}."
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, n_classes, replace=False))
    xs_tr, ys_tr, xs_ev, ys_ev = [], [], [], []
    for label, c in enumerate(chosen):
        start, size = int(ds.class_starts[c]), int(ds.class_sizes[c])
        if size <= eval_per_class:
            raise ValueError(
                f"glyph_task: class {ds.class_names[c]!r} has {size} images, not more than "
                f"eval_per_class={eval_per_class}; lower eval_per_class."
            )
        imgs = ds.images[start : start + size].astype(np.float32) / 255.0
        xs_tr.append(imgs[eval_per_class:])
        xs_ev.append(imgs[:eval_per_class])
        ys_tr.append(np.full(size - eval_per_class, label, np.int32))
        ys_ev.append(np.full(eval_per_class, label, np.int32))
    x_tr, x_ev = np.concatenate(xs_tr), np.concatenate(xs_ev)
    mean, std = x_tr.mean(), x_tr.std() + 1e-6
    return ClassificationTask(
        (x_tr - mean) / std,
        np.concatenate(ys_tr),
        (x_ev - mean) / std,
        np.concatenate(ys_ev),
        n_classes,
        f"glyphs({n_classes} classes, seed={seed})",
    )


def text_task(
    *,
    seq_len: int = 32,
    n_train: int = 8192,
    n_eval: int = 1024,
    seed: int = 0,
    progress: bool = True,
) -> ClassificationTask:
    """Next-byte prediction on the standard-library text corpus (for the decoder LM).

    Sequences of ``seq_len`` bytes are drawn (with ``seed``) from the corpus's training split
    (``x_train``) and validation split (``x_eval``); the inputs are the first ``seq_len - 1``
    bytes and the labels the next byte at every position, so ``x`` and ``y`` are both int32
    arrays ``(n, seq_len - 1)`` and ``n_classes`` is 256. When ``seq_len`` divides 128 the
    cached 128-byte corpus (:func:`metagrad.data.text.load_stdlib_text`) is cut into pieces, so
    no new cache is built.

    Args:
      seq_len: bytes per sequence (at least 2).
      n_train: training sequences (at most the corpus's).
      n_eval: held-out sequences.
      seed: seed of the draw.
      progress: show the progress bar if the corpus has to be built.

    Returns:
      A :class:`ClassificationTask` with token inputs.
    """
    from metagrad.data.text import TextConfig, load_stdlib_text  # lazily: reads the stdlib

    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"text_task: seq_len must be an int >= 2; got {seq_len!r}.")
    base = 128 if 128 % seq_len == 0 else seq_len
    data = load_stdlib_text(TextConfig(seq_len=base), progress=progress)
    rng = np.random.default_rng(seed)

    def draw(tokens: np.ndarray, n: int, name: str, split: str) -> np.ndarray:
        seqs = tokens.reshape(-1, seq_len)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(seqs):
            raise ValueError(
                f"text_task: {name} must be an int between 1 and {len(seqs)} (the {split} "
                f"split's sequences of {seq_len} bytes); got {n!r}."
            )
        return seqs[np.sort(rng.choice(len(seqs), n, replace=False))].astype(np.int32)

    train = draw(data.train.tokens, n_train, "n_train", "train")
    ev = draw(data.val.tokens, n_eval, "n_eval", "validation")
    return ClassificationTask(
        train[:, :-1],
        train[:, 1:],
        ev[:, :-1],
        ev[:, 1:],
        256,
        f"text(stdlib bytes, seq_len={seq_len}, n_train={n_train}, seed={seed})",
    )


def load_task(name: str, *, seed: int = 0, **kwargs) -> ClassificationTask:
    """A task by name: ``"synthetic"``, ``"glyphs"`` or ``"text"`` (keyword arguments go to its
    builder)."""
    if name == "synthetic":
        return synthetic_task(seed=seed, **kwargs)
    if name == "glyphs":
        return glyph_task(seed=seed, **kwargs)
    if name == "text":
        return text_task(seed=seed, **kwargs)
    raise ValueError(
        f"load_task: name must be one of {TASKS}; got {name!r}. Or build a ClassificationTask "
        "yourself and pass it in."
    )

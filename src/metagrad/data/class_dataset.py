"""The in-memory form every few-shot dataset is loaded into: images grouped by class.

A :class:`ClassDataset` holds all images of one split in a single uint8 array, class after class,
with the first index and the size of each class. This one layout serves datasets whose classes all
have the same number of images (Omniglot, miniImageNet, the glyph benchmark) and ragged ones alike,
and lets the episode sampler gather a whole meta-batch with one fancy-indexing operation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ClassDataset:
    """Images of one split, stored contiguously class by class.

    Attributes:
        images: uint8 array (n_images, height, width, channels); the images of class ``c`` are
            ``images[class_starts[c] : class_starts[c] + class_sizes[c]]``.
        class_starts: int64 array (n_classes,), index of each class's first image.
        class_sizes: int64 array (n_classes,), number of images of each class.
        class_names: one name per class (e.g. ``"Greek/character03/rot090"``).
        class_alphabets: the alphabet (super-class) of each class, ``""`` when there is none;
            splits are disjoint in alphabets, and statistics are reported per alphabet.
        name: a short description of the dataset and split, for messages and reports.
    """

    images: np.ndarray
    class_starts: np.ndarray
    class_sizes: np.ndarray
    class_names: tuple[str, ...]
    class_alphabets: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                "ClassDataset: `images` must be a uint8 array (n_images, height, width, channels); "
                f"received {_describe(images)}. Convert with np.asarray(x, np.uint8) and add a "
                "channel axis with x[..., None] for grayscale images"
            )
        n_classes = len(self.class_names)
        for field in ("class_starts", "class_sizes"):
            value = getattr(self, field)
            if not isinstance(value, np.ndarray) or value.shape != (n_classes,):
                raise ValueError(
                    f"ClassDataset: `{field}` must be an integer array of shape ({n_classes},), one "
                    f"entry per class name; received {_describe(value)}"
                )
        if len(self.class_alphabets) != n_classes:
            raise ValueError(
                f"ClassDataset: `class_alphabets` must have one entry per class ({n_classes}); "
                f"received {len(self.class_alphabets)}"
            )
        ends = self.class_starts + self.class_sizes
        if n_classes and (
            self.class_sizes.min() < 1 or self.class_starts.min() < 0 or ends.max() > len(images)
        ):
            raise ValueError(
                "ClassDataset: every class needs at least one image and its index range "
                f"[start, start + size) must lie within the {len(images)} images"
            )

    @classmethod
    def from_labels(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        class_alphabets: Sequence[str] | None = None,
        name: str = "",
    ) -> ClassDataset:
        """Build a dataset from images in any order and an integer label per image.

        Args:
            images: uint8 array (n_images, height, width, channels).
            labels: int array (n_images,) with values in ``[0, len(class_names))``.
            class_names: name of each class.
            class_alphabets: alphabet of each class; all ``""`` when omitted.
            name: description of the dataset.

        Returns:
            A ClassDataset with the images reordered class by class (stable within a class).
        """
        labels = np.asarray(labels)
        n_classes = len(class_names)
        if labels.shape != (len(images),) or (
            len(labels) and (labels.min() < 0 or labels.max() >= n_classes)
        ):
            raise ValueError(
                f"ClassDataset.from_labels: `labels` must be ({len(images)},) integers in "
                f"[0, {n_classes}); received {_describe(labels)}"
            )
        order = np.argsort(labels, kind="stable")
        sizes = np.bincount(labels, minlength=n_classes).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        alphabets = tuple(class_alphabets) if class_alphabets is not None else ("",) * n_classes
        return cls(np.asarray(images)[order], starts, sizes, tuple(class_names), alphabets, name)

    @classmethod
    def from_grid(
        cls,
        images: np.ndarray,
        class_names: Sequence[str],
        class_alphabets: Sequence[str] | None = None,
        name: str = "",
    ) -> ClassDataset:
        """Build a dataset whose classes all have the same number of images.

        Args:
            images: uint8 array (n_classes, n_per_class, height, width, channels).
            class_names: name of each class.
            class_alphabets: alphabet of each class; all ``""`` when omitted.
            name: description of the dataset.

        Returns:
            The equivalent ClassDataset (no copy of the pixels).
        """
        if images.ndim != 5:
            raise ValueError(
                "ClassDataset.from_grid: `images` must be (n_classes, n_per_class, height, width, "
                f"channels); received {_describe(images)}"
            )
        n_classes, per_class = images.shape[:2]
        starts = np.arange(n_classes, dtype=np.int64) * per_class
        sizes = np.full(n_classes, per_class, dtype=np.int64)
        alphabets = tuple(class_alphabets) if class_alphabets is not None else ("",) * n_classes
        flat = images.reshape(n_classes * per_class, *images.shape[2:])
        return cls(flat, starts, sizes, tuple(class_names), alphabets, name)

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def alphabets(self) -> tuple[str, ...]:
        """Distinct alphabets, in order of first appearance."""
        return tuple(dict.fromkeys(self.class_alphabets))

    def class_images(self, c: int) -> np.ndarray:
        """Images of class ``c``, (class_sizes[c], height, width, channels) uint8."""
        start = int(self.class_starts[c])
        return self.images[start : start + int(self.class_sizes[c])]

    def subset(self, classes: Sequence[int] | np.ndarray, name: str | None = None) -> ClassDataset:
        """A new dataset holding only the given classes (copied, in the given order).

        Args:
            classes: class indices to keep.
            name: description of the result; defaults to this dataset's name.

        Returns:
            The sub-dataset.
        """
        classes = np.asarray(classes, dtype=np.int64)
        sizes = self.class_sizes[classes]
        index = np.concatenate(
            [np.arange(s, s + n) for s, n in zip(self.class_starts[classes], sizes, strict=True)]
            or [np.zeros(0, np.int64)]
        )
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return ClassDataset(
            self.images[index],
            starts,
            sizes.astype(np.int64),
            tuple(self.class_names[c] for c in classes),
            tuple(self.class_alphabets[c] for c in classes),
            self.name if name is None else name,
        )


class Splits(NamedTuple):
    """Meta-train, meta-validation and meta-test datasets; their classes are disjoint."""

    train: ClassDataset
    val: ClassDataset
    test: ClassDataset


def check_split_fractions(owner: str, fractions: Sequence[float]) -> None:
    """Raises a ``ValueError`` unless ``fractions`` are three positive fractions summing to 1.

    Args:
      owner: the configuration class, named in the message (e.g. ``"TextConfig"``).
      fractions: the ``split_fractions`` field (train, validation, test).
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"{owner}: split_fractions must be three positive fractions (train, val, test) "
            f"summing to 1; got {tuple(fractions)}."
        )


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"a {type(value).__name__}"

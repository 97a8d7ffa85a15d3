"""Statistics of few-shot datasets (classes, alphabets, instances per class) and a sample grid."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from metagrad.files import save_figure

from .class_dataset import ClassDataset, Splits


def dataset_statistics(splits: Splits | Mapping[str, ClassDataset]) -> dict:
    """Counts describing each split, and their totals.

    Args:
        splits: a :class:`~.class_dataset.Splits` or a mapping from split name to dataset.

    Returns:
        A JSON-serialisable dict: for each split name, ``classes``, ``alphabets``, ``images``,
        ``instances_per_class`` (min / mean / max), ``image_shape`` and ``classes_per_alphabet``;
        under ``"total"``, the summed ``classes``, ``alphabets`` and ``images``. Classes without
        an alphabet (``""``) are not counted as an alphabet.
    """
    items = splits._asdict() if isinstance(splits, Splits) else dict(splits)
    stats: dict = {}
    for name, ds in items.items():
        per_alphabet = Counter(a for a in ds.class_alphabets if a)
        sizes = ds.class_sizes
        stats[name] = {
            "classes": ds.n_classes,
            "alphabets": len(per_alphabet),
            "images": int(sizes.sum()),
            "instances_per_class": {
                "min": int(sizes.min()) if len(sizes) else 0,
                "mean": float(sizes.mean()) if len(sizes) else 0.0,
                "max": int(sizes.max()) if len(sizes) else 0,
            },
            "image_shape": list(ds.image_shape),
            "classes_per_alphabet": dict(per_alphabet.most_common()),
        }
    stats["total"] = {
        key: sum(s[key] for s in stats.values()) for key in ("classes", "alphabets", "images")
    }
    return stats


def statistics_markdown(stats: dict) -> str:
    """A Markdown table of :func:`dataset_statistics` output, one row per split.

    Args:
        stats: the dict returned by :func:`dataset_statistics`.

    Returns:
        The table, with the alphabets of each split and their class counts in the last column.
    """
    lines = [
        "| split | classes | alphabets | images | instances / class | alphabets (classes) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, s in stats.items():
        if name == "total":
            continue
        ipc = s["instances_per_class"]
        per_class = str(ipc["min"]) if ipc["min"] == ipc["max"] else f"{ipc['min']}-{ipc['max']}"
        alphabets = ", ".join(f"{a} ({n})" for a, n in s["classes_per_alphabet"].items())
        lines.append(
            f"| {name} | {s['classes']} | {s['alphabets']} | {s['images']} | {per_class} | "
            f"{alphabets or '-'} |"
        )
    t = stats["total"]
    lines.append(f"| **total** | {t['classes']} | {t['alphabets']} | {t['images']} | | |")
    return "\n".join(lines)


def save_sample_grid(
    datasets: ClassDataset | Sequence[ClassDataset],
    path: str | Path,
    *,
    classes_per_dataset: int = 6,
    instances: int = 10,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Write a PNG grid of sample images: one row per class, one column per instance.

    Classes are picked at random but spread over alphabets (one per alphabet before a second from
    any), so the grid shows the variety of the data; each row is labelled with its dataset, alphabet
    and class name.

    Args:
        datasets: one dataset or several (e.g. the train / val / test splits).
        path: the PNG file to write (its folder is created).
        classes_per_dataset: rows per dataset.
        instances: images per row (fewer if a class has fewer).
        seed: seed of the choice of classes.
        title: figure title.

    Returns:
        The path written.
    """
    # A bare Figure (not pyplot) draws off-screen without touching the global backend or state.
    from matplotlib.figure import Figure

    if isinstance(datasets, ClassDataset):
        datasets = [datasets]
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, np.ndarray]] = []
    for ds in datasets:
        for c in _spread_over_alphabets(ds, classes_per_dataset, rng):
            label = " · ".join(x for x in (ds.name, ds.class_alphabets[c]) if x)
            rows.append((f"{label}\n{_short(ds.class_names[c])}", ds.class_images(c)[:instances]))
    fig = Figure(figsize=(instances * 0.6 + 3.2, len(rows) * 0.62 + 0.5))
    axes = fig.subplots(len(rows), instances, squeeze=False)
    for r, (label, images) in enumerate(rows):
        for k in range(instances):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if k < len(images):
                image = images[k]
                gray = image.shape[-1] == 1
                ax.imshow(
                    image[..., 0] if gray else image,
                    cmap="gray" if gray else None,
                    vmin=0,
                    vmax=255,
                    interpolation="nearest",
                )
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    top = 1 - 0.4 / fig.get_figheight() if title else 1
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.1, rect=(0, 0, 1, top))
    return save_figure(fig, path)


def _spread_over_alphabets(ds: ClassDataset, n: int, rng: np.random.Generator) -> list[int]:
    by_alphabet: dict[str, list[int]] = {}
    for c in rng.permutation(ds.n_classes):
        by_alphabet.setdefault(ds.class_alphabets[c], []).append(int(c))
    queues = [by_alphabet[a] for a in rng.permutation(sorted(by_alphabet))]
    picked: list[int] = []
    while len(picked) < min(n, ds.n_classes):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    return picked


def _short(name: str, width: int = 34) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"

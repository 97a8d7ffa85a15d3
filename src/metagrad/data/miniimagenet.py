"""miniImageNet from one of its two common on-disk layouts (nothing is downloaded).

miniImageNet has 100 ImageNet classes of 600 images, split 64 / 16 / 20 into train / val / test
classes by Ravi & Larochelle. Two layouts are read:

* **CSV** (Ravi & Larochelle's split files)::

      <root>/images/<filename>.jpg
      <root>/train.csv, <root>/val.csv, <root>/test.csv    header "filename,label"

* **Pickle** (the widely shared pre-resized cache)::

      <root>/mini-imagenet-cache-train.pkl   (and -val, -test)
      a dict with "image_data": uint8 (N, 84, 84, 3) and "class_dict": {label: [indices]}

Images are resized to ``image_size`` x ``image_size`` (84 by default) when they are not already.

References:
    Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra (2016), "Matching networks for one shot
    learning", NeurIPS -- miniImageNet.
    Ravi and Larochelle (2017), "Optimization as a model for few-shot learning", ICLR -- the
    64 / 16 / 20 class split and its CSV files.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from metagrad.progress import progress_bar

from .class_dataset import ClassDataset, Splits

if TYPE_CHECKING:
    from PIL import Image

_SPLITS = ("train", "val", "test")
_CSV_LAYOUT = "<root>/{split}.csv (header 'filename,label') with images in <root>/images/"
_PICKLE_LAYOUT = "<root>/mini-imagenet-cache-{split}.pkl"
_HOW_TO_GET = (
    "place Ravi & Larochelle's split CSVs and the images folder, or the "
    "mini-imagenet-cache-<split>.pkl files, in {root}"
)


def load_miniimagenet(
    root: str | Path,
    split: Literal["train", "val", "test"] = "train",
    *,
    image_size: int = 84,
    layout: Literal["auto", "csv", "pickle"] = "auto",
    progress: bool = True,
) -> ClassDataset:
    """Load one miniImageNet split as a :class:`~.class_dataset.ClassDataset`.

    Args:
        root: folder holding the CSV layout or the pickles (see module doc).
        split: ``"train"`` (64 classes), ``"val"`` (16) or ``"test"`` (20).
        image_size: side of the square RGB images.
        layout: ``"csv"``, ``"pickle"``, or ``"auto"``: the pickle if present, else the CSV.
        progress: show a progress bar while decoding images.

    Returns:
        Images (n, image_size, image_size, 3) uint8 grouped by class; class names are the labels
        (ImageNet WordNet ids), sorted.

    Raises:
        FileNotFoundError: if the expected files are missing (the message says which, where).
        ValueError: if a file is malformed or an argument is invalid.

    Note:
        Pickles can run code when loaded: only load pickle files from a source you trust.

    References:
        Vinyals et al. (2016), NeurIPS; Ravi and Larochelle (2017), ICLR.
    """
    if split not in _SPLITS:
        raise ValueError(f"load_miniimagenet: `split` must be one of {_SPLITS}; received {split!r}")
    if layout not in ("auto", "csv", "pickle"):
        raise ValueError(
            f"load_miniimagenet: `layout` must be 'auto', 'csv' or 'pickle'; received {layout!r}"
        )
    if image_size < 1:
        raise ValueError(f"load_miniimagenet: `image_size` must be positive; received {image_size}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"miniImageNet root {root} does not exist; expected {_CSV_LAYOUT.format(split=split)} "
            f"or {_PICKLE_LAYOUT.format(split=split)}. " + _HOW_TO_GET.format(root=root)
        )
    pickle_path = root / f"mini-imagenet-cache-{split}.pkl"
    csv_path = root / f"{split}.csv"
    if layout == "auto":
        if pickle_path.is_file():
            layout = "pickle"
        elif csv_path.is_file():
            layout = "csv"
        else:
            found = sorted(p.name for p in root.iterdir())[:10]
            raise FileNotFoundError(
                f"expected {_CSV_LAYOUT.format(split=split)} or "
                f"{_PICKLE_LAYOUT.format(split=split)}; found neither {csv_path.name} nor "
                f"{pickle_path.name} in {root} (it contains: {found or 'nothing'}) -- "
                + _HOW_TO_GET.format(root=root)
            )
    if layout == "pickle":
        images, labels, names = _read_pickle(pickle_path, image_size, progress)
    else:
        images, labels, names = _read_csv(csv_path, root, image_size, progress)
    return ClassDataset.from_labels(
        images, labels, names, [""] * len(names), name=f"miniimagenet/{split}"
    )


def miniimagenet_splits(
    root: str | Path,
    *,
    image_size: int = 84,
    layout: Literal["auto", "csv", "pickle"] = "auto",
    progress: bool = True,
) -> Splits:
    """The three miniImageNet splits (see :func:`load_miniimagenet`).

    Returns:
        The :class:`~.class_dataset.Splits`; the classes of the three are disjoint by
        construction of Ravi & Larochelle's split.
    """
    return Splits(
        *(
            load_miniimagenet(root, s, image_size=image_size, layout=layout, progress=progress)
            for s in _SPLITS
        )
    )


def _read_csv(
    csv_path: Path, root: Path, image_size: int, progress: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    layout = _CSV_LAYOUT.format(split=csv_path.stem)
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"expected {layout}; {csv_path} does not exist -- " + _HOW_TO_GET.format(root=root)
        )
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ValueError(
            f"expected {layout}; the first line of {csv_path} is "
            f"{','.join(rows[0]) if rows else '(empty file)'!r}, not 'filename,label'"
        )
    bad = [i + 2 for i, r in enumerate(rows[1:]) if len(r) != 2 or not r[0] or not r[1]]
    if bad:
        raise ValueError(
            f"expected two non-empty columns 'filename,label' on every line of {csv_path}; "
            f"lines {bad[:5]} are malformed"
        )
    if len(rows) < 2:
        raise ValueError(f"expected {layout}; {csv_path} lists no images")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"expected {layout}; found no 'images' folder in {root} -- put the miniImageNet "
            "images (e.g. n0153282900000005.jpg) there"
        )
    filenames = [r[0] for r in rows[1:]]
    missing = [n for n in filenames if not (image_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(filenames)} images listed in {csv_path} are missing "
            f"from {image_dir}, e.g. {missing[:3]}"
        )
    names = sorted({r[1] for r in rows[1:]})
    label_of = {n: i for i, n in enumerate(names)}
    labels = np.array([label_of[r[1]] for r in rows[1:]], dtype=np.int64)
    images = np.empty((len(filenames), image_size, image_size, 3), dtype=np.uint8)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"miniimagenet {csv_path.stem}", total=len(filenames))
        for i, name in enumerate(filenames):
            images[i] = _read_image(image_dir / name, image_size)
            bar.advance(task)
    return images, labels, names


def _read_pickle(
    path: Path, image_size: int, progress: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    layout = _PICKLE_LAYOUT.format(split=path.stem.rsplit("-", 1)[-1])
    if not path.is_file():
        raise FileNotFoundError(
            f"expected {layout}; {path} does not exist -- " + _HOW_TO_GET.format(root=path.parent)
        )
    with path.open("rb") as f:
        try:
            data = pickle.load(f)
        except UnicodeDecodeError:
            # Pickles written by Python 2 hold byte strings; latin1 maps them back losslessly.
            f.seek(0)
            data = pickle.load(f, encoding="latin1")
        except (pickle.UnpicklingError, EOFError) as error:
            raise ValueError(f"{path} is not a readable pickle: {error}") from error
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"expected {path} to hold a dict with keys 'image_data' (N, 84, 84, 3) uint8 and "
            f"'class_dict' {{label: [indices]}}; found {keys}"
        )
    images = np.asarray(data["image_data"])
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"expected 'image_data' in {path} to be uint8 (N, height, width, 3); found shape "
            f"{images.shape} and dtype {images.dtype}"
        )
    class_dict = data["class_dict"]
    names = sorted(class_dict)
    labels = np.full(len(images), -1, dtype=np.int64)
    for label, name in enumerate(names):
        index = np.asarray(class_dict[name], dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(images)):
            raise ValueError(
                f"'class_dict' in {path}: class {name!r} indexes images outside [0, {len(images)})"
            )
        labels[index] = label
    if (labels < 0).any():
        # Images that no class claims are dropped rather than guessed.
        keep = labels >= 0
        images, labels = images[keep], labels[keep]
    if images.shape[1:3] != (image_size, image_size):
        from PIL import Image

        resized = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)
        with progress_bar(progress) as bar:
            task = bar.add_task(f"miniimagenet resize to {image_size}", total=len(images))
            for i, image in enumerate(images):
                resized[i] = _resize(Image.fromarray(image), image_size)
                bar.advance(task)
        images = resized
    return images, labels, [str(n) for n in names]


def _read_image(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return _resize(image.convert("RGB"), image_size)
    except OSError as error:
        raise ValueError(f"cannot read miniImageNet image {path}: {error}") from error


def _resize(image: Image.Image, image_size: int) -> np.ndarray:
    from PIL import Image

    if image.size != (image_size, image_size):
        # The CSV layout often ships full-size ImageNet photos; Lanczos avoids aliasing when
        # shrinking them (the usual preprocessing resizes to 84 x 84 ignoring aspect ratio).
        image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)

"""Omniglot from its standard on-disk layout (nothing is downloaded).

Expected layout, as unzipped from ``images_background.zip`` and ``images_evaluation.zip`` of the
Omniglot GitHub repository (https://github.com/brendenlake/omniglot, folder ``python``)::

    <root>/images_background/<alphabet>/<character>/<image>.png    30 alphabets, 964 characters
    <root>/images_evaluation/<alphabet>/<character>/<image>.png    20 alphabets, 659 characters

torchvision's layout (``<root>/omniglot-py/images_background/...``) is found as well. Each
character has 20 binary 105 x 105 PNGs, black strokes on white. They are resized to
``image_size`` (28 by default) with Lanczos filtering and inverted to white strokes on black, the
convention of the built-in glyph benchmark. Optionally each character is rotated by 90, 180 and
270 degrees to make three more classes, the augmentation of Santoro et al. (2016) used by MAML.

References:
    Lake, Salakhutdinov and Tenenbaum (2015), "Human-level concept learning through probabilistic
    program induction", Science 350(6266).
    Santoro, Bartunov, Botvinick, Wierstra and Lillicrap (2016), "Meta-learning with
    memory-augmented neural networks", ICML -- rotations as new classes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from metagrad.progress import progress_bar

from .class_dataset import ClassDataset, Splits

_LAYOUT = "<root>/images_{subset}/<alphabet>/<character>/*.png"
_HOW_TO_GET = (
    "download Omniglot from its GitHub repository (github.com/brendenlake/omniglot, folder "
    "'python') and unzip images_background.zip and images_evaluation.zip into {root}"
)


def load_omniglot(
    root: str | Path,
    subset: Literal["background", "evaluation"] = "background",
    *,
    image_size: int = 28,
    rotations: bool = True,
    alphabets: list[str] | None = None,
    progress: bool = True,
) -> ClassDataset:
    """Load one Omniglot subset as a :class:`~.class_dataset.ClassDataset`.

    Args:
        root: folder holding ``images_background`` and/or ``images_evaluation``.
        subset: ``"background"`` (the usual meta-training set) or ``"evaluation"``.
        image_size: side of the resized square images.
        rotations: add the 90, 180 and 270 degree rotations of each character as new classes
            (4x the classes; class names end in ``/rot000`` .. ``/rot270``).
        alphabets: load only these alphabets (folder names); all when None.
        progress: show a progress bar while reading the images.

    Returns:
        Images (n, image_size, image_size, 1) uint8, white strokes on black; class names
        ``"<alphabet>/<character>"`` (plus the rotation), class alphabets the alphabet folders.

    Raises:
        FileNotFoundError: if ``root`` or the subset folder does not exist.
        ValueError: if the folder does not follow the layout, or an argument is invalid.

    References:
        Lake et al. (2015), Science 350(6266); Santoro et al. (2016), ICML (rotations).
    """
    if subset not in ("background", "evaluation"):
        raise ValueError(
            f"load_omniglot: `subset` must be 'background' or 'evaluation'; received {subset!r}"
        )
    if image_size < 1:
        raise ValueError(f"load_omniglot: `image_size` must be positive; received {image_size}")
    folder = omniglot_folder(root, subset)
    characters = _character_folders(folder, subset, alphabets)

    files: list[Path] = []
    labels: list[int] = []
    for label, (_, character_dir) in enumerate(characters):
        pngs = sorted(character_dir.glob("*.png"))
        files += pngs
        labels += [label] * len(pngs)

    images = np.empty((len(files), image_size, image_size), dtype=np.uint8)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"omniglot {subset}", total=len(files))
        for i, path in enumerate(files):
            images[i] = _read(path, image_size)
            bar.advance(task)

    names = [f"{alphabet}/{d.name}" for alphabet, d in characters]
    class_alphabets = [alphabet for alphabet, _ in characters]
    label_array = np.asarray(labels, dtype=np.int64)
    if rotations:
        # Class c rotated by k quarter turns becomes class 4c + k.
        images = np.concatenate([np.rot90(images, k, axes=(1, 2)) for k in range(4)])
        label_array = np.concatenate([4 * label_array + k for k in range(4)])
        names = [f"{n}/rot{90 * k:03d}" for n in names for k in range(4)]
        class_alphabets = [a for a in class_alphabets for _ in range(4)]
    return ClassDataset.from_labels(
        np.ascontiguousarray(images[..., None]),
        label_array,
        names,
        class_alphabets,
        name=f"omniglot/{subset}",
    )


def omniglot_splits(
    root: str | Path,
    *,
    image_size: int = 28,
    rotations: bool = True,
    val_alphabets: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> Splits:
    """Omniglot as train / val / test, disjoint by alphabet.

    Test is the evaluation set (20 alphabets). Validation is ``val_alphabets`` alphabets of the
    background set chosen with ``seed``; train is the rest of the background set.

    Args:
        root: folder holding ``images_background`` and ``images_evaluation``.
        image_size: side of the resized images.
        rotations: add rotated copies as new classes (see :func:`load_omniglot`).
        val_alphabets: number of background alphabets held out for validation.
        seed: seed of the choice of validation alphabets.
        progress: show a progress bar.

    Returns:
        The :class:`~.class_dataset.Splits`.

    References:
        Lake et al. (2015), Science 350(6266).
    """
    background = omniglot_folder(root, "background")
    # Validates the layout (with its own messages) before the alphabets are counted.
    names = sorted({alphabet for alphabet, _ in _character_folders(background, "background", None)})
    if not 1 <= val_alphabets < len(names):
        raise ValueError(
            f"omniglot_splits: `val_alphabets` must be between 1 and {len(names) - 1} (the "
            f"background set has {len(names)} alphabets); received {val_alphabets}"
        )
    rng = np.random.default_rng(seed)
    val_names = sorted(rng.choice(names, size=val_alphabets, replace=False).tolist())
    train_names = [n for n in names if n not in val_names]
    kwargs = {"image_size": image_size, "rotations": rotations, "progress": progress}
    train = load_omniglot(root, "background", alphabets=train_names, **kwargs)
    val = load_omniglot(root, "background", alphabets=val_names, **kwargs)
    test = load_omniglot(root, "evaluation", **kwargs)
    return Splits(
        dataclasses.replace(train, name="omniglot/train (background)"),
        dataclasses.replace(val, name="omniglot/val (background)"),
        dataclasses.replace(test, name="omniglot/test (evaluation)"),
    )


def omniglot_folder(root: str | Path, subset: str) -> Path:
    """The ``images_<subset>`` folder under ``root`` (or under ``root/omniglot-py``).

    Raises:
        FileNotFoundError: with what was expected where, and how to get it.
    """
    root = Path(root).expanduser()
    layout = _LAYOUT.format(subset=subset)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Omniglot root {root} does not exist; expected {layout}. "
            + _HOW_TO_GET.format(root=root)
        )
    for candidate in (root / f"images_{subset}", root / "omniglot-py" / f"images_{subset}"):
        if candidate.is_dir():
            return candidate
    zipped = root / f"images_{subset}.zip"
    hint = f"{zipped} exists: unzip it there" if zipped.is_file() else _HOW_TO_GET.format(root=root)
    found = sorted(p.name for p in root.iterdir())[:10]
    raise FileNotFoundError(
        f"expected {layout}; found no 'images_{subset}' folder in {root} (it contains: "
        f"{found or 'nothing'}) -- {hint}"
    )


def _character_folders(
    folder: Path, subset: str, alphabets: list[str] | None
) -> list[tuple[str, Path]]:
    layout = _LAYOUT.format(subset=subset)
    alphabet_dirs = sorted(d for d in folder.iterdir() if d.is_dir())
    if not alphabet_dirs:
        raise ValueError(
            f"expected {layout}; found no alphabet folders in {folder}. If the zip was unpacked "
            "one level too deep or too shallow, move the alphabet folders directly under it"
        )
    if alphabets is not None:
        missing = sorted(set(alphabets) - {d.name for d in alphabet_dirs})
        if missing:
            raise ValueError(
                f"load_omniglot: `alphabets` names folders that are not in {folder}: {missing}"
            )
        alphabet_dirs = [d for d in alphabet_dirs if d.name in set(alphabets)]
    characters = []
    for alphabet_dir in alphabet_dirs:
        if any(alphabet_dir.glob("*.png")):
            raise ValueError(
                f"expected {layout}; found PNG files directly in the alphabet folder "
                f"{alphabet_dir}: each character needs its own folder of PNGs"
            )
        character_dirs = sorted(d for d in alphabet_dir.iterdir() if d.is_dir())
        if not character_dirs:
            raise ValueError(f"expected {layout}; alphabet folder {alphabet_dir} has no characters")
        for character_dir in character_dirs:
            if not any(character_dir.glob("*.png")):
                raise ValueError(
                    f"expected {layout}; character folder {character_dir} holds no .png images"
                )
            characters.append((alphabet_dir.name, character_dir))
    return characters


def _read(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            gray = image.convert("L")
    except OSError as error:
        raise ValueError(f"cannot read Omniglot image {path}: {error}") from error
    if gray.size != (image_size, image_size):
        gray = gray.resize((image_size, image_size), Image.Resampling.LANCZOS)
    # Omniglot draws black strokes on white; invert so that ink is bright, as in the glyph data.
    return 255 - np.asarray(gray, dtype=np.uint8)

"""Built-in Omniglot-like few-shot benchmark, rendered locally from matplotlib's fonts.

Each class is a Unicode character (letter, digit or symbol); its instances are renderings in
different fonts with a small random affine jitter, like Omniglot's characters drawn by different
people. Classes are grouped into alphabets (related Unicode blocks, see :mod:`.alphabets`) and
train / validation / test are disjoint *by alphabet*, like Omniglot's background / evaluation
sets. Nothing is downloaded: the fonts ship with matplotlib, and the result is cached on disk.

How the benchmark is built (all of it deterministic from ``GlyphConfig.seed``):

1. Candidates: code points that are letters, numbers or symbols (see
   :data:`.alphabets.GLYPH_CATEGORIES`) in the fonts' character maps. By default precomposed
   characters (those with a canonical Unicode decomposition, e.g. "Ã" = "A" + combining tilde,
   "Й" = "И" + breve, the Ohm sign = "Ω") are left out: they are a base letter plus a mark of a
   few pixels, which would turn much of the benchmark into accent spotting.
2. Presence: a character is kept if at least ``min_fonts`` fonts map it to a glyph with ink.
3. De-duplication: characters that look the same (Latin "A", Greek "Α", Cyrillic "А"; "+" and
   the box-drawing cross) are merged by keeping the one with the lowest code point. Similarity is
   the median, over the fonts both characters exist in, of the Pearson correlation between their
   unjittered renderings in that font. Comparing within one font matters: the *mean* images over
   fonts are blurred by the differences between fonts, so they correlate above 0.9 for characters
   that are clearly different, like "e" and "в". Pairs above ``duplicate_threshold`` (0.95) are
   duplicates; at 0.95 these are pairs such as "A"/"Α", "ɵ"/"ѳ", "└"/"╰", "3"/"З", while "l"/"I"
   (0.92) or "E"/"F" (0.88) stay distinct.
4. Alphabets with fewer than ``min_alphabet_size`` classes are dropped.
5. Splits: alphabets are assigned to train / val / test to approach ``split_fractions`` of the
   classes (the best of 256 seeded random orders of a greedy assignment).
6. Instances: instance ``i`` of a character uses font ``order[i % n_fonts]`` of a random order of
   the fonts it exists in (so with 10 - 22 fonts and 20 instances, each font appears once or twice)
   and its own random jitter (:class:`~.rendering.Jitter`).

Images are 28 x 28, white glyph on black (like Omniglot with its colours inverted), uint8 in the
cache; the episode sampler returns them as float32 in [0, 1].

References:
    Lake, Salakhutdinov and Tenenbaum (2015), "Human-level concept learning through probabilistic
    program induction", Science 350(6266) -- Omniglot, whose protocol this benchmark imitates.
"""

from __future__ import annotations

import dataclasses
import json
import time
import unicodedata
import warnings
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from metagrad.progress import progress_bar

from .alphabets import alphabet_of, character_name, is_glyph_candidate
from .cache import cache_dir as resolve_cache_dir
from .cache import config_digest, save_cache
from .class_dataset import ClassDataset, Splits, check_split_fractions
from .rendering import (
    DEFAULT_FONTS,
    NO_JITTER,
    Jitter,
    font_code_points,
    font_path,
    load_font,
    place_glyph,
    render_glyph,
)

if TYPE_CHECKING:
    from rich.progress import Progress

# Bump when the build procedure changes, so that old cache files are not reused.
BUILD_VERSION = 1
# Rendering at twice the output resolution then averaging 2x2 blocks gives clean anti-aliasing.
_SUPERSAMPLE = 2
# Unjittered glyphs are at most this many pixels less than the image side, so that rotation,
# scaling and shifting rarely push ink over the border.
_FIT_MARGIN = 6
SPLIT_NAMES = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class GlyphConfig:
    """Everything that determines the glyph benchmark; its hash names the cache file.

    Attributes:
        fonts: font file names (from matplotlib's ``fonts/ttf``) or paths; see
            :data:`~.rendering.DEFAULT_FONTS`.
        min_fonts: keep characters present (with ink) in at least this many of ``fonts``.
        instances_per_class: renderings per character.
        image_size: side of the square images, in pixels.
        jitter: ranges of the random affine jitter; :data:`~.rendering.NO_JITTER` for none.
        duplicate_threshold: characters whose same-font renderings correlate above this (median
            over shared fonts) are duplicates; only the lowest code point is kept.
        include_precomposed: keep characters with a canonical decomposition (accented letters).
        min_alphabet_size: drop alphabets with fewer classes than this (after de-duplication).
        split_fractions: target fractions of classes in train / val / test.
        code_points: if given, only these code points are candidates (small builds for tests).
        seed: seed of the jitter, the font order of instances and the split.
    """

    fonts: tuple[str, ...] = DEFAULT_FONTS
    min_fonts: int = 10
    instances_per_class: int = 20
    image_size: int = 28
    jitter: Jitter = Jitter()
    duplicate_threshold: float = 0.95
    include_precomposed: bool = False
    min_alphabet_size: int = 5
    split_fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)
    code_points: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so that equal configurations hash equally.
        object.__setattr__(self, "fonts", tuple(str(f) for f in self.fonts))
        object.__setattr__(self, "jitter", Jitter(*self.jitter))
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        if self.code_points is not None:
            object.__setattr__(
                self, "code_points", tuple(sorted({int(c) for c in self.code_points}))
            )
        if not 1 <= self.min_fonts <= len(self.fonts):
            raise ValueError(
                f"GlyphConfig: `min_fonts` must be between 1 and the number of fonts "
                f"({len(self.fonts)}); received {self.min_fonts}. Lower it or pass more `fonts`"
            )
        if self.instances_per_class < 2:
            raise ValueError(
                "GlyphConfig: `instances_per_class` must be at least 2 (one support and one query "
                f"image); received {self.instances_per_class}"
            )
        if self.image_size < 8:
            raise ValueError(f"GlyphConfig: `image_size` must be >= 8; received {self.image_size}")
        if not 0.0 < self.duplicate_threshold <= 1.0:
            raise ValueError(
                "GlyphConfig: `duplicate_threshold` is a correlation in (0, 1]; received "
                f"{self.duplicate_threshold}"
            )
        check_split_fractions("GlyphConfig", self.split_fractions)

    def to_json(self) -> dict:
        """The configuration as a JSON-serialisable dict."""
        d = dataclasses.asdict(self)
        d["jitter"] = self.jitter._asdict()
        return d


class Duplicate(NamedTuple):
    """A character removed because it looks like one that was kept."""

    removed: int
    kept: int
    similarity: float


@dataclasses.dataclass(frozen=True, eq=False)
class GlyphBenchmark:
    """The built glyph benchmark: three class-disjoint splits and how they were made.

    Attributes:
        train: meta-training classes.
        val: meta-validation classes.
        test: meta-test classes.
        code_points: (train, val, test) code point of each class, aligned with the datasets.
        config: the configuration it was built from.
        duplicates: removed near-duplicate characters, with the character they duplicate.
        dropped_alphabets: alphabets left out for being smaller than ``min_alphabet_size``, with
            their number of classes.
        cache_path: the cache file, or None when built without a cache.
        from_cache: True if loaded from an existing cache file (nothing was rendered).
    """

    train: ClassDataset
    val: ClassDataset
    test: ClassDataset
    code_points: tuple[np.ndarray, np.ndarray, np.ndarray]
    config: GlyphConfig
    duplicates: tuple[Duplicate, ...]
    dropped_alphabets: dict[str, int]
    cache_path: Path | None = None
    from_cache: bool = False

    @property
    def splits(self) -> Splits:
        """(train, val, test) as a :class:`~.class_dataset.Splits`."""
        return Splits(self.train, self.val, self.test)


def glyph_cache_path(
    config: GlyphConfig | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Cache file of the benchmark built from ``config``.

    The name hashes the configuration, the build version, the Pillow version (FreeType rendering
    may change between versions) and the size of each font file (matplotlib may update its fonts),
    so a cache file is only reused for an identical build.

    Args:
        config: the configuration; the default benchmark when None.
        cache_dir: cache folder; default from :func:`~.cache.cache_dir`.

    Returns:
        The path ``<cache_dir>/glyphs-v<version>-<hash>.npz`` (which may not exist yet).
    """
    import PIL  # the renderer's version is part of the cache key

    config = config or GlyphConfig()
    key = {
        "config": config.to_json(),
        "build_version": BUILD_VERSION,
        "pillow": PIL.__version__,
        "font_bytes": [font_path(f).stat().st_size for f in config.fonts],
    }
    return resolve_cache_dir(cache_dir) / f"glyphs-v{BUILD_VERSION}-{config_digest(key)}.npz"


def load_glyphs(
    config: GlyphConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    rebuild: bool = False,
    cache: bool = True,
) -> GlyphBenchmark:
    """Load the glyph benchmark from the cache, building and caching it on first use.

    Args:
        config: what to build; the default benchmark (22 fonts, 20 instances, 28 x 28) when None.
        cache_dir: cache folder; defaults to ``$METAGRAD_CACHE`` or ``~/.cache/metagrad``.
        progress: show a progress bar (on stderr) while building.
        rebuild: build again even if a cache file exists (and overwrite it).
        cache: read and write the cache; False builds in memory only (e.g. read-only disks).

    Returns:
        The benchmark; ``from_cache`` says whether it was read from the cache.

    References:
        Lake et al. (2015), Science 350(6266) -- Omniglot, which this benchmark imitates.
    """
    config = config or GlyphConfig()
    if not cache:
        return _assemble(build_glyph_arrays(config, progress=progress), config, None, False)
    path = glyph_cache_path(config, cache_dir)
    if path.is_file() and not rebuild:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            return _assemble(arrays, config, path, from_cache=True)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            # Writes are atomic, so this means outside damage: rebuilding is cheap and safe.
            warnings.warn(
                f"glyph cache file {path} is unreadable ({error}); rebuilding it", stacklevel=2
            )
    arrays = build_glyph_arrays(config, progress=progress)
    save_cache(path, **arrays)
    return _assemble(arrays, config, path, from_cache=False)


def build_glyph_arrays(config: GlyphConfig, *, progress: bool = True) -> dict[str, np.ndarray]:
    """Render the benchmark; returns the arrays stored in the cache file (see module doc).

    Args:
        config: what to build.
        progress: show a progress bar on stderr.

    Returns:
        A dict with ``images`` (n_classes, instances, size, size) uint8, ``code_points``,
        ``alphabets`` and ``split`` (0 train, 1 val, 2 test) per class, the removed duplicates
        (``duplicate_removed``, ``duplicate_kept``, ``duplicate_similarity``), the code points of
        dropped small alphabets (``dropped_code_points``), and the configuration as JSON.
    """
    start_time = time.perf_counter()
    with progress_bar(progress) as bar:
        candidates, crops, present = _rasterise(config, bar)
        keep, duplicates = _deduplicate(crops, present, config, bar)

        alphabets = [alphabet_of(cp) for cp in candidates]
        kept_sizes = Counter(a for a, k in zip(alphabets, keep, strict=True) if k)
        small = {a for a, n in kept_sizes.items() if n < config.min_alphabet_size}
        dropped = [
            cp for cp, a, k in zip(candidates, alphabets, keep, strict=True) if k and a in small
        ]
        kept = np.flatnonzero(keep & np.array([a not in small for a in alphabets], dtype=bool))
        assignment = split_alphabets(
            {a: n for a, n in kept_sizes.items() if a not in small},
            config.split_fractions,
            config.seed,
        )

        task = bar.add_task("glyphs: rendering instances", total=len(kept))
        size = config.image_size
        images = np.zeros((len(kept), config.instances_per_class, size, size), dtype=np.uint8)
        for row, i in enumerate(kept):
            images[row] = _render_instances(candidates[i], crops[i], config)
            bar.advance(task)
        if progress:
            bar.console.print(
                f"glyphs: {len(kept)} classes in {len(assignment)} alphabets, "
                f"{time.perf_counter() - start_time:.1f} s"
            )

    kept_alphabets = [alphabets[i] for i in kept]
    return {
        "images": images,
        "code_points": np.array([candidates[i] for i in kept], dtype=np.int32),
        "alphabets": np.array(kept_alphabets, dtype=str),
        "split": np.array([assignment[a] for a in kept_alphabets], dtype=np.int8),
        "duplicate_removed": np.array([candidates[d.removed] for d in duplicates], np.int32),
        "duplicate_kept": np.array([candidates[d.kept] for d in duplicates], np.int32),
        "duplicate_similarity": np.array([d.similarity for d in duplicates], np.float32),
        "dropped_code_points": np.array(dropped, dtype=np.int32),
        "config": np.array(json.dumps(config.to_json(), sort_keys=True)),
    }


def _rasterise(
    config: GlyphConfig, bar: Progress
) -> tuple[list[int], list[dict[int, np.ndarray]], np.ndarray]:
    """Candidates present with ink in >= min_fonts fonts, their ink crops per font, presence."""
    maps = [font_code_points(f) for f in config.fonts]
    candidates = _candidates(config, maps)
    # Rasterise every (candidate, font) pair once; the crops are reused for every instance.
    task = bar.add_task("glyphs: rasterising", total=len(config.fonts))
    crops: list[dict[int, np.ndarray]] = [{} for _ in candidates]
    for f, font_name in enumerate(config.fonts):
        font = load_font(font_name, config.image_size * _SUPERSAMPLE)
        for i, cp in enumerate(candidates):
            if cp in maps[f]:
                crop = render_glyph(font, cp)
                if crop is not None:
                    crops[i][f] = crop
        bar.advance(task)
    present = np.array([[f in c for f in range(len(config.fonts))] for c in crops], dtype=bool)
    present = present.reshape(len(candidates), len(config.fonts))
    enough = present.sum(axis=1) >= config.min_fonts
    if not enough.any():
        raise ValueError(
            f"glyphs: no character is present in at least `min_fonts`={config.min_fonts} of the "
            f"{len(config.fonts)} fonts among the candidates ({len(candidates)} code points). "
            "Lower `min_fonts`, add `fonts`, or widen `code_points`"
        )
    keep = np.flatnonzero(enough)
    return [candidates[i] for i in keep], [crops[i] for i in keep], present[keep]


def _deduplicate(
    crops: list[dict[int, np.ndarray]], present: np.ndarray, config: GlyphConfig, bar: Progress
) -> tuple[np.ndarray, list[Duplicate]]:
    """Render each (character, font) without jitter and run :func:`find_duplicates`."""
    size = config.image_size
    task = bar.add_task("glyphs: de-duplicating", total=len(crops))
    plain = np.zeros((len(crops), len(config.fonts), size * size), dtype=np.uint8)
    for i, by_font in enumerate(crops):
        for f, crop in by_font.items():
            plain[i, f] = _place(crop, size, NO_JITTER, None).ravel()
        bar.advance(task)
    return find_duplicates(plain, present, config.duplicate_threshold)


def find_duplicates(
    renders: np.ndarray, present: np.ndarray, threshold: float, prefilter: float = 0.8
) -> tuple[np.ndarray, list[Duplicate]]:
    """Greedy de-duplication of classes by same-font rendering correlation.

    Classes are visited in index order; a class is removed if its similarity to an earlier kept
    class exceeds ``threshold``. The similarity of two classes is the median, over the fonts where
    both are present, of the Pearson correlation of their renderings. Only pairs whose *mean*
    images (over fonts) correlate above ``prefilter`` are examined: the mean-image correlation is
    cheap and, being blurred, higher than the same-font one for near-identical characters.

    Args:
        renders: (n_classes, n_fonts, n_pixels) renderings, any value where absent.
        present: (n_classes, n_fonts) bool, whether each class exists in each font.
        threshold: similarity above which a pair is a duplicate.
        prefilter: mean-image correlation below which a pair is not examined.

    Returns:
        A bool mask of kept classes, and the removed classes as :class:`Duplicate` records of
        indices into ``renders``.
    """
    n = len(renders)
    x = renders.astype(np.float32)
    counts = np.maximum(present.sum(axis=1, keepdims=True), 1)
    mean = (x * present[..., None]).sum(axis=1) / counts
    corr = _normalise(mean) @ _normalise(mean).T
    left, right = np.nonzero(np.triu(corr > min(prefilter, threshold), k=1))
    similarity = np.empty(len(left), dtype=np.float32)
    chunk = 512  # bounds memory to chunk x n_fonts x n_pixels floats
    for s in range(0, len(left), chunk):
        a, b = left[s : s + chunk], right[s : s + chunk]
        per_font = np.einsum("kfd,kfd->kf", _normalise(x[a]), _normalise(x[b]))
        both = present[a] & present[b]
        per_font = np.where(both, per_font, np.nan)
        with np.errstate(all="ignore"):
            median = np.nanmedian(per_font, axis=1)
        # With no font in common, fall back to the mean-image correlation.
        similarity[s : s + chunk] = np.where(both.any(axis=1), median, corr[a, b])
    keep = np.ones(n, dtype=bool)
    duplicates = []
    # np.nonzero returns pairs in (left, right) lexicographic order: earlier classes win.
    for i, j, sim in zip(left, right, similarity, strict=True):
        if sim > threshold and keep[i] and keep[j]:
            keep[j] = False
            duplicates.append(Duplicate(int(j), int(i), float(sim)))
    return keep, duplicates


def split_alphabets(
    class_counts: dict[str, int],
    fractions: Sequence[float],
    seed: int,
    trials: int = 256,
) -> dict[str, int]:
    """Assign whole alphabets to splits so that class counts approach the target fractions.

    Each trial visits the alphabets in a random order and puts each into the split furthest
    below its target; the trial with the smallest squared deviation from the targets wins (the
    first one on ties). Every split receives at least one alphabet when there are enough.

    Args:
        class_counts: number of classes of each alphabet.
        fractions: target fraction of classes per split.
        seed: seed of the random orders.
        trials: number of random orders tried.

    Returns:
        The split index of each alphabet.
    """
    names = sorted(class_counts)
    if len(names) < len(fractions):
        raise ValueError(
            f"split_alphabets: need at least {len(fractions)} alphabets to make "
            f"{len(fractions)} disjoint splits; only {len(names)} remain ({names}). Lower "
            "`min_fonts` or `min_alphabet_size`, or widen `code_points`"
        )
    counts = np.array([class_counts[a] for a in names], dtype=np.float64)
    target = np.asarray(fractions, dtype=np.float64) * counts.sum()
    rng = np.random.default_rng(seed)
    best, best_error = None, np.inf
    for _ in range(trials):
        filled = np.zeros(len(fractions))
        assign = np.empty(len(names), dtype=np.int64)
        for a in rng.permutation(len(names)):
            k = int(np.argmax(target - filled))
            assign[a] = k
            filled[k] += counts[a]
        if np.any(filled == 0):
            continue
        error = float(np.sum((filled - target) ** 2))
        if error < best_error:
            best, best_error = assign.copy(), error
    if best is None:  # only possible with as many alphabets as splits and an odd seed
        best = np.argsort(-counts).argsort() % len(fractions)
    return {a: int(k) for a, k in zip(names, best, strict=True)}


def _candidates(config: GlyphConfig, maps: list[frozenset[int]]) -> list[int]:
    counts = Counter(cp for m in maps for cp in m)
    allowed = None if config.code_points is None else set(config.code_points)
    out = []
    for cp, n in counts.items():
        if n < config.min_fonts or not is_glyph_candidate(cp):
            continue
        if allowed is not None and cp not in allowed:
            continue
        if not config.include_precomposed and _is_precomposed(cp):
            continue
        out.append(cp)
    return sorted(out)


def _is_precomposed(cp: int) -> bool:
    # Canonical decompositions have no "<tag>" prefix; compatibility ones ("<super>", "<circle>",
    # ...) are different shapes and are left to the duplicate check.
    decomposition = unicodedata.decomposition(chr(cp))
    return bool(decomposition) and not decomposition.startswith("<")


def _render_instances(cp: int, crops: dict[int, np.ndarray], config: GlyphConfig) -> np.ndarray:
    # A generator per character seeded by (seed, code point): a character's images do not depend on
    # which other characters are in the build, so small test builds match the full benchmark.
    rng = np.random.default_rng([config.seed, cp])
    fonts = np.array(sorted(crops))
    order = rng.permutation(fonts)
    out = np.empty((config.instances_per_class, config.image_size, config.image_size), np.uint8)
    for k in range(config.instances_per_class):
        out[k] = _place(crops[int(order[k % len(order)])], config.image_size, config.jitter, rng)
    return out


def _place(
    crop: np.ndarray, size: int, jitter: Jitter, rng: np.random.Generator | None
) -> np.ndarray:
    fit = size - _FIT_MARGIN
    if rng is None:
        return place_glyph(crop, size, supersample=_SUPERSAMPLE, fit=fit)
    u = rng.uniform(-1.0, 1.0, size=4)
    return place_glyph(
        crop,
        size,
        supersample=_SUPERSAMPLE,
        fit=fit,
        rotation_deg=jitter.rotation_deg * u[0],
        scale=rng.uniform(*jitter.scale),
        shear=jitter.shear * u[1],
        shift=(jitter.shift_px * u[2], jitter.shift_px * u[3]),
        dilate=bool(rng.random() < jitter.dilate),
    )


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _assemble(
    arrays: dict[str, np.ndarray], config: GlyphConfig, path: Path | None, from_cache: bool
) -> GlyphBenchmark:
    images = arrays["images"][..., None]  # channel axis: (classes, instances, H, W, 1)
    cps = arrays["code_points"]
    alphabets = [str(a) for a in arrays["alphabets"]]
    datasets, split_cps = [], []
    for k, split_name in enumerate(SPLIT_NAMES):
        rows = np.flatnonzero(arrays["split"] == k)
        datasets.append(
            ClassDataset.from_grid(
                np.ascontiguousarray(images[rows]),
                [character_name(int(cps[r])) for r in rows],
                [alphabets[r] for r in rows],
                name=f"glyphs/{split_name}",
            )
        )
        split_cps.append(cps[rows])
    duplicates = tuple(
        Duplicate(int(r), int(k), float(s))
        for r, k, s in zip(
            arrays["duplicate_removed"],
            arrays["duplicate_kept"],
            arrays["duplicate_similarity"],
            strict=True,
        )
    )
    dropped = Counter(alphabet_of(int(cp)) for cp in arrays["dropped_code_points"])
    return GlyphBenchmark(
        *datasets,
        code_points=tuple(split_cps),  # type: ignore[arg-type]
        config=config,
        duplicates=duplicates,
        dropped_alphabets=dict(dropped),
        cache_path=path,
        from_cache=from_cache,
    )

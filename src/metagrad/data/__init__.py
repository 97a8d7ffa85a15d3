"""Datasets: a built-in glyph benchmark, sinusoid regression, few-shot loaders, episode sampling,
and byte-level text from the Python standard library (or any local text)."""

from .alphabets import alphabet_of, unicode_block
from .baseline import BaselineResult, nearest_neighbour_baseline
from .cache import CACHE_ENV_VAR, cache_dir
from .class_dataset import ClassDataset, Splits
from .episodes import (
    EpisodeIndex,
    Episodes,
    episodes_at,
    gather_episodes,
    iterate_episodes,
    sample_episode_indices,
    sample_episodes,
)
from .glyphs import (
    Duplicate,
    GlyphBenchmark,
    GlyphConfig,
    build_glyph_arrays,
    find_duplicates,
    glyph_cache_path,
    load_glyphs,
    split_alphabets,
)
from .miniimagenet import load_miniimagenet, miniimagenet_splits
from .omniglot import load_omniglot, omniglot_splits
from .rendering import DEFAULT_FONTS, NO_JITTER, Jitter
from .sinusoid import SinusoidTasks, iterate_sinusoid_tasks, sample_sinusoid_tasks, sinusoid
from .summary import dataset_statistics, save_sample_grid, statistics_markdown
from .text import (
    TextConfig,
    TextDataset,
    TextSplit,
    load_stdlib_text,
    load_text,
    stdlib_files,
    stdlib_prose,
    text_cache_path,
)

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_FONTS",
    "NO_JITTER",
    "BaselineResult",
    "ClassDataset",
    "Duplicate",
    "EpisodeIndex",
    "Episodes",
    "GlyphBenchmark",
    "GlyphConfig",
    "Jitter",
    "SinusoidTasks",
    "TextConfig",
    "TextDataset",
    "TextSplit",
    "Splits",
    "alphabet_of",
    "build_glyph_arrays",
    "cache_dir",
    "dataset_statistics",
    "episodes_at",
    "find_duplicates",
    "gather_episodes",
    "glyph_cache_path",
    "iterate_episodes",
    "iterate_sinusoid_tasks",
    "load_glyphs",
    "load_miniimagenet",
    "load_omniglot",
    "load_stdlib_text",
    "load_text",
    "miniimagenet_splits",
    "nearest_neighbour_baseline",
    "omniglot_splits",
    "sample_episode_indices",
    "sample_episodes",
    "sample_sinusoid_tasks",
    "save_sample_grid",
    "sinusoid",
    "split_alphabets",
    "statistics_markdown",
    "stdlib_files",
    "stdlib_prose",
    "text_cache_path",
    "unicode_block",
]

"""The built-in glyph benchmark: determinism, splits, de-duplication, cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

import metagrad.data.glyphs as glyphs_module
from metagrad.data import (
    NO_JITTER,
    GlyphConfig,
    build_glyph_arrays,
    dataset_statistics,
    find_duplicates,
    glyph_cache_path,
    load_glyphs,
    save_sample_grid,
    split_alphabets,
    statistics_markdown,
)
from metagrad.data.rendering import font_code_points

from .conftest import SMALL_FONTS, small_config

# Six characters from four alphabets (Latin, Arrows, Box Drawing, Geometric Shapes).
TINY = tuple(map(ord, "AKZ")) + (0x2190, 0x2500, 0x25A0)


def test_images_are_uint8_glyphs_with_ink(small_glyphs):
    for ds in small_glyphs.splits:
        assert ds.images.dtype == np.uint8
        assert ds.image_shape == (28, 28, 1)
        assert np.all(ds.class_sizes == 6)
        ink = ds.images.reshape(len(ds.images), -1).max(axis=1)
        assert ink.min() > 128  # every instance has a visible glyph
        # White glyph on black: the border is mostly background.
        assert ds.images[:, 0, :, 0].mean() < 20


def test_splits_are_disjoint_by_alphabet(small_glyphs):
    train, val, test = small_glyphs.splits
    alphabets = [set(ds.class_alphabets) for ds in (train, val, test)]
    assert all(alphabets)
    assert not alphabets[0] & alphabets[1]
    assert not alphabets[0] & alphabets[2]
    assert not alphabets[1] & alphabets[2]
    code_points = np.concatenate(small_glyphs.code_points)
    assert len(np.unique(code_points)) == len(code_points)


def test_lookalike_characters_are_removed(small_glyphs):
    kept = set(np.concatenate(small_glyphs.code_points).tolist())
    assert ord("A") in kept
    assert 0x0391 not in kept  # GREEK CAPITAL LETTER ALPHA
    assert 0x0410 not in kept  # CYRILLIC CAPITAL LETTER A
    assert 0x0416 in kept  # CYRILLIC CAPITAL LETTER ZHE has no lookalike
    removed = {d.removed: d.kept for d in small_glyphs.duplicates}
    assert removed[0x0391] == ord("A") and removed[0x0410] == ord("A")
    assert all(
        d.similarity > small_glyphs.config.duplicate_threshold for d in small_glyphs.duplicates
    )


def test_no_duplicate_pair_above_threshold_remains(small_glyphs, tmp_path):
    # Rebuilding from exactly the kept characters must find no further duplicate: every pair of
    # kept characters is at or below the threshold.
    kept = tuple(np.concatenate(small_glyphs.code_points).tolist())
    config = small_config(code_points=kept, min_alphabet_size=1, instances_per_class=2)
    arrays = build_glyph_arrays(config, progress=False)
    assert len(arrays["duplicate_removed"]) == 0
    assert len(arrays["code_points"]) == len(kept)


def test_precomposed_characters_are_left_out_unless_asked():
    letters = [ord(c) for c in "AEIOU"] + [0x00C0, 0x00C9, 0x00D5]  # À É Õ
    maps = [font_code_points(f) for f in SMALL_FONTS]
    config = small_config(code_points=tuple(letters))
    assert glyphs_module._candidates(config, maps) == [ord(c) for c in "AEIOU"]
    config = small_config(code_points=tuple(letters), include_precomposed=True)
    assert glyphs_module._candidates(config, maps) == sorted(letters)


def test_build_is_deterministic_and_seeded(small_glyphs):
    again = build_glyph_arrays(small_glyphs.config, progress=False)
    images = np.concatenate([ds.images[..., 0] for ds in small_glyphs.splits])
    order = np.argsort(np.concatenate(small_glyphs.code_points), kind="stable")
    np.testing.assert_array_equal(
        again["images"].reshape(-1, 28, 28),
        images.reshape(-1, 6, 28, 28)[order].reshape(-1, 28, 28),
    )
    other = build_glyph_arrays(small_config(seed=1), progress=False)
    np.testing.assert_array_equal(other["code_points"], again["code_points"])
    assert not np.array_equal(other["images"], again["images"])  # different jitter


def test_character_images_do_not_depend_on_the_other_characters(small_glyphs):
    # Each character has its own generator, seeded by (seed, code point).
    config = small_config(code_points=TINY, min_alphabet_size=1)
    arrays = build_glyph_arrays(config, progress=False)
    train, val, test = small_glyphs.splits
    all_cps = np.concatenate(small_glyphs.code_points)
    all_images = np.concatenate([ds.images for ds in (train, val, test)]).reshape(-1, 6, 28, 28)
    for cp, images in zip(arrays["code_points"], arrays["images"], strict=True):
        np.testing.assert_array_equal(images, all_images[np.flatnonzero(all_cps == cp)[0]])


def test_instances_differ_and_jitter_can_be_turned_off():
    config = small_config(code_points=TINY, min_alphabet_size=1)
    jittered = build_glyph_arrays(config, progress=False)["images"]
    plain = build_glyph_arrays(
        small_config(
            code_points=TINY, min_alphabet_size=1, jitter=NO_JITTER, instances_per_class=12
        ),
        progress=False,
    )["images"]
    assert len({img.tobytes() for img in jittered[0]}) == 6
    # Without jitter, instance k and k + 6 use the same font (6 fonts): identical images.
    np.testing.assert_array_equal(plain[:, :6], plain[:, 6:])


def test_cache_is_reused_without_rendering(tmp_path, monkeypatch):
    config = small_config(code_points=TINY, min_alphabet_size=1)
    first = load_glyphs(config, cache_dir=tmp_path, progress=False)
    assert not first.from_cache
    assert first.cache_path == glyph_cache_path(config, tmp_path)
    mtime = os.stat(first.cache_path).st_mtime_ns
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_path.name]  # no temp file left

    def fail(*args, **kwargs):
        raise AssertionError("the cached benchmark was rendered again")

    monkeypatch.setattr(glyphs_module, "build_glyph_arrays", fail)
    second = load_glyphs(config, cache_dir=tmp_path, progress=False)
    assert second.from_cache
    assert os.stat(second.cache_path).st_mtime_ns == mtime
    for a, b in zip(first.splits, second.splits, strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        assert a.class_names == b.class_names and a.class_alphabets == b.class_alphabets
    assert second.duplicates == first.duplicates
    with pytest.raises(AssertionError, match="rendered again"):
        load_glyphs(config, cache_dir=tmp_path, progress=False, rebuild=True)


def test_cache_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("METAGRAD_CACHE", str(tmp_path / "env"))
    assert glyph_cache_path(small_config()).parent == tmp_path / "env"
    assert glyph_cache_path(small_config(), tmp_path / "arg").parent == tmp_path / "arg"
    assert glyph_cache_path(small_config()) != glyph_cache_path(small_config(seed=3))


def test_statistics_and_sample_grid(small_glyphs, tmp_path):
    stats = dataset_statistics(small_glyphs.splits)
    assert stats["total"]["classes"] == sum(ds.n_classes for ds in small_glyphs.splits)
    assert stats["train"]["instances_per_class"] == {"min": 6, "mean": 6.0, "max": 6}
    assert sum(stats["test"]["classes_per_alphabet"].values()) == stats["test"]["classes"]
    table = statistics_markdown(stats)
    assert table.count("\n") == 5 and "| train |" in table
    path = save_sample_grid(list(small_glyphs.splits), tmp_path / "grid.png", classes_per_dataset=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_find_duplicates_keeps_the_first_of_a_lookalike_group():
    rng = np.random.default_rng(0)
    base = rng.random((3, 2, 64)).astype(np.float32)
    renders = np.concatenate([base, base[:1] + 0.01 * rng.random((1, 2, 64))])  # 3 copies 0
    present = np.ones((4, 2), dtype=bool)
    keep, duplicates = find_duplicates(renders, present, threshold=0.95)
    assert keep.tolist() == [True, True, True, False]
    assert [(d.removed, d.kept) for d in duplicates] == [(3, 0)]
    # Only fonts present in both count: class 3 differs from 0 in font 1, where 0 is absent.
    renders[3, 1] = rng.random(64)
    present[0, 1] = False
    keep, _ = find_duplicates(renders, present, threshold=0.95, prefilter=-1.0)
    assert not keep[3]


def test_split_alphabets_balances_and_depends_on_seed():
    counts = {f"a{i}": n for i, n in enumerate([50, 40, 30, 20, 20, 10, 10, 10, 5, 5])}
    total = sum(counts.values())
    assignment = split_alphabets(counts, (0.6, 0.15, 0.25), seed=0)
    filled = np.bincount(list(assignment.values()), weights=[counts[a] for a in assignment])
    np.testing.assert_allclose(filled / total, [0.6, 0.15, 0.25], atol=0.03)
    assert assignment == split_alphabets(counts, (0.6, 0.15, 0.25), seed=0)
    assert any(
        split_alphabets(counts, (0.6, 0.15, 0.25), seed=s) != assignment for s in range(1, 5)
    )
    with pytest.raises(ValueError, match="need at least 3 alphabets"):
        split_alphabets({"a": 5, "b": 5}, (0.6, 0.15, 0.25), seed=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_fonts": 99}, "`min_fonts` must be between 1 and the number of fonts"),
        ({"instances_per_class": 1}, "`instances_per_class` must be at least 2"),
        ({"duplicate_threshold": 1.5}, r"`duplicate_threshold` is a correlation in \(0, 1\]"),
        ({"split_fractions": (0.5, 0.5, 0.5)}, "split_fractions must be three positive"),
        ({"image_size": 4}, "`image_size` must be >= 8"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GlyphConfig(**kwargs)


def test_missing_font_and_absent_characters_are_reported():
    with pytest.raises(FileNotFoundError, match="no 'NoSuchFont.ttf' among matplotlib's fonts"):
        glyph_cache_path(GlyphConfig(fonts=("NoSuchFont.ttf",), min_fonts=1))
    config = small_config(code_points=(0x4E00,))  # a CJK ideograph: in none of the fonts
    with pytest.raises(ValueError, match="no character is present in at least `min_fonts`=4"):
        build_glyph_arrays(config, progress=False)


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    load_glyphs(small_config(code_points=TINY, min_alphabet_size=1), cache_dir=tmp_path)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        "glyphs: rendering instances" in captured.err and "6 classes in 4 alphabets" in captured.err
    )


def test_damaged_cache_is_rebuilt_and_cache_can_be_off(tmp_path):
    config = small_config(code_points=TINY, min_alphabet_size=1)
    path = glyph_cache_path(config, tmp_path)
    path.write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="is unreadable .* rebuilding it"):
        bench = load_glyphs(config, cache_dir=tmp_path, progress=False)
    assert not bench.from_cache
    assert load_glyphs(config, cache_dir=tmp_path, progress=False).from_cache
    memory_only = load_glyphs(config, cache_dir=tmp_path / "unused", progress=False, cache=False)
    assert memory_only.cache_path is None and not (tmp_path / "unused").exists()
    np.testing.assert_array_equal(memory_only.train.images, bench.train.images)

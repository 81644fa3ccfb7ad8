from __future__ import annotations

import numpy as np
import pytest

from nml.benchmark.render import CORRUPTIONS, corrupt, render_glyph, sample_params


@pytest.fixture(scope="module")
def face():
    from nml.benchmark.fonts import fallback_font_files

    return next(p for p, _ in fallback_font_files() if p.endswith("DejaVuSans.ttf"))


def test_render_is_a_function_of_the_rng(face):
    a = render_glyph(face, "g", sample_params(np.random.default_rng([1, 2]), 32))
    b = render_glyph(face, "g", sample_params(np.random.default_rng([1, 2]), 32))
    c = render_glyph(face, "g", sample_params(np.random.default_rng([1, 3]), 32))
    assert a.shape == (32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_render_has_contrast_and_ink(face):
    for i in range(20):
        p = sample_params(np.random.default_rng(i), 32)
        assert abs(p.fg - p.bg) >= 90
        a = render_glyph(face, "A", p)
        assert (np.abs(a.astype(int) - p.bg) > 45).sum() > 10  # the glyph is visible


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corruptions_grow_with_severity_and_are_seeded(face, kind):
    img = render_glyph(face, "R", sample_params(np.random.default_rng(0), 32))
    diffs = []
    for sev in (1, 2, 3):
        x = corrupt(img, kind, sev, np.random.default_rng(5))
        assert x.dtype == np.uint8 and x.shape == img.shape
        assert np.array_equal(x, corrupt(img, kind, sev, np.random.default_rng(5)))
        diffs.append(np.abs(x.astype(float) - img).mean())
    assert 0 < diffs[0] < diffs[1] < diffs[2]


def test_corrupt_rejects_bad_arguments(face):
    img = np.zeros((32, 32), np.uint8)
    with pytest.raises(ValueError, match="unknown"):
        corrupt(img, "fog", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="severity"):
        corrupt(img, "blur", 4, np.random.default_rng(0))

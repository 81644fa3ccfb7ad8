from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nml.benchmark import fonts
from nml.benchmark.charsets import AMBIGUOUS_GROUPS, DIGITS, GREEK, LETTERS, SYMBOLS, glyph_classes


@pytest.fixture(scope="module")
def fallback():
    cands, used, _ = fonts.discover_fonts("fallback")
    assert used == "fallback"
    return dict((Path(p).name, p) for p, _ in cands), cands


def test_glyph_classes_merge_ambiguous_groups():
    classes = glyph_classes()
    assert len(classes) == 52 - sum(len(g) - 1 for g in AMBIGUOUS_GROUPS) == 44
    assert "".join(sorted("".join(classes))) == "".join(sorted(LETTERS))  # a partition
    assert "Oo" in classes and "Il" in classes and "Cc" in classes and "A" in classes
    assert not set("".join(classes)) & set(DIGITS + GREEK + SYMBOLS)  # downstream classes are novel


def test_audit_accepts_a_complete_face(fallback):
    by_name, _ = fallback
    a = fonts.audit_font(by_name["DejaVuSans.ttf"], fonts.DEFAULT_CHARSETS)
    assert a.family == "DejaVu Sans"
    assert all(a.covers.values()), a.reasons
    assert a.shapes.shape == (52, 256)


def test_audit_detects_tofu_for_missing_characters(fallback):
    by_name, _ = fallback
    a = fonts.audit_font(by_name["cmr10.ttf"], {"greek": GREEK, "digits": "0123456789"})
    assert a.covers["digits"]
    assert not a.covers["greek"] and a.reasons["greek"] in ("tofu (.notdef) render", "empty render")


def test_caps_only_check_flags_lowercase_drawn_as_small_capitals(fallback):
    from PIL import Image, ImageFont

    by_name, _ = fallback
    f = ImageFont.truetype(by_name["DejaVuSans.ttf"], fonts.AUDIT_SIZE)
    chars = "ABDEFGHNQRTabdefghnqrt"
    normal = {c: fonts.render_char(f, c).tobytes() for c in chars}
    assert not fonts._caps_only(normal, chars)
    small_caps = dict(normal)
    for up in "ABDEFGHNQRT":  # lowercase = the capital shrunk to ~x-height, as in a small-caps face
        big = Image.fromarray(fonts.render_char(f, up))
        canvas = Image.new("L", big.size, 0)
        canvas.paste(big.resize((48, 48), Image.BILINEAR), (8, 12))
        small_caps[up.lower()] = canvas.tobytes()
    assert fonts._caps_only(small_caps, chars)


def test_audit_reports_unreadable_files(tmp_path):
    bad = tmp_path / "broken.ttf"
    bad.write_bytes(b"not a font")
    a = fonts.audit_font(str(bad), fonts.DEFAULT_CHARSETS)
    assert not any(a.covers.values()) and set(a.reasons.values()) == {"unreadable"}


def test_select_fonts_drops_symbol_faces_and_splits_by_family(fallback):
    _, cands = fallback
    kept, dropped = fonts.select_fonts(cands)
    families = {f.family for f in kept}
    assert "cmsy10" not in families  # maps letters to math symbols: caught by the shape check
    assert dropped.get("glyphs unlike their characters (symbol/dingbat face)", 0) >= 1
    assert sum(dropped.values()) + len(kept) == len(cands)
    hand = {f.family for f in kept if f.split == "handwriting"}
    assert hand == {"Amatic SC", "Intuitive"}
    train = {f.family for f in kept if f.split == "train"}
    held = {f.family for f in kept if f.split == "heldout"}
    assert train and held and not train & held  # a family never straddles the split
    assert len(held) == round(0.2 * len(train | held))
    assert all(len(f.sha256) == 64 for f in kept)
    # no exact duplicate designs survive
    assert len({(f.family, f.style, f.sha256) for f in kept}) == len(kept)


def test_split_families_is_stable_and_order_free():
    fams = [f"Family {i}" for i in range(10)]
    a = fonts.split_families(fams)
    assert a == fonts.split_families(list(reversed(fams))) and len(a) == 2
    with pytest.raises(RuntimeError, match="at least 2"):
        fonts.split_families(["Only"])


def test_handwriting_matching_ignores_spacing():
    assert fonts.is_handwriting("DkgHandwriting") and fonts.is_handwriting("Ecolier_court")
    assert not fonts.is_handwriting("DejaVu Sans")


def test_discover_rejects_unknown_font_set():
    with pytest.raises(ValueError, match=r"fonts: expected one of auto\|debian\|fallback, got 'system'"):
        fonts.discover_fonts("system")


def test_render_char_centres_on_metric_box(fallback):
    from PIL import ImageFont

    by_name, _ = fallback
    f = ImageFont.truetype(by_name["DejaVuSans.ttf"], 40)
    p, big_p = fonts.render_char(f, "p"), fonts.render_char(f, "P")
    # 'p' descends below the baseline, 'P' does not: their ink is vertically offset
    rows = lambda a: np.nonzero(a.max(1) > 128)[0]  # noqa: E731
    assert rows(p).max() > rows(big_p).max()

"""Font discovery, render-based audit and the family-level split used by the embedded benchmark.

Two font sets are supported:

* ``debian``: the faces installed by the pinned Debian packages in ``DEBIAN_FONT_PACKAGES``
  (``tools/setup.sh`` installs them when it runs as root; the Dockerfile always does).
* ``fallback``: matplotlib's bundled faces plus the PyPI ``font-*`` packages that nml depends on.
  Far fewer faces; the tests use this set so they do not depend on the machine.

``auto`` picks ``debian`` when most pinned packages are installed and warns otherwise.

A cmap lookup says a font *claims* a character; the audit instead renders every character and
drops faces whose renders are empty, equal to the font's own .notdef box (tofu), identical for
distinct characters, or whose lowercase letters are just small capitals.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nml.benchmark.charsets import DIGITS, GREEK, LETTERS, SYMBOLS
from nml.checksums import file_sha256
from nml.seeding import hash_order_key

log = logging.getLogger(__name__)

# Pinned Debian font packages (one file shared with tools/setup.sh and the Dockerfile). Chosen for
# Latin coverage and design variety; icon, dingbat and CJK-only packages are left out on purpose.
DEBIAN_FONT_PACKAGES_FILE = Path(__file__).with_name("debian-font-packages.txt")
DEBIAN_FONT_PACKAGES: tuple[str, ...] = tuple(
    ln.strip()
    for ln in DEBIAN_FONT_PACKAGES_FILE.read_text().splitlines()
    if ln.strip() and not ln.startswith("#")
)

# Handwriting-style families (matched case-insensitively on the family name's start). They form
# their own domain: never in the pre-training corpus, used by the handwriting-digit OOD tasks.
# Matching ignores case, spaces, underscores and hyphens.
HANDWRITING_FAMILIES: tuple[str, ...] = (
    "amatic sc",
    "intuitive",
    "dkg handwriting",
    "ecolier",
    "breip",
    "femkeklaver",
    "kristi",
    "rufscript",
    "humor sans",
    "isabella",
    "comic neue",
    "dancing script",
    "tomson talks",
    "z003",
    "urw chancery",
    "tex gyre chorus",
    "chancery uralic",
    "romande adf script",
)

FONT_SUFFIXES = (".ttf", ".otf")
AUDIT_SIZE = 40  # px; large enough that distinct glyphs never collide by rasterisation
_CANVAS = 64
MIN_SHAPE_MATCH = 0.4  # fraction of a face's glyphs nearest to their own class mean
# Letters whose lowercase is not a scaled copy of the uppercase in ordinary fonts.
_CASE_DISTINCT = tuple("ABDEFGHNQRT")


@dataclass
class FontFace:
    path: str
    family: str
    style: str
    source: str  # "debian" | "matplotlib" | "pypi:<dist>"
    sha256: str = ""
    domain: str = ""  # "print" | "handwriting"
    split: str = ""  # "train" | "heldout" | "handwriting"
    covers: dict[str, bool] = field(default_factory=dict)  # charset -> fully renders

    def to_json(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- discovery
def debian_font_files(packages: Sequence[str] = DEBIAN_FONT_PACKAGES) -> tuple[list[str], list[str]]:
    """Font files of the installed pinned packages, and the names of those not installed."""
    if shutil.which("dpkg-query") is None:
        return [], list(packages)
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    installed = [ln.split()[0] for ln in out.splitlines() if ln.endswith(" installed")]
    missing = sorted(set(packages) - set(installed))
    if not installed:
        return [], missing
    listing = subprocess.run(["dpkg", "-L", *installed], capture_output=True, text=True, check=False).stdout
    files = sorted(
        {p for p in listing.splitlines() if p.lower().endswith(FONT_SUFFIXES) and os.path.isfile(p)}
    )
    return files, missing


def fallback_font_files() -> list[tuple[str, str]]:
    """(path, source) for matplotlib's bundled faces and the PyPI ``font-*`` packages."""
    import matplotlib

    found: list[tuple[str, str]] = []
    mpl_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    found += [(str(p), "matplotlib") for p in sorted(mpl_dir.glob("*.ttf"))]
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name.startswith("font-"):
            continue
        for f in dist.files or []:
            if str(f).lower().endswith(FONT_SUFFIXES):
                found.append((str(Path(dist.locate_file(f)).resolve()), f"pypi:{name}"))
    return sorted(set(found))


def discover_fonts(font_set: str = "auto") -> tuple[list[tuple[str, str]], str, list[str]]:
    """Candidate (path, source) pairs for ``font_set`` in {auto, debian, fallback}.

    Returns the candidates, the set actually used and the pinned packages that were missing.
    """
    if font_set not in ("auto", "debian", "fallback"):
        raise ValueError(f"fonts: expected one of auto|debian|fallback, got {font_set!r}")
    missing: list[str] = []
    if font_set in ("auto", "debian"):
        files, missing = debian_font_files()
        enough = len(missing) <= len(DEBIAN_FONT_PACKAGES) // 4
        if font_set == "debian" and not files:
            raise RuntimeError(
                "fonts=debian but none of the pinned Debian font packages is installed; run "
                "tools/setup.sh as root (it installs them) or use --fonts fallback"
            )
        if font_set == "debian" or enough:
            if missing:
                log.warning(
                    "%d pinned Debian font packages are not installed: %s", len(missing), " ".join(missing)
                )
            return [(f, "debian") for f in files], "debian", missing
        log.warning(
            "only %d of %d pinned Debian font packages are installed; falling back to matplotlib + PyPI "
            "fonts (far fewer faces: results are not comparable with the Debian set). Install them with "
            "tools/setup.sh as root, or pass --fonts fallback to silence this warning.",
            len(DEBIAN_FONT_PACKAGES) - len(missing),
            len(DEBIAN_FONT_PACKAGES),
        )
    return fallback_font_files(), "fallback", missing


# ----------------------------------------------------------------------------- audit
def render_char(font: ImageFont.FreeTypeFont, ch: str, canvas: int = _CANVAS) -> np.ndarray:
    """White-on-black render of ``ch`` centred on the font's metric box (uint8, canvas x canvas)."""
    im = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(im).text((canvas // 2, canvas // 2), ch, fill=255, font=font, anchor="mm")
    return np.asarray(im)


def _ink_normalised(a: np.ndarray, size: int = 16) -> np.ndarray | None:
    """The ink's bounding box resized to size x size, centred and L2-normalised (None: no ink).

    A solid block (an 'l' in a sans face) has no variance; it is returned uncentred.
    """
    ys, xs = np.nonzero(a > 64)
    if len(ys) == 0:
        return None
    crop = Image.fromarray(a[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    v = np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.float32).ravel()
    c = v - v.mean()
    n = np.linalg.norm(c)
    return c / n if n > 1e-6 else v / np.linalg.norm(v)


@dataclass
class FontAudit:
    family: str
    style: str
    covers: dict[str, bool]  # charset name -> every character renders cleanly
    reasons: dict[str, str]  # charset name -> why it failed (a category, for counting)
    sheets: dict[str, str]  # charset name -> hash of the rendered sheet (finds duplicate faces)
    shapes: np.ndarray | None = None  # (len(primary charset), 256) ink-normalised shapes when covered


def audit_font(path: str, charsets: dict[str, str]) -> FontAudit:
    """Render every character of every charset at ``AUDIT_SIZE``.

    A charset is covered when each of its characters renders with ink, differs from the font's
    .notdef box and from every other character of the set. For a charset with letters, a face
    whose lowercase letters are scaled capitals (small caps) fails with "caps-only lowercase".
    """
    try:
        font = ImageFont.truetype(path, AUDIT_SIZE)
        family, style = font.getname()
    except OSError as e:
        log.debug("font %s unreadable: %s", path, e)
        return FontAudit("", "", {}, {name: "unreadable" for name in charsets}, {})
    family, style = family or Path(path).stem, style or ""
    tofu = [render_char(font, c).tobytes() for c in ("\ue000", "\U0010fffd", "\uffff")]
    renders: dict[str, bytes] = {}
    audit = FontAudit(family, style, {}, {}, {})
    for name, chars in charsets.items():
        reason, seen, sheet = "", set(), hashlib.sha256()
        for ch in chars:
            if ch not in renders:
                a = render_char(font, ch)
                renders[ch] = a.tobytes() if a.max() >= 128 else b""
            r = renders[ch]
            if not r:
                reason = "empty render"
            elif r in tofu:
                reason = "tofu (.notdef) render"
            elif r in seen:
                reason = "two characters render identically"
            if reason:
                log.debug("font %s, charset %s: %s of %r", path, name, reason, ch)
                break
            seen.add(r)
            sheet.update(r)
        if not reason and any(c.isalpha() for c in chars) and _caps_only(renders, chars):
            reason = "caps-only lowercase (small capitals)"
        audit.covers[name], audit.reasons[name] = not reason, reason
        audit.sheets[name] = sheet.hexdigest() if not reason else ""
    primary = next(iter(charsets))
    if audit.covers.get(primary):
        audit.shapes = np.stack([_ink_normalised(_as_array(renders[c])) for c in charsets[primary]]).astype(
            np.float16
        )
    return audit


def _as_array(r: bytes) -> np.ndarray:
    return np.frombuffer(r, np.uint8).reshape(_CANVAS, _CANVAS)


def _caps_only(renders: dict[str, bytes], chars: str) -> bool:
    sims = []
    for up in _CASE_DISTINCT:
        if up in chars and up.lower() in chars:
            u, lo = (_ink_normalised(_as_array(renders[c])) for c in (up, up.lower()))
            if u is not None and lo is not None:
                sims.append(float(u @ lo))
    return bool(sims) and float(np.median(sims)) > 0.9


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in " _-")


def is_handwriting(family: str) -> bool:
    fam = _squash(family)
    return any(fam.startswith(_squash(h)) for h in HANDWRITING_FAMILIES)


def split_families(families: Iterable[str], heldout_fraction: float = 0.2) -> set[str]:
    """The held-out print families: the first round(f * n) (at least one) in a fixed hash order.

    The order depends only on the family names, so the split is the same for every seed and
    every machine with the same fonts.
    """
    fams = sorted(set(families), key=lambda f: hash_order_key("nml-font-split-v1", f))
    if len(fams) < 2:
        raise RuntimeError(f"need at least 2 printed font families for a train/held-out split, found {fams}")
    k = max(1, round(heldout_fraction * len(fams)))
    return set(fams[:k])


DEFAULT_CHARSETS = {"glyphs": LETTERS, "digits": DIGITS, "greek": GREEK, "symbols": SYMBOLS}


def select_fonts(
    candidates: list[tuple[str, str]],
    charsets: dict[str, str] = DEFAULT_CHARSETS,
    heldout_fraction: float = 0.2,
    pool=None,
) -> tuple[list[FontFace], dict[str, int]]:
    """Audit the candidates and assign each kept face to a split.

    Printed faces must pass the glyph charset; handwriting faces need only the digits. Faces whose
    character sheet duplicates an earlier face are dropped. Returns the kept faces (sorted by path)
    and a count of drop reasons for the log and the manifest.
    """
    mapper = pool.imap if pool is not None else map
    audits = list(mapper(_audit_one, [(p, charsets) for p, _ in candidates]))
    primary = next(iter(charsets))
    dropped: dict[str, int] = {}
    kept: list[FontFace] = []
    seen_sheets: set[str] = set()
    shapes: dict[str, np.ndarray | None] = {}
    for (path, source), audit in zip(candidates, audits, strict=True):
        hand = bool(audit.family) and is_handwriting(audit.family)
        need = "digits" if hand else primary  # handwriting faces serve the digit tasks only
        if not audit.covers.get(need):
            reason = audit.reasons.get(need, "unreadable")
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        if audit.sheets[need] in seen_sheets:
            dropped["duplicate of another face"] = dropped.get("duplicate of another face", 0) + 1
            continue
        seen_sheets.add(audit.sheets[need])
        shapes[path] = audit.shapes
        kept.append(
            FontFace(
                path=path,
                family=audit.family,
                style=audit.style,
                source=source,
                domain="handwriting" if hand else "print",
                covers=audit.covers,
            )
        )
    kept = _drop_unrecognisable(kept, shapes, dropped)
    heldout = split_families(f.family for f in kept if f.domain == "print")
    for f in kept:
        f.split = (
            "handwriting" if f.domain == "handwriting" else ("heldout" if f.family in heldout else "train")
        )
        f.sha256 = file_sha256(f.path)
    for reason, n in sorted(dropped.items()):
        log.info("fonts dropped: %d x %s", n, reason)
    return sorted(kept, key=lambda f: f.path), dropped


def _drop_unrecognisable(
    faces: list[FontFace],
    shapes: dict[str, np.ndarray | None],
    dropped: dict[str, int],
    min_match: float = MIN_SHAPE_MATCH,
) -> list[FontFace]:
    """Drop printed faces whose glyphs do not look like their characters.

    Symbol and dingbat faces (URW D050000L, Standard Symbols, cmsy10 ...) map ASCII codes to other
    shapes and pass every per-face check. Each glyph is matched to the nearest class mean over all
    printed faces; a face is kept when at least ``min_match`` of its glyphs land on their own class.
    """
    printed = [f for f in faces if f.domain == "print" and shapes.get(f.path) is not None]
    if len(printed) < 3:
        return faces
    stack = np.stack([shapes[f.path] for f in printed]).astype(np.float32)  # (F, C, 256)
    means = stack.mean(0)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    match = (np.einsum("fcd,kd->fck", stack, means).argmax(-1) == np.arange(stack.shape[1])).mean(1)
    bad = {f.path for f, m in zip(printed, match, strict=True) if m < min_match}
    if bad:
        key = "glyphs unlike their characters (symbol/dingbat face)"
        dropped[key] = dropped.get(key, 0) + len(bad)
    return [f for f in faces if f.path not in bad]


def _audit_one(args: tuple[str, dict[str, str]]) -> FontAudit:
    return audit_font(*args)

"""Draw a grid of samples from each dataset of an embedded benchmark (docs/embedded_samples.png).

python tools/plot_samples.py data/embedded docs/embedded_samples.png
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

ROWS = [
    ("glyphs", "train"),
    ("glyphs_heldout", "test"),
    ("glyphs_heldout", "test_blur_2"),
    ("glyphs_heldout", "test_noise_2"),
    ("glyphs_heldout", "test_elastic_2"),
    ("greek", "test"),
    ("symbols", "test"),
    ("digits_print", "test"),
    ("digits_handwriting", "test"),
    ("mnist", "test"),
]


def first_images(shard: Path, n: int) -> list[Image.Image]:
    out = []
    with tarfile.open(shard) as t:
        for m in t:
            if m.name.endswith(".png"):
                out.append(Image.open(io.BytesIO(t.extractfile(m).read())).convert("L"))
                if len(out) == n:
                    break
    return out


def main(root: str, dest: str, per_row: int = 20, scale: int = 2) -> None:
    root_p = Path(root)
    if not (root_p / "manifest.json").is_file():
        raise SystemExit(f"{root}: no manifest.json (build it with: nml data embedded --out {root})")
    cell, label_w = 34, 150
    sheet = Image.new("L", (label_w + per_row * cell, len(ROWS) * cell), 255)
    draw = ImageDraw.Draw(sheet)
    for r, (ds, split) in enumerate(ROWS):
        first = sorted((root_p / ds).glob(f"{split}-*.tar"))[0]
        draw.text((4, r * cell + 12), f"{ds}/{split}"[:24], fill=0)
        for i, im in enumerate(first_images(first, per_row)):
            sheet.paste(im, (label_w + i * cell, r * cell + 1))
    sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(dest)
    print(dest)


if __name__ == "__main__":
    main(*sys.argv[1:3])

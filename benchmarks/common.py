"""What the benchmark scripts share: alternated timing repeats (median and spread) and synthetic
JPEG shards.

Shared machines are noisy. Each repeat runs every contender once, in turn, so that a burst of load
hits them alike; the figures are the median over repeats with the min and max beside it, and ratios
are taken between medians measured in the same run.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Callable
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]  # where ``python -m benchmarks.<name>`` runs


def alternate(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, dict]:
    """Run each contender (a callable returning one figure: a rate such as samples/s, or a time)
    once per repeat, in turn; per contender: ``median``, ``min``, ``max`` and the ``runs``."""
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            runs[name].append(float(fn()))
    return {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
        for name, v in runs.items()
    }


def spread(stats: dict) -> str:
    """``median (min-max)`` of one contender, for tables."""
    return f"{stats['median']:.0f} ({stats['min']:.0f}-{stats['max']:.0f})"


def write_jpeg_shards(
    out: Path,
    n: int,
    size: tuple[int, int] = (500, 375),
    classes: int = 100,
    captions: bool = False,
    index: bool = False,
) -> str:
    """``n`` JPEGs of smooth colour fields plus noise (decode cost like a photo's, unlike pure
    noise), quality 90, 128 per shard; with ``captions`` a ``txt`` member, with ``index`` the
    ``sizes.json`` / ``_info.json`` that open_clip and timm read; returns the shard spec."""
    import numpy as np
    from PIL import Image

    from nml.shards.writer import ShardWriter, shard_spec

    rng = np.random.default_rng(0)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    with ShardWriter(out / "bench-%06d.tar", max_count=128) as writer:
        for i in range(n):
            a, b, c = rng.uniform(0.05, 0.6, 3)
            field = np.stack([x * a + y * b, x * b - y * c, (x + y) * c], -1) + rng.normal(0, 12, (h, w, 3))
            buf = io.BytesIO()
            Image.fromarray((field % 256).astype(np.uint8)).save(buf, "JPEG", quality=90)
            sample = {"__key__": f"{i:06d}", "jpg": buf.getvalue(), "cls": i % classes}
            if captions:
                sample["txt"] = f"a photo of pattern {i % classes}"
            writer.write(sample)
    if index:
        from nml.shards.writer import write_index_files

        names = {"num_classes": classes, "classes": [f"pattern {c}" for c in range(classes)]}
        write_index_files(out, {"train": [(str(p), c) for p, c in writer.shards]}, out.name, names)
    return str(out / shard_spec(writer.shards))

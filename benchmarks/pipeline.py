"""Training-pipeline throughput: the cost of noise (embedded shards), and JPEG decoding per core.

    python -m benchmarks.pipeline [--root data/embedded] [--num_workers 2] [--repeats 3]
    python -m benchmarks.pipeline --mode jpeg [--shards SPEC] [--num_workers 15] [--image_size 224]

``--mode jpeg`` (no ``--shards``: ``--samples`` synthetic JPEGs of ``--image_px``, by default 512 of
500 x 375, ImageNet's typical size, written to a temporary directory) runs the training pipeline of your own shards, as ``nml fit`` builds it:
timm's ImageNet augmentation at ``--image_size``, symmetric noise 0.2, batches of 64. It compares the
pipeline's samples/s per CPU core with that core's JPEG decode limit, which is
``PIL.Image.open(...).convert("RGB")`` alone on the same files in one process. The pipeline runs
once in the main process (one core: the ratio to read), also with the images normalised in the
worker instead of on the device (``normalize_on_device: false``), and once with ``--num_workers``
workers (per core = samples/s over the workers). The evaluation pipeline (resize + centre crop) is timed
with and without reduced-scale decoding (PIL ``draft``; it applies to JPEGs at least twice the
evaluation resize). Last, without colour jitter (what ``decode_on_device`` can run), the worker's
rate when it decodes and when it only reads headers and draws crops for decoding on the device.

Default mode:
Runs one training epoch per setting, alternating settings within each repeat so that machine
noise hits all of them alike (``benchmarks.common.alternate``), and prints JSON: samples/s per setting
(median over repeats, timed from the second batch on, so worker start-up is excluded) and the
end-to-end difference.
On a shared 2-core machine that difference swings by +-20 % from run to run, so the noise stage
is also timed on its own (records already in memory, best of the repeats) and reported as a share
of the per-sample pipeline time: the figure to compare with the 3 % budget.
Needs the benchmark (`nml data embedded --out data/embedded`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks.common import alternate, write_jpeg_shards
from nml.data.modules import ClassificationShards, ImageTextShards
from nml.data.pipeline import ShardLoader, StreamConfig
from nml.noise.config import NoiseConfig
from nml.noise.models import NoiseModel
from nml.shards.spec import resolve_shards

SETTINGS = {
    "classification": (ClassificationShards, [NoiseConfig(), NoiseConfig("symmetric", 0.2)]),
    "image_text": (ImageTextShards, [NoiseConfig(), NoiseConfig("caption_swap", 0.3)]),
}


def epoch_rate(dm) -> tuple[float, int]:
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    first = next(it)
    t0, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["key"])
    rate = n / (time.perf_counter() - t0)
    return rate, n + len(first["key"])


def noise_stage_us(dm, noise: NoiseConfig, repeats: int) -> float:
    """Microseconds per sample of the noise stage alone, on the parsed training records."""
    caption = isinstance(dm, ImageTextShards)
    members = dm.train_members()
    cfg = StreamConfig(
        shards=resolve_shards(dm.train_spec),
        members=members,
        mode="eval",
        batch_size=None,
        decode=False,
    )
    by_shard: dict[str, list[dict]] = {}
    for rec in ShardLoader(cfg):
        by_shard.setdefault(rec["__url__"], []).append(
            {k: rec[k] for k in ("__key__", "caption" if caption else "cls")}
        )
    model = NoiseModel(noise, members.num_classes, dm.seed)
    n, best = sum(len(v) for v in by_shard.values()), float("inf")
    for _ in range(repeats):
        fresh = [[dict(r) for r in recs] for recs in by_shard.values()]
        t0 = time.perf_counter()
        for recs in fresh:
            for _ in model.apply(recs):
                pass
        best = min(best, time.perf_counter() - t0)
    return 1e6 * best / n


def jpeg_bytes(spec: str) -> list[bytes]:
    from nml.shards.spec import resolve_shards

    out = []
    for shard in resolve_shards(spec):
        with tarfile.open(shard.url) as tar:
            out += [tar.extractfile(m).read() for m in tar if m.name.endswith((".jpg", ".jpeg"))]
    return out


def decode_limit(images: list[bytes], repeats: int) -> float:
    """Images/s of PIL's open + convert("RGB") alone, one process (best of ``repeats``)."""
    from PIL import Image

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for data in images:
            with Image.open(io.BytesIO(data)) as img:
                img.convert("RGB")
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def jpeg_mode(args) -> dict:
    tmp = None
    spec = args.shards
    if spec is None:
        tmp = tempfile.TemporaryDirectory()
        w, h = (int(v) for v in args.image_px.split("x"))
        spec = write_jpeg_shards(Path(tmp.name), args.samples, (w, h))
    images = jpeg_bytes(spec)
    limit = decode_limit(images, args.repeats)

    def rate(workers: int, train: bool, reduced: bool = True, on_device: bool = True, **image) -> float:
        """Samples/s out of the loader (uint8 training batches are normalised later, on the GPU)."""
        dm = ClassificationShards(
            train=spec,
            val=spec,
            num_classes=100,
            noise=NoiseConfig("symmetric", 0.2),
            loader={"batch_size": 64, "num_workers": workers, "persistent_workers": False},
            image={
                "image_size": args.image_size,
                "reduced_decode": reduced,
                "normalize_on_device": on_device,
                **image,  # ImageOptions
            },
        )
        dm.setup("fit")
        runs = []
        for _ in range(args.repeats):
            loader = dm.train_dataloader() if train else dm.val_dataloader()[0]  # one set per loader
            n, t0 = 0, time.perf_counter()
            for batch in loader:
                n += int(batch["valid"].sum())
            runs.append(n / (time.perf_counter() - t0))
        return max(runs)

    one = rate(0, train=True)
    one_float = rate(0, train=True, on_device=False)
    many = rate(args.num_workers, train=True) if args.num_workers > 0 else one
    workers = max(1, args.num_workers)
    eval_reduced, eval_whole = rate(0, train=False), rate(0, train=False, reduced=False)
    no_jitter = {"train_transform": {"color_jitter": 0}}  # what decode_on_device can run
    cpu_no_jitter = rate(0, train=True, **no_jitter)
    device_worker = rate(0, train=True, decode_on_device=True, **no_jitter)
    if tmp is not None:
        tmp.cleanup()
    return {
        "shards": args.shards or f"{len(images)} synthetic {args.image_px} JPEGs",
        "cores": os.cpu_count(),
        "image_size": args.image_size,
        "decode_limit_per_core": round(limit, 1),
        "train_one_core_samples_per_s": round(one, 1),
        "train_one_core_over_decode_limit": round(one / limit, 3),
        "train_one_core_normalised_in_worker_samples_per_s": round(one_float, 1),
        "train_workers": args.num_workers,
        "train_samples_per_s": round(many, 1),
        "train_per_core_samples_per_s": round(many / workers, 1),
        "train_per_core_over_decode_limit": round(many / workers / limit, 3),
        "eval_one_core_samples_per_s": {
            "reduced_decode": round(eval_reduced, 1),
            "whole": round(eval_whole, 1),
        },
        "no_colour_jitter_one_core_samples_per_s": {
            "decoded_in_worker": round(cpu_no_jitter, 1),
            "decode_on_device_worker_side": round(device_worker, 1),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["noise", "jpeg"], default="noise")
    ap.add_argument("--root", default="data/embedded")
    ap.add_argument("--shards", help="jpeg mode: a shard spec of your own (default: synthetic JPEGs)")
    ap.add_argument("--samples", type=int, default=512, help="jpeg mode: synthetic JPEGs to write")
    ap.add_argument("--image_px", default="500x375", help="jpeg mode: WxH of the synthetic JPEGs")
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modality", choices=[*SETTINGS, "all"], default="all")
    args = ap.parse_args()
    if args.mode == "jpeg":
        json.dump(jpeg_mode(args), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    results = {}
    loader = {"batch_size": args.batch_size, "num_workers": args.num_workers, "persistent_workers": False}
    for modality in SETTINGS if args.modality == "all" else [args.modality]:
        cls, noises = SETTINGS[modality]

        def epoch(noise: NoiseConfig, cls=cls, modality=modality) -> float:
            rate, samples = epoch_rate(cls(root=args.root, noise=noise, loader=loader))
            print(
                f"[bench] {modality} {noise.kind}: {rate:,.0f} samples/s ({samples} samples)", file=sys.stderr
            )
            return rate

        stats = alternate({n.kind: (lambda n=n: epoch(n)) for n in noises}, args.repeats)
        base, noisy = (stats[n.kind]["median"] for n in noises)
        dm = cls(root=args.root, loader={"batch_size": args.batch_size, "num_workers": 0})
        dm.setup("fit")
        stage_us = noise_stage_us(dm, noises[1], args.repeats)
        pipeline_us = 1e6 * max(1, args.num_workers) / base  # CPU time per sample across the workers
        results[modality] = {
            "samples_per_s": {k: round(v["median"], 1) for k, v in stats.items()},
            "all_runs": {k: [round(x, 1) for x in v["runs"]] for k, v in stats.items()},
            "end_to_end_difference_percent": round(100 * (base - noisy) / base, 2),
            "noise_stage_us_per_sample": round(stage_us, 2),
            "pipeline_us_per_sample": round(pipeline_us, 1),
            "noise_cost_percent": round(100 * stage_us / pipeline_us, 2),
        }
    out = {"root": args.root, "batch_size": args.batch_size, "num_workers": args.num_workers, **results}
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

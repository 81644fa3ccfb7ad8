"""Training-pipeline throughput with and without noise on the embedded shards.

    python tools/bench_pipeline.py [--root data/embedded] [--num_workers 2] [--repeats 3]

Runs one training epoch per setting, alternating settings within each repeat so that machine
noise hits all of them alike, and prints JSON: samples/s per setting (median over repeats,
timed from the second batch on, so worker start-up is excluded) and the end-to-end difference.
On a shared 2-core machine that difference swings by +-20 % from run to run, so the noise stage
is also timed on its own (records already in memory, best of the repeats) and reported as a share
of the per-sample pipeline time: the figure to compare with the 3 % budget.
Needs the benchmark (`nml data embedded --out data/embedded`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/embedded")
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--num_workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modality", choices=[*SETTINGS, "all"], default="all")
    args = ap.parse_args()
    results = {}
    for modality in SETTINGS if args.modality == "all" else [args.modality]:
        cls, noises = SETTINGS[modality]
        rates: dict[str, list[float]] = {n.kind: [] for n in noises}
        for r in range(args.repeats):
            for noise in noises if r % 2 == 0 else reversed(noises):
                dm = cls(
                    root=args.root,
                    noise=noise,
                    batch_size=args.batch_size,
                    num_workers=args.num_workers,
                    persistent_workers=False,
                )
                rate, samples = epoch_rate(dm)
                rates[noise.kind].append(rate)
                print(
                    f"[bench] {modality} {noise.kind}: {rate:,.0f} samples/s ({samples} samples)",
                    file=sys.stderr,
                )
        base, noisy = (statistics.median(rates[n.kind]) for n in noises)
        dm = cls(root=args.root, batch_size=args.batch_size, num_workers=0)
        dm.setup("fit")
        stage_us = noise_stage_us(dm, noises[1], args.repeats)
        pipeline_us = 1e6 * max(1, args.num_workers) / base  # CPU time per sample across the workers
        results[modality] = {
            "samples_per_s": {n.kind: round(statistics.median(rates[n.kind]), 1) for n in noises},
            "all_runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
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

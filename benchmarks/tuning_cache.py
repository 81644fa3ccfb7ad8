"""Tuning on cached features vs on images: time per tuning epoch, and where the head's time goes.

    python -m benchmarks.tuning_cache [--backbones clip_tiny test_resnet resnet50] [--images 256]
                                       [--methods linear nmtune] [--epochs 3] [--num_workers 2]
                                       [--repeats 3]

For each backbone (random weights: timing does not depend on them) and method, one Lightning run of
``DownstreamTuning`` on ``--images`` training images of the embedded benchmark (``glyphs_heldout``),
and one on their cached features (``CachedFeatures``, no backbone): the image path runs the frozen
backbone on the views every epoch (two augmented views for mlp/nmtune, one eval view for linear),
as the authors' code does. Epoch times are the mean over epochs after the first (worker start-up,
allocator warm-up); the image run and the cached run alternate ``--repeats`` times
(``benchmarks.common.alternate``) and the ratio of their medians is printed. The one-off extraction time is reported
too. Then a breakdown of one cached NMTune step (gather, head forward, each regulariser, backward,
optimizer) in a plain loop, and the same step against its FLOP floor (:func:`flop_floor`, also at
``--floor_dims``). JSON lines on stdout; a table on stderr.

Backbones: ``clip_tiny`` (the image tower of configs/pretrain_clip.yaml, D=64, 32 px),
``test_resnet`` (configs/pretrain_supervised.yaml, 32 px), ``resnet50`` (timm, D=2048, 224 px).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import alternate

BACKBONES = {
    "clip_tiny": ({"library": "open_clip", "name": "tiny-vit-glyphs"}, 32),
    "test_resnet": ({"library": "timm", "name": "test_resnet"}, 32),
    "resnet50": ({"library": "timm", "name": "resnet50"}, 224),
}


def _clip_cfg() -> dict:
    import yaml

    from nml.configfiles import CONFIG_DIR

    cfg = yaml.safe_load((CONFIG_DIR / "pretrain_clip.yaml").read_text())
    return cfg["model"]["init_args"]["model_cfg"]


class EpochTimer:
    def __init__(self):
        import lightning.pytorch as pl

        class _CB(pl.Callback):
            def on_train_epoch_start(cb, trainer, module):
                cb.t0 = time.perf_counter()

            def on_train_epoch_end(cb, trainer, module):
                self.times.append(time.perf_counter() - cb.t0)

        self.times: list[float] = []
        self.callback = _CB()

    def per_epoch(self) -> float:
        rest = self.times[1:] or self.times
        return sum(rest) / len(rest)


def _fit(model, dm, epochs: int) -> float:
    from lightning.pytorch import Trainer

    timer = EpochTimer()
    Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer.callback],
    ).fit(model, dm)
    return timer.per_epoch()


def run(
    name: str, methods: list[str], images: int, epochs: int, workers: int, root: str, repeats: int
) -> list[dict]:
    import numpy as np
    import torch

    from nml.data.modules import ClassificationShards
    from nml.features.datamodule import CachedFeatures
    from nml.features.extract import extract_features
    from nml.models.backbones import create_backbone
    from nml.models.export import write_export
    from nml.models.tuning import DownstreamTuning

    for logger in ("lightning", "lightning.pytorch", "lightning.fabric"):  # after lightning's import
        logging.getLogger(logger).setLevel(logging.WARNING)
    spec, size = BACKBONES[name]
    if spec["library"] == "open_clip":
        spec = {**spec, "model_cfg": _clip_cfg()}
    backbone = create_backbone(spec)
    _, mean, std = backbone.preprocessing()
    tmp = Path(tempfile.mkdtemp(prefix=f"nml-bench-{name}-"))
    write_export(backbone, tmp / "export", data={"image_size": size, "mean": list(mean), "std": list(std)})

    def data(**kw):
        return ClassificationShards(
            root=root,
            task="glyphs_heldout",
            **kw,
            loader={"batch_size": 64, "eval_batch_size": 64, "num_workers": workers},
            stream={"train_samples": images},
        )

    dm = data(image={"image_size": size, "mean": list(mean), "std": list(std)})
    dm.test_sets, dm.val_spec = [], None  # the training split only
    t0 = time.perf_counter()
    extract_features(backbone, dm, tmp / "features", views=2, limit=images)
    extraction = time.perf_counter() - t0
    train = np.load(tmp / "features" / "train" / "features.npy")
    rows = []
    for method in methods:

        def image(method=method):
            torch.manual_seed(0)
            model = DownstreamTuning(method, backbone=str(tmp / "export"), num_classes=52)
            return _fit(model, data(), epochs)

        def cached(method=method):
            torch.manual_seed(0)
            dm = CachedFeatures(train=str(tmp / "features" / "train"), num_classes=52, batch_size=64)
            return _fit(DownstreamTuning(method, num_classes=52, feature_dim=train.shape[1]), dm, epochs)

        stats = alternate({"image": image, "cached": cached}, repeats)
        image_s, cached_s = stats["image"]["median"], stats["cached"]["median"]
        row = {
            "backbone": name,
            "image_size": size,
            "feature_dim": int(train.shape[1]),
            "method": method,
            "images": images,
            "image_epoch_s": round(image_s, 5),
            "cached_epoch_s": round(cached_s, 5),
            "speedup": round(image_s / cached_s, 2),
            "image_epoch_s_runs": [round(t, 4) for t in stats["image"]["runs"]],
            "cached_epoch_s_runs": [round(t, 4) for t in stats["cached"]["runs"]],
            "extraction_s": round(extraction, 2),
            "train_features": int(train.shape[0]),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def head_breakdown(dim: int, batch: int = 64, steps: int = 50) -> dict:
    """Milliseconds per cached NMTune step, by stage, in a plain loop (no Lightning)."""
    import torch
    import torch.nn.functional as F

    from nml.models.nmtune import NMTuneHead, nmtune_regularizers

    torch.manual_seed(0)
    feats, labels = torch.randn(4096, 2, dim), torch.randint(0, 52, (4096,))
    head = NMTuneHead(dim, 52)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)
    stages = dict.fromkeys(["gather", "head_forward", "mse_cov", "svdvals", "backward", "optimizer"], 0.0)

    def tick(name, t):
        now = time.perf_counter()
        stages[name] += now - t
        return now

    for step in range(steps + 5):
        if step == 5:
            stages = dict.fromkeys(stages, 0.0)
        t = time.perf_counter()
        idx = torch.randint(0, 4096, (batch,))
        x, y = feats[idx], labels[idx]
        f = torch.cat([x[:, 0], x[:, 1]])
        t = tick("gather", t)
        z = head.transform(f)
        logits = head.classifier(z)
        ce = F.cross_entropy(logits, y.repeat(2))
        t = tick("head_forward", t)
        z1, z2 = z[:batch], z[batch:]
        mse = (F.normalize(z2, dim=1) - F.normalize(f[:batch], dim=1)).pow(2).mean()
        zc = torch.cat([z1, z2])
        zc = zc - zc.mean(0)
        cov = (zc @ zc.T).pow(2).sum()  # the Gram path of nmtune_regularizers
        t = tick("mse_cov", t)
        zz = torch.cat([z1, z2])
        s = torch.linalg.svdvals(zz.T if zz.shape[0] < zz.shape[1] else zz)  # as nmtune_regularizers
        t = tick("svdvals", t)
        loss = ce + mse + 1e-9 * cov - 1e-3 * (s / s.sum())[:5].mean()
        loss.backward()
        t = tick("backward", t)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tick("optimizer", t)
    # the real function, whole, for reference
    z1, z2, f1 = torch.randn(batch, dim, requires_grad=True), torch.randn(batch, dim), torch.randn(batch, dim)
    t = time.perf_counter()
    for _ in range(steps):
        r = nmtune_regularizers(z1, z2, f1)
        sum(r.values()).backward()
    regs = (time.perf_counter() - t) / steps
    slow = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4, foreach=True)
    for p in head.parameters():
        p.grad = torch.randn_like(p)
    slow.step()
    t = time.perf_counter()
    for _ in range(steps):
        slow.step()
    unfused = (time.perf_counter() - t) / steps
    out = {k: round(1e3 * v / steps, 3) for k, v in stages.items()}
    out["total_ms"] = round(sum(out.values()), 3)  # before the reference figures below
    out["nmtune_regularizers_fwd_bwd_ms"] = round(1e3 * regs, 3)
    out["optimizer_foreach_ms"] = round(1e3 * unfused, 3)
    return {"feature_dim": dim, "batch": batch, **out}


def flop_floor(dim: int, batch: int = 64, steps: int = 50, classes: int = 52, repeats: int = 3) -> dict:
    """A cached NMTune step (head forward, CE + the regularisers, backward, fused AdamW) against its
    FLOP floor: the step's FLOPs (torch's ``FlopCounterMode``) over this machine's matmul rate at the
    head's main shape, ``(2B x D) @ (D x 4D)``, measured in the same process, the two alternated
    ``repeats`` times."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from nml.models.nmtune import NMTuneHead, nmtune_regularizers

    torch.manual_seed(0)
    feats, labels = torch.randn(4096, 2, dim), torch.randint(0, classes, (4096,))
    head = NMTuneHead(dim, classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)

    def step(i: int) -> None:
        idx = torch.randint(0, 4096, (batch,), generator=torch.Generator().manual_seed(i))
        x, y = feats[idx], labels[idx]
        f = torch.cat([x[:, 0], x[:, 1]])
        z = head.transform(f)
        loss = F.cross_entropy(head.classifier(z), y.repeat(2))
        loss = loss + sum(nmtune_regularizers(z[:batch], z[batch:], f[:batch]).values())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step(0)
    flops = counter.get_total_flops()
    for i in range(5):
        step(i)
    a, w = torch.randn(2 * batch, dim), torch.randn(4 * dim, dim)
    for _ in range(5):
        a @ w.T

    def step_seconds() -> float:
        t = time.perf_counter()
        for i in range(steps):
            step(i)
        return (time.perf_counter() - t) / steps

    def matmul_rate() -> float:
        reps = max(20, steps)
        t = time.perf_counter()
        for _ in range(reps):
            a @ w.T
        return 2 * (2 * batch) * dim * (4 * dim) * reps / (time.perf_counter() - t)

    stats = alternate({"step": step_seconds, "matmul": matmul_rate}, repeats)
    step_s, rate = stats["step"]["median"], stats["matmul"]["median"]
    floor_s = flops / rate
    return {
        "feature_dim": dim,
        "batch": batch,
        "gflops_per_step": round(flops / 1e9, 4),
        "matmul_gflops_per_s": round(rate / 1e9, 2),
        "floor_ms": round(1e3 * floor_s, 3),
        "step_ms": round(1e3 * step_s, 3),
        "over_floor": round(step_s / floor_s, 2),
        "step_ms_runs": [round(1e3 * t, 3) for t in stats["step"]["runs"]],
        "matmul_gflops_per_s_runs": [round(r / 1e9, 2) for r in stats["matmul"]["runs"]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--backbones",
        nargs="*",
        default=["clip_tiny", "test_resnet", "resnet50"],
        choices=list(BACKBONES),
        help="none: only the head breakdown and FLOP floor at --floor_dims",
    )
    p.add_argument("--methods", nargs="+", default=["linear", "nmtune"])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="alternated runs of each contender; medians")
    p.add_argument("--root", default=None, help="benchmark directory (default: $NML_DATA or data/embedded)")
    p.add_argument(
        "--floor_dims", type=int, nargs="*", default=[2048], help="also the FLOP floor of the step at these D"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import warnings

    warnings.filterwarnings("ignore")
    from nml.shards.manifest import default_root

    root = args.root or default_root()
    rows = [
        r
        for b in args.backbones
        for r in run(b, args.methods, args.images, args.epochs, args.num_workers, root, args.repeats)
    ]
    dims = sorted({r["feature_dim"] for r in rows})
    breakdown = [head_breakdown(d) for d in dims]
    for b in breakdown:
        print(json.dumps({"head_breakdown": b}), flush=True)
    floors = [flop_floor(d, repeats=args.repeats) for d in sorted({*dims, *args.floor_dims})]
    for f in floors:
        print(json.dumps({"flop_floor": f}), flush=True)
    w = sys.stderr.write
    w(
        f"\n{'backbone':<12} {'px':>4} {'D':>5} {'method':<7} {'image s/ep':>10} {'cached s/ep':>11} {'speedup':>8}\n"
    )
    for r in rows:
        w(
            f"{r['backbone']:<12} {r['image_size']:>4} {r['feature_dim']:>5} {r['method']:<7} "
            f"{r['image_epoch_s']:>10.3f} {r['cached_epoch_s']:>11.4f} {r['speedup']:>7.1f}x\n"
        )
    w(
        "\ncached NMTune step, ms by stage (batch 64, plain loop, fused AdamW; optimizer_foreach_ms: unfused):\n"
    )
    for b in breakdown:
        stages = ", ".join(f"{k} {v}" for k, v in b.items() if k not in ("feature_dim", "batch"))
        w(f"  D={b['feature_dim']}: {stages}\n")
    w(
        "\ncached NMTune step against its FLOP floor (step FLOPs / this machine's matmul rate at (2B x D) @ (D x 4D)):\n"
    )
    for f in floors:
        w(
            f"  D={f['feature_dim']}: {f['step_ms']} ms, floor {f['floor_ms']} ms "
            f"({f['gflops_per_step']} GFLOP at {f['matmul_gflops_per_s']} GFLOP/s): {f['over_floor']}x\n"
        )


if __name__ == "__main__":
    main()

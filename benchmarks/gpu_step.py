"""Training-step throughput: a bare PyTorch loop vs nml's LightningModule on the same resident batch.

    python -m benchmarks.gpu_step [--cases resnet50,clip-vit-b-16,nmtune-d2048] [--steps 30]

Each case trains one model on one synthetic batch kept on the device, two ways:

* the bare loop: forward, loss, backward, AdamW step, under bf16 autocast on CUDA;
* the nml module under a Lightning Trainer as ``nml fit`` builds it: ``precision="bf16-mixed"`` on
  CUDA, a TensorBoard logger, and the callbacks nml adds (progress, LearningRateMonitor,
  TrainingThroughput; :func:`nml.cli.lightning.add_default_callbacks`), logging every 50 steps as
  the cloud configs do.

``--warmup`` steps are untimed, then ``--steps`` are timed; the bare loop and the module run
alternately ``--repeats`` times (``benchmarks.common.alternate``) and the median of each is reported with
its min and max (shared machines are noisy). The FLOPs of a step come from torch's
``FlopCounterMode`` on the bare loop's first step. MFU is the achieved FLOP/s over the device's
peak at that precision (Lightning's table; none for a CPU). ``--with_throughput_monitor`` also
times the nml module with Lightning's ``ThroughputMonitor``, which synchronises after every batch,
in place of nml's.

Prints one JSON object per case on stdout: samples/s of each, nml / bare, TFLOP/s and MFU. Without
CUDA the cases run small stand-in models on the CPU, so CI exercises the script; there the ratio is
what to read. The NMTune head trains in fp32 (``32-true``), as the tuning configs do.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import alternate

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CASES = ("resnet50", "resnet50-compile", "clip-vit-b-16", "clip-vit-b-32", "nmtune-d2048")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_case(name: str, cuda: bool) -> dict:
    """Model, batch size, input and kind of one case (small stand-ins on the CPU)."""
    common = {"compile": False, "channels_last": False, "bf16": cuda}
    if name in ("resnet50", "resnet50-compile"):
        return {
            **common,
            "kind": "supervised",
            "model": "resnet50" if cuda else "test_resnet",
            "batch": 256 if cuda else 32,
            "size": 224 if cuda else 32,
            "classes": 1000 if cuda else 10,
            "compile": name.endswith("compile"),
            "channels_last": True,
        }
    if name in ("clip-vit-b-16", "clip-vit-b-32"):
        arch, batch = ("ViT-B-32", 512) if name == "clip-vit-b-32" else ("ViT-B-16", 256)
        return {
            **common,
            "kind": "clip",
            "model": arch if cuda else "tiny",
            "model_cfg": None if cuda else TINY_CLIP,
            "batch": batch if cuda else 32,
            "size": 224 if cuda else 32,
        }
    if name == "nmtune-d2048":  # the head on cached features: (B, 2 views, D)
        return {
            **common,
            "kind": "nmtune",
            "model": "NMTuneHead",
            "batch": 256 if cuda else 64,
            "dim": 2048,
            "classes": 1000 if cuda else 100,
            "bf16": False,
        }
    raise SystemExit(f"unknown case {name!r}: expected one of {', '.join(CASES)}")


def _module(c: dict):
    from nml.models.contrastive import ContrastivePretraining
    from nml.models.supervised import SupervisedPretraining
    from nml.models.tuning import DownstreamTuning

    opt = {"optimizer": lambda p: torch.optim.AdamW(p, lr=1e-4, weight_decay=0.05)}
    if c["kind"] == "supervised":
        return SupervisedPretraining(
            c["model"],
            num_classes=c["classes"],
            channels_last=c["channels_last"],
            compile=c["compile"],
            **opt,
        )
    if c["kind"] == "nmtune":
        return DownstreamTuning("nmtune", num_classes=c["classes"], feature_dim=c["dim"], **opt)
    return ContrastivePretraining(c["model"], c.get("model_cfg"), compile=c["compile"], **opt)


def _batch(c: dict, module, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    b = c["batch"]
    batch = {"valid": torch.ones(b, dtype=torch.bool), "is_noisy": torch.rand(b, generator=g) < 0.3}
    if c["kind"] == "nmtune":
        batch["feature"] = torch.randn(b, 2, c["dim"], generator=g)
    else:
        batch["image"] = torch.randn(b, 3, c["size"], c["size"], generator=g)
    if c["kind"] in ("supervised", "nmtune"):
        batch["target"] = torch.randint(c["classes"], (b,), generator=g)
        batch["clean_target"] = batch["target"].clone()
    else:
        batch["text"] = torch.randint(1, 49000, (b, module.clip.context_length), generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def _bare_step(c: dict, module, model, batch: dict):
    """The loss of one step, written as a plain PyTorch loop would."""
    if c["kind"] == "supervised":
        x = (
            batch["image"].contiguous(memory_format=torch.channels_last)
            if c["channels_last"]
            else batch["image"]
        )
        return F.cross_entropy(model(x), batch["target"])
    if c["kind"] == "clip":
        from open_clip.loss import ClipLoss

        img = model.encode_image(batch["image"], normalize=True)
        txt = model.encode_text(batch["text"], normalize=True)
        return ClipLoss()(img, txt, model.logit_scale.exp())
    from nml.models.nmtune import nmtune_regularizers

    f = torch.cat([batch["feature"][:, 0], batch["feature"][:, 1]])
    z = model.transform(f)
    n = len(batch["target"])
    loss = F.cross_entropy(model.classifier(z), batch["target"].repeat(2))
    regs = nmtune_regularizers(z[:n], z[n:], f[:n])
    return loss + sum(module.weights[k] * v for k, v in regs.items())


def bare_loop(c: dict, device: torch.device, warmup: int, steps: int) -> tuple[float, int]:
    """(samples/s, FLOPs of one step) of a plain loop over the same model, built by nml's factory."""
    module = _module(c)
    model = module.head if c["kind"] == "nmtune" else module.backbone.model
    model = model.to(device)
    if c["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if c["compile"]:
        model = torch.compile(model)
    batch = _batch(c, module, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=c["bf16"])
    t0, flops = 0.0, 0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        counter = FlopCounterMode(display=False) if i == 0 else None
        if counter is not None:
            counter.__enter__()
        with amp:
            loss = _bare_step(c, module, model, batch)
        loss.backward()
        if counter is not None:
            counter.__exit__(None, None, None)
            flops = counter.get_total_flops()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return steps * c["batch"] / (time.perf_counter() - t0), flops


class _Repeat:
    """The same batch ``n`` times (a loader with a length)."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return (self.batch for _ in range(self.n))


def timed_fit(
    module, data, device: torch.device, bf16: bool, warmup: int, steps: int, monitor: str = "nml"
) -> float:
    """Seconds of ``steps`` training steps after ``warmup`` of ``module`` on ``data`` (a data module
    or a loader) under a Lightning Trainer built as ``nml fit`` builds it: a TensorBoard logger
    logging every 50 steps and the callbacks nml adds; ``monitor="lightning"`` swaps nml's
    throughput callback for Lightning's ``ThroughputMonitor``."""
    from lightning.pytorch import Callback, LightningDataModule, Trainer
    from lightning.pytorch.callbacks import ThroughputMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    from nml.callbacks.throughput import TrainingThroughput, batch_size
    from nml.cli.lightning import add_default_callbacks

    class Timer(Callback):
        t0 = t1 = 0.0

        def on_train_batch_start(self, trainer, pl_module, b, batch_idx):
            if trainer.global_step == warmup:
                _sync(device)
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            _sync(device)
            self.t1 = time.perf_counter()

    timer = Timer()
    callbacks = [timer]
    if monitor == "lightning":  # Lightning's own, in place of TrainingThroughput
        callbacks.append(ThroughputMonitor(batch_size_fn=batch_size))
    with tempfile.TemporaryDirectory() as logs:
        trainer = Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed" if bf16 else "32-true",
            max_steps=warmup + steps,
            logger=TensorBoardLogger(logs, name="bench"),
            log_every_n_steps=50,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=callbacks,
        )
        trainer = add_default_callbacks(trainer)
        if monitor == "lightning":
            trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, TrainingThroughput)]
        if isinstance(data, LightningDataModule):
            trainer.fit(module, datamodule=data)
        else:
            trainer.fit(module, train_dataloaders=data)
    return timer.t1 - timer.t0


def nml_module(c: dict, device: torch.device, warmup: int, steps: int, monitor: str = "nml") -> float:
    """samples/s of the nml LightningModule under a Lightning Trainer as ``nml fit`` builds it."""
    module = _module(c)
    batch = _batch(c, module, device)
    seconds = timed_fit(module, _Repeat(batch, warmup + steps), device, c["bf16"], warmup, steps, monitor)
    return steps * c["batch"] / seconds


def main() -> int:
    from lightning.fabric.utilities.throughput import get_available_flops

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each, alternated; the median is reported")
    ap.add_argument(
        "--with_throughput_monitor",
        action="store_true",
        help="also time the nml module with Lightning's ThroughputMonitor in place of nml's",
    )
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = cuda
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    for case in args.cases.split(","):
        c = make_case(case, cuda)
        peak = get_available_flops(device, torch.bfloat16 if c["bf16"] else torch.float32) if cuda else None
        flops_of = []

        def bare_rate(c=c, flops_of=flops_of):
            rate, flops = bare_loop(c, device, args.warmup, args.steps)
            flops_of.append(flops)
            return rate

        contenders = {"bare": bare_rate, "nml": lambda c=c: nml_module(c, device, args.warmup, args.steps)}
        if args.with_throughput_monitor:
            contenders["lightning_monitor"] = lambda c=c: nml_module(
                c, device, args.warmup, args.steps, "lightning"
            )
        stats = alternate(contenders, args.repeats)  # machine noise hits every contender alike
        bare, ours, flops = stats["bare"]["median"], stats["nml"]["median"], flops_of[0]
        out = {
            "case": case,
            "device": name,
            "model": c["model"],
            "batch": c["batch"],
            "precision": "bf16-mixed" if c["bf16"] else "32-true",
            "bare_samples_per_s": round(bare, 1),
            "nml_samples_per_s": round(ours, 1),
            "nml_over_bare": round(ours / bare, 3),
            "bare_runs": [round(r, 1) for r in stats["bare"]["runs"]],
            "nml_runs": [round(r, 1) for r in stats["nml"]["runs"]],
            "gflops_per_step": round(flops / 1e9, 2),
        }
        for who, rate in (("bare", bare), ("nml", ours)):
            achieved = rate / c["batch"] * flops
            out[f"{who}_tflops_per_s"] = round(achieved / 1e12, 3)
            out[f"{who}_mfu"] = round(achieved / peak, 4) if peak else None
        if args.with_throughput_monitor:
            theirs = stats["lightning_monitor"]["median"]
            out["nml_with_lightning_throughput_monitor_samples_per_s"] = round(theirs, 1)
            out["lightning_monitor_over_bare"] = round(theirs / bare, 3)
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

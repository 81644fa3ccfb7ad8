"""Training-step throughput: a bare PyTorch loop vs nml's LightningModule on the same resident batch.

    python tools/bench_gpu_step.py [--cases resnet50,resnet50-compile,clip-vit-b-32] [--steps 30]

Each case trains the same model on one synthetic batch kept on the device: the bare loop (forward,
loss, backward, AdamW step, bf16 autocast on CUDA) and the nml module under a Lightning Trainer
(``precision="bf16-mixed"`` on CUDA), ``--warmup`` steps untimed, then ``--steps`` timed. Prints one
JSON object per case (samples/s of each and their ratio) on stdout. On a machine without CUDA the
cases run tiny models on the CPU (so CI exercises the script); the ratio is what to read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _case(name: str, cuda: bool) -> dict:
    """Model, batch size, image size and kind of one case (small stand-ins on the CPU)."""
    if name.startswith("resnet50"):
        return {"kind": "supervised", "model": "resnet50" if cuda else "test_resnet", "batch": 256 if cuda else 32,
                "size": 224 if cuda else 32, "classes": 1000 if cuda else 10, "compile": name.endswith("compile"),
                "channels_last": True}  # fmt: skip
    if name.startswith("clip-"):
        arch = {"clip-vit-b-32": "ViT-B-32", "clip-vit-b-16": "ViT-B-16"}[name]
        return {"kind": "clip", "model": arch if cuda else "tiny", "model_cfg": None if cuda else TINY_CLIP,
                "batch": 256 if cuda else 32, "size": 224 if cuda else 32, "compile": False, "channels_last": False}  # fmt: skip
    raise SystemExit(
        f"unknown case {name!r}: expected resnet50, resnet50-compile, clip-vit-b-32, clip-vit-b-16"
    )


def _module(c: dict):
    from nml.models.contrastive import ContrastivePretraining
    from nml.models.supervised import SupervisedPretraining

    opt = {"optimizer": lambda p: torch.optim.AdamW(p, lr=1e-4, weight_decay=0.05)}
    if c["kind"] == "supervised":
        return SupervisedPretraining(c["model"], num_classes=c["classes"], channels_last=c["channels_last"],
                                     compile=c["compile"], **opt)  # fmt: skip
    return ContrastivePretraining(c["model"], c.get("model_cfg"), compile=c["compile"], **opt)


def _batch(c: dict, module, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    b = c["batch"]
    batch = {"image": torch.randn(b, 3, c["size"], c["size"], generator=g), "valid": torch.ones(b, dtype=torch.bool),
             "is_noisy": torch.rand(b, generator=g) < 0.3}  # fmt: skip
    if c["kind"] == "supervised":
        batch["target"] = torch.randint(c["classes"], (b,), generator=g)
        batch["clean_target"] = batch["target"].clone()
    else:
        ctx = module.clip.context_length
        batch["text"] = torch.randint(1, 49000, (b, ctx), generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def bare_loop(c: dict, device: torch.device, warmup: int, steps: int) -> float:
    """samples/s of a plain loop over the same model (built by nml's factory, trained by hand)."""
    module = _module(c)
    model = module.backbone.model.to(device)
    if c["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if c["compile"]:
        model = torch.compile(model)
    batch = _batch(c, module, device)
    x = batch["image"].contiguous(memory_format=torch.channels_last) if c["channels_last"] else batch["image"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    if c["kind"] == "clip":
        from open_clip.loss import ClipLoss

        clip_loss = ClipLoss()
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        with amp:
            if c["kind"] == "supervised":
                loss = F.cross_entropy(model(x), batch["target"])
            else:
                img = model.encode_image(x, normalize=True)
                txt = model.encode_text(batch["text"], normalize=True)
                loss = clip_loss(img, txt, model.logit_scale.exp())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return steps * c["batch"] / (time.perf_counter() - t0)


class _Repeat:
    """The same batch ``n`` times (a loader with a length)."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return (self.batch for _ in range(self.n))


def nml_module(c: dict, device: torch.device, warmup: int, steps: int) -> float:
    """samples/s of the nml LightningModule under a Lightning Trainer, same batch every step."""
    from lightning.pytorch import Callback, Trainer

    module = _module(c)
    batch = _batch(c, module, device)

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
    trainer = Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=50,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=_Repeat(batch, warmup + steps))
    return steps * c["batch"] / (timer.t1 - timer.t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="resnet50,resnet50-compile,clip-vit-b-32")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = cuda
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    for case in args.cases.split(","):
        c = _case(case, cuda)
        bare = bare_loop(c, device, args.warmup, args.steps)
        ours = nml_module(c, device, args.warmup, args.steps)
        out = {"case": case, "device": name, "model": c["model"], "batch": c["batch"], "image_size": c["size"],
               "bare_samples_per_s": round(bare, 1), "nml_samples_per_s": round(ours, 1), "nml_over_bare": round(ours / bare, 3)}  # fmt: skip
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The study's pre-training under ``nml fit`` against a bare loop of the same model: how far from the
compute bound is it?

    python -m benchmarks.study_pretrain [--root data/embedded] [--config pretrain_supervised_study.yaml]
                                         [--batches 40] [--repeats 3]

The recipe is built as the study builds it (``build_cli``, the recipe's data module with its
workers, augmentation and noise, its model, a Lightning Trainer with nml's callbacks; no logger or
checkpoints), and trains ``--batches`` steps; its rate is timed from the second step. The bare loop
is the same model (the recipe's backbone, built the same way) trained with AdamW and cross-entropy
on ``--batches`` batches of random images held in memory, in one thread: the compute bound on this
CPU, with no data loading. The two alternate ``--repeats`` times (``benchmarks.common.alternate``).
Prints one JSON object: samples/s of each (median and spread) and nml / bare.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks.common import alternate


def _cli(config: str, root: str, batches: int):
    from nml.cli.lightning import build_cli

    args = ["--config", config, "--data.init_args.root", root, "--trainer.max_steps", str(batches)]
    args += [
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.callbacks",
        "[]",
    ]
    args += ["--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"]
    return build_cli(args, run=False, save_config=False)


def nml_rate(config: str, root: str, batches: int) -> float:
    from lightning.pytorch import Callback

    cli = _cli(config, root, batches)

    class Timer(Callback):
        t0 = t1 = 0.0
        n = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 1:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step > 1:
                self.n += len(batch["target"])
            self.t1 = time.perf_counter()

    timer = Timer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.n / (timer.t1 - timer.t0)


def bare_rate(config: str, root: str, batches: int) -> float:
    import torch
    import torch.nn.functional as F

    cli = _cli(config, root, batches)
    dm, module = cli.datamodule, cli.model
    if module.backbone is None:  # built in setup() when the class count comes from the data
        module._build(dm.num_classes)
    model = module.backbone.model
    size, b = dm.inputs.input_size, dm.loader.batch_size
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(b, 3, size, size, generator=g) for _ in range(batches)]
    labels = [torch.randint(dm.num_classes, (b,), generator=g) for _ in range(batches)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        t0 = 0.0
        for i, (x, y) in enumerate(zip(images, labels, strict=True)):
            if i == 1:
                t0 = time.perf_counter()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (batches - 1) * b / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/embedded")
    ap.add_argument("--config", default="pretrain_supervised_study.yaml")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    stats = alternate(
        {
            "nml": lambda: nml_rate(args.config, args.root, args.batches),
            "bare": lambda: bare_rate(args.config, args.root, args.batches),
        },
        args.repeats,
    )
    row = {
        "config": args.config,
        "batches": args.batches,
        **{
            f"{k}_samples_per_s": {m: round(v[m], 1) for m in ("median", "min", "max")}
            for k, v in stats.items()
        },
        "nml_over_bare": round(stats["nml"]["median"] / stats["bare"]["median"], 3),
    }
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

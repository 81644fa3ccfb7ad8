"""The real training pipeline against the model-bound rate: does the data keep the GPU busy?

    python -m benchmarks.gpu_pipeline [--samples 4096] [--num_workers 15] [--steps 30] [--repeats 3]

The model-bound rate is ResNet-50 (bf16-mixed, channels-last) training on one batch resident on the
device: :func:`benchmarks.gpu_step.bare_loop`, what no pipeline can beat. The real rate is the same model
as ``nml fit`` builds it (``SupervisedPretraining`` under a Lightning Trainer with nml's callbacks)
reading JPEG shards through ``ClassificationShards`` (timm's ImageNet augmentation at 224 px,
symmetric noise 0.2, ``--num_workers`` workers), once decoding in the workers and once with
``decode_on_device`` (nvJPEG; the workers read the bytes and draw the crops). The shards are
``--samples`` synthetic 500 x 375 JPEGs (ImageNet's typical size) written to a temporary directory
first, read for several epochs. The rates alternate ``--repeats`` times (``benchmarks.common.alternate``);
the median of each is reported with its runs. Prints one JSON object per setting: samples/s, the
model-bound samples/s, their ratio.

Without CUDA it runs small stand-ins on the CPU (a tiny timm ResNet at 32 px, 1 worker,
``decode_on_device`` skipped) so that CI exercises the script; the ratio there is not the GPU's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import alternate, write_jpeg_shards
from benchmarks.gpu_step import bare_loop, make_case, timed_fit


def pipeline_rate(
    c: dict, spec: str, device: torch.device, workers: int, on_device: bool, warmup: int, steps: int
):
    """samples/s of ``nml fit``'s model and data module on the JPEG shards (timed after ``warmup``
    steps, to the end of the last step)."""
    from nml.data.modules import ClassificationShards
    from nml.models.supervised import SupervisedPretraining
    from nml.noise.config import NoiseConfig

    dm = ClassificationShards(
        train=spec,
        num_classes=c["classes"],
        noise=NoiseConfig("symmetric", 0.2),
        loader={"batch_size": c["batch"], "num_workers": workers, "pin_memory": device.type == "cuda"},
        image={"image_size": c["size"], "decode_on_device": on_device},
    )
    module = SupervisedPretraining(
        c["model"],
        num_classes=c["classes"],
        channels_last=c["channels_last"],
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4, weight_decay=0.05),
    )

    return steps * c["batch"] / timed_fit(module, dm, device, c["bf16"], warmup, steps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--samples", type=int, default=None, help="synthetic JPEGs (default: 4096 on CUDA, 256 on CPU)"
    )
    ap.add_argument("--num_workers", type=int, default=None, help="default: 15 on CUDA (16 cores), 1 on CPU")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each, alternated; the median is reported")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = cuda
    c = make_case("resnet50", cuda)
    workers = args.num_workers if args.num_workers is not None else (15 if cuda else 1)
    samples = args.samples or (4096 if cuda else 256)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    settings = [("workers decode", False)] + ([("decode_on_device", True)] if cuda else [])
    with tempfile.TemporaryDirectory() as tmp:
        size = (500, 375) if cuda else (64, 48)
        spec = write_jpeg_shards(Path(tmp), samples, size=size, classes=c["classes"])
        contenders = {"model_bound": lambda: bare_loop(c, device, args.warmup, args.steps)[0]}
        for label, on_device in settings:
            contenders[label] = lambda on_device=on_device: pipeline_rate(
                c, spec, device, workers, on_device, args.warmup, args.steps
            )
        stats = alternate(contenders, args.repeats)  # machine noise hits every contender alike
    limit = stats["model_bound"]["median"]
    for label, on_device in settings:
        rate = stats[label]["median"]
        print(
            json.dumps(
                {
                    "setting": label,
                    "decode_on_device": on_device,
                    "device": name,
                    "model": c["model"],
                    "batch": c["batch"],
                    "image_size": c["size"],
                    "jpeg_px": f"{size[0]}x{size[1]}",
                    "num_workers": workers,
                    "samples_per_s": round(rate, 1),
                    "model_bound_samples_per_s": round(limit, 1),
                    "over_model_bound": round(rate / limit, 3),
                    "runs": [round(r, 1) for r in stats[label]["runs"]],
                    "model_bound_runs": [round(r, 1) for r in stats["model_bound"]["runs"]],
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""nml's training pipeline against the peers' own data code: the same shards, transform and workers.

    python -m benchmarks.peers [--root data/embedded] [--sets glyphs jpeg256] [--workers 0 1 2]
                                [--samples 4096] [--batch_size 128] [--repeats 3]

* Image-text: ``ImageTextShards`` against open_clip's ``open_clip_train.data.get_wds_dataset`` (the
  installed ``open_clip_torch``). Installed as is, it fails on webdataset 1.x with ``KeyError:
  'fname'`` (open_clip pins webdataset<=0.2.86): the end-of-shard marker of 1.x's
  ``tar_file_expander`` has no ``fname``. This script patches that one call,
  ``tar_file_expander(..., eof_value=None)`` inside ``tarfile_to_samples_nothrow``, the fix of
  open_clip issue #935; nothing else of open_clip's pipeline changes.
* Classification: ``ClassificationShards`` against timm's own reader,
  ``timm.data.create_dataset("wds/<name>", root=..., split="train", is_training=True)`` (it reads
  the shards' ``_info.json`` as is) in a plain ``DataLoader``.

Every contender gets the same transform object (nml's training transform: timm's augmentation at
``--image_size``, normalised in the worker) and the same tokenizer; nml runs with and without noise
(symmetric 0.2 / caption swap 0.3), which the peers do not have. Sets: ``glyphs`` (the embedded
benchmark's pre-training shards, the first that hold ``--samples``; timm reads the same ones through
a directory of links whose ``_info.json`` lists only them) and ``jpeg256`` (``--samples`` synthetic
256 x 256 JPEGs with captions, written to a temporary directory). Each contender reads one epoch,
timed from ``iter`` to its last batch (worker start-up and the first shuffle-buffer fill included);
the contenders alternate ``--repeats`` times (``benchmarks.common.alternate``). Prints one JSON object
per (set, task, workers): the medians with their spread and nml / peer.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from argparse import Namespace
from functools import partial
from pathlib import Path

from benchmarks.common import alternate, write_jpeg_shards
from nml.noise.config import NoiseConfig


def _rate(make_loader, count) -> float:
    """Samples/s over one whole pass of the loader ``make_loader()`` builds, from ``iter`` to the
    last batch: worker start-up and the first shuffle-buffer fill count for every contender (before
    its first batch timm's reader reads 2,048 samples, open_clip's 1,000, nml's 100; timing from the
    second batch would leave much of the peers' shard reading off the clock). Its workers are shut
    down after (open_clip's and nml's training loaders keep theirs between epochs, which would
    otherwise outlive the measurement)."""
    loader = make_loader()
    t0, n = time.perf_counter(), 0
    it = iter(loader)
    for batch in it:
        n += count(batch)
    rate = n / max(time.perf_counter() - t0, 1e-9)
    for workers in (it, getattr(loader, "_iterator", None)):
        if hasattr(workers, "_shutdown_workers"):
            workers._shutdown_workers()
    del it, loader
    gc.collect()
    return rate


def open_clip_loader(spec: str, samples: int, transform, tokenizer, batch: int, workers: int):
    import open_clip_train.data as ocd
    from webdataset.tariterators import tar_file_expander, url_opener

    def tarfile_to_samples_nothrow(src, handler=ocd.log_and_continue):  # open_clip issue #935
        files = tar_file_expander(url_opener(src, handler=handler), handler=handler, eof_value=None)
        return ocd.group_by_keys_nothrow(files, handler=handler)

    ocd.tarfile_to_samples_nothrow = tarfile_to_samples_nothrow
    args = Namespace(
        train_data=spec,
        train_num_samples=samples,
        dataset_resampled=False,
        train_data_upsampling_factors=None,
        seed=0,
        workers=workers,
        world_size=1,
        batch_size=batch,
    )
    return ocd.get_wds_dataset(args, transform, is_train=True, tokenizer=tokenizer).dataloader


def timm_loader(directory: str, name: str, samples: int, transform, batch: int, workers: int):
    import timm.data
    from torch.utils.data import DataLoader

    ds = timm.data.create_dataset(
        f"wds/{name}", root=directory, split="train", is_training=True, batch_size=batch
    )
    ds.transform = transform
    return DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=False)


def nml_module(
    kind: str, spec: str, noise: NoiseConfig, image_size: int, batch: int, workers: int, classes: int
):
    from nml.data.modules import ClassificationShards, ImageTextShards

    cls = ImageTextShards if kind == "image_text" else ClassificationShards
    return cls(
        train=spec,
        num_classes=classes,
        noise=noise,
        loader={"batch_size": batch, "num_workers": workers},
        image={"image_size": image_size, "normalize_on_device": False},
    )


def _subset_for_timm(directory: Path, keep: list[str], sizes: dict, out: Path) -> str:
    """A directory that timm's reader sees as holding only the shards ``keep`` (links to them and an
    ``_info.json`` whose train split lists just those), so that it reads the samples nml reads."""
    out.mkdir()
    info = json.loads((directory / "_info.json").read_text())
    info["splits"] = {
        "train": {
            "name": "train",
            "filenames": keep,
            "num_samples": sum(sizes[n] for n in keep),
            "shard_lengths": [sizes[n] for n in keep],
        }
    }
    (out / "_info.json").write_text(json.dumps(info))
    for name in keep:
        (out / name).symlink_to((directory / name).resolve())
    return str(out)


def _sets(args, tmp: Path) -> dict[str, tuple[str, str, str, int]]:
    """name -> (directory, timm dataset name, spec, classes)."""
    out = {}
    if "glyphs" in args.sets:  # the first shards that hold --samples
        directory = Path(args.root) / "glyphs"
        names = sorted(p.name for p in directory.glob("train-*.tar"))
        sizes = json.loads((directory / "sizes.json").read_text())
        keep, total = [], 0
        for n in names:
            if total >= args.samples:
                break
            keep.append(n)
            total += sizes[n]
        spec = str(directory / f"train-{{{keep[0][6:12]}..{keep[-1][6:12]}}}.tar")
        out["glyphs"] = (
            _subset_for_timm(directory, keep, sizes, tmp / "glyphs"),
            "glyphs",
            spec,
            json.loads((directory / "_info.json").read_text())["num_classes"],
        )
    if "jpeg256" in args.sets:
        directory = tmp / "jpeg256"
        directory.mkdir()
        spec = write_jpeg_shards(
            directory, args.samples, size=(256, 256), classes=100, captions=True, index=True
        )
        out["jpeg256"] = (str(directory), "jpeg256", spec, 100)
    return out


def _nml_loader(kind: str, spec: str, noise: NoiseConfig, size: int, batch: int, workers: int, classes: int):
    dm = nml_module(kind, spec, noise, size, batch, workers, classes)
    dm.setup("fit")
    return dm.train_dataloader()


def contenders(kind: str, s: dict, noise: NoiseConfig, workers: int, batch: int) -> dict:
    """The three rates of one row: nml without and with noise, and the peer, as callables."""
    common = (s["spec"], s["size"], batch, workers, s["classes"])
    nml_rate = partial(_rate, count=lambda b: len(b["key"]))
    peer_rate = partial(_rate, count=lambda b: len(b[0]))
    if kind == "image_text":
        peer = partial(
            open_clip_loader, s["spec"], s["samples"], s["transform"], s["tokenizer"], batch, workers
        )
    else:
        peer = partial(timm_loader, s["directory"], s["name"], s["samples"], s["transform"], batch, workers)
    return {
        "nml": partial(nml_rate, partial(_nml_loader, kind, common[0], NoiseConfig(), *common[1:])),
        "nml_noise": partial(nml_rate, partial(_nml_loader, kind, common[0], noise, *common[1:])),
        "peer": partial(peer_rate, peer),
    }


PEERS = {"image_text": "open_clip get_wds_dataset", "classification": "timm create_dataset('wds/...')"}
NOISE = {"image_text": NoiseConfig("caption_swap", 0.3), "classification": NoiseConfig("symmetric", 0.2)}


def main() -> int:
    import open_clip

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/embedded")
    ap.add_argument("--sets", nargs="+", default=["glyphs", "jpeg256"], choices=["glyphs", "jpeg256"])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--image_size", type=int, default=None, help="default: 32 for glyphs, 224 for jpeg256")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # nml's default: the same BPE
    with tempfile.TemporaryDirectory() as tmp:
        for set_name, (directory, timm_name, spec, classes) in _sets(args, Path(tmp)).items():
            size = args.image_size or (32 if set_name == "glyphs" else 224)
            s = {"directory": directory, "name": timm_name, "spec": spec, "classes": classes, "size": size}
            s |= {"samples": args.samples, "tokenizer": tokenizer}
            s["transform"] = nml_module(
                "classification", spec, NoiseConfig(), size, 1, 0, classes
            ).inputs.transform(True)
            for kind in ("image_text", "classification"):
                for workers in args.workers:
                    stats = alternate(
                        contenders(kind, s, NOISE[kind], workers, args.batch_size), args.repeats
                    )
                    row = {
                        "set": set_name,
                        "task": kind,
                        "peer": PEERS[kind],
                        "workers": workers,
                        "batch_size": args.batch_size,
                        "image_size": size,
                        **{
                            f"{k}_samples_per_s": {m: round(v[m], 1) for m in ("median", "min", "max")}
                            for k, v in stats.items()
                        },
                        "nml_over_peer": round(stats["nml"]["median"] / stats["peer"]["median"], 3),
                        "nml_noise_over_peer": round(
                            stats["nml_noise"]["median"] / stats["peer"]["median"], 3
                        ),
                    }
                    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

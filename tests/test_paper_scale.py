"""Your data at paper scale, scaled down to a few steps on the CPU: ImageNet-style shards (timm's
layout: 1000 classes, an ``_info.json`` with a class count and no names, 256 px JPEG) and CC-style
img2dataset shards (``jpg`` + ``txt`` + ``json``, with and without ``sizes.json``), through the
shipped configs as the README's "bring your own shards" commands: pre-training (supervised and
CLIP), ``nml test``, ``nml export``, ``nml features`` and tuning."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from nml.cli.main import main

pytestmark = pytest.mark.slow

TRAIN = "imagenet-1k-train-{0000..0001}.tar"
VAL = "imagenet-1k-validation-0000.tar"


def _jpeg(rng: np.random.Generator, size: int = 256) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=85
    )
    return buf.getvalue()


def _tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = sample.pop("__key__")
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paper_scale")
    rng = np.random.default_rng(0)
    imagenet, splits = root / "imagenet", {}
    imagenet.mkdir()
    for split, sizes in (("train", [12, 12]), ("validation", [8])):
        names = [f"imagenet-1k-{split}-{s:04d}.tar" for s in range(len(sizes))]
        for s, (name, n) in enumerate(zip(names, sizes, strict=True)):
            _tar(
                imagenet / name,
                [
                    {
                        "__key__": f"{split}_{s}_{i:05d}",
                        "jpg": _jpeg(rng),
                        "cls": str(int(rng.integers(1000))).encode(),
                    }
                    for i in range(n)
                ],
            )
        splits[split] = {"name": split, "num_samples": sum(sizes), "filenames": names, "shard_lengths": sizes}
    (imagenet / "_info.json").write_text(
        json.dumps({"name": "imagenet-1k", "num_classes": 1000, "splits": splits})
    )
    for name, with_sizes in (("cc", True), ("cc_nosizes", False)):
        d = root / name
        d.mkdir()
        for s in range(2):
            _tar(
                d / f"{s:05d}.tar",
                [
                    {
                        "__key__": f"{s:05d}{i:04d}",
                        "jpg": _jpeg(rng, 128),
                        "txt": f"a photo number {i} of shard {s}".encode(),
                        "json": json.dumps({"caption": f"photo {i}", "status": "success"}).encode(),
                    }
                    for i in range(8)
                ],
            )
        if with_sizes:
            (d / "sizes.json").write_text(json.dumps({"00000.tar": 8, "00001.tar": 8}))
    return root


def _run(argv: list[str]) -> None:
    assert main(argv) == 0, argv


def test_imagenet_and_cc_style_shards_through_the_shipped_configs(
    shards, tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.chdir(shards)  # relative specs, as typed: relative to the working directory
    imagenet = ["--data.train", f"imagenet/{TRAIN}", "--data.val", f"imagenet/{VAL}"]
    tiny = [
        "--data.loader.batch_size",
        "4",
        "--data.loader.num_workers",
        "0",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    runs = ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]

    # supervised pre-training: 1000 classes from _info.json, the model's input size and eval crop
    with caplog.at_level("INFO"):
        _run(["fit", "--config", "pretrain_supervised.yaml", *imagenet, *tiny, *runs])
    ckpt = torch.load(next((tmp_path / "runs" / "pretrain_supervised").rglob("last.ckpt")), weights_only=True)
    assert ckpt["hyper_parameters"]["num_classes"] == 1000
    assert ckpt["state_dict"]["backbone.model.fc.weight"].shape[0] == 1000
    cfg = timm.create_model("test_resnet").pretrained_cfg  # the shipped config's model
    data, size, crop = ckpt["nml"]["data"], cfg["input_size"][-1], cfg["crop_pct"]
    assert data["image_size"] == size and data["crop_pct"] == crop and data["task"] is None
    assert f"image_size={size}" in caplog.text and f"eval crop_pct={crop}" in caplog.text

    # nml test on a named set of those shards: JSON alone on stdout, every sample counted
    run_dir = next((tmp_path / "runs" / "pretrain_supervised").glob("version_*"))
    capsys.readouterr()
    _run(
        [
            "test",
            "--config",
            "pretrain_supervised.yaml",
            *imagenet,
            "--data.loader.num_workers",
            "0",
            "--data.test",
            f'[{{name: imagenet_val, shards: "imagenet/{VAL}", group: id}}]',  # as in the README
            "--trainer.accelerator",
            "cpu",
            "--ckpt_path",
            str(run_dir),
            *runs,
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == {"imagenet_val": 8} and "test/id/imagenet_val/top1" in report["metrics"]

    # CLIP on CC-style shards (sizes.json), zero-shot validation after step 2 on the ImageNet shards
    # with a file of 1000 class names (`--data.class_names imagenet`, open_clip's names x 80
    # templates, is the same path with 80,000 prompts: a minute per head on this CPU)
    (tmp_path / "names.txt").write_text("\n".join(f"class {i}" for i in range(1000)))
    caplog.clear()
    with caplog.at_level("INFO"):
        _run(
            [
                "fit",
                "--config",
                "pretrain_clip.yaml",
                "--data.train",
                "cc/{00000..00001}.tar",
                "--data.val",
                f"imagenet/{VAL}",
                "--data.class_names",
                str(tmp_path / "names.txt"),
                *tiny,
                "--trainer.val_check_interval",
                "2",
                *runs,
            ]
        )
    clip = torch.load(next((tmp_path / "runs" / "pretrain_clip").rglob("last.ckpt")), weights_only=True)
    monitored = [v for k, v in clip["callbacks"].items() if "val/zeroshot_top1" in k]
    assert monitored and monitored[0]["best_model_score"] is not None  # val/zeroshot_top1 was logged
    assert "train: 2 shards, 16 samples per epoch" in caplog.text

    # the same without sizes.json: counted by scanning, and said
    caplog.clear()
    with caplog.at_level("INFO"):
        _run(
            [
                "fit",
                "--config",
                "pretrain_clip.yaml",
                "--data.train",
                "cc_nosizes/{00000..00001}.tar",
                "--data.val",
                f"imagenet/{VAL}",
                *tiny,
                "--trainer.max_steps",
                "1",
                "--trainer.limit_val_batches",
                "0",
                *runs,
            ]
        )
    assert "counted the samples of 2 shard(s) by scanning" in caplog.text

    # export the supervised encoder, extract features of a data file's splits, tune a linear probe
    ckpt_path = next((tmp_path / "runs" / "pretrain_supervised").rglob("last.ckpt"))
    capsys.readouterr()
    _run(["export", "--ckpt_path", str(ckpt_path), "--out", str(tmp_path / "export")])
    assert json.loads(capsys.readouterr().out)["feature_dim"] > 0
    data_file = tmp_path / "imagenet_data.yaml"
    data_file.write_text(
        json.dumps(
            {
                "data": {
                    "class_path": "nml.data.modules.ClassificationShards",
                    "init_args": {
                        "train": f"imagenet/{TRAIN}",
                        "val": f"imagenet/{VAL}",
                        "test": [{"name": "imagenet_val", "shards": f"imagenet/{VAL}", "group": "id"}],
                    },
                }
            }
        )
    )
    _run(
        [
            "features",
            "--backbone",
            str(tmp_path / "export"),
            "--data",
            str(data_file),
            "--data.loader.num_workers",
            "0",
            "--out",
            str(tmp_path / "features"),
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["splits"]["train"]["samples"] == 24 and summary["splits"]["test/imagenet_val"]["samples"] == 8
    )
    _run(
        [
            "fit",
            "--config",
            "tune_linear.yaml",
            "--data",
            str(data_file),
            "--model.init_args.backbone",
            str(tmp_path / "export"),
            *tiny,
            *runs,
        ]
    )
    tuned = torch.load(next((tmp_path / "runs" / "tune_linear").rglob("last.ckpt")), weights_only=True)
    assert tuned["hyper_parameters"]["num_classes"] == 1000

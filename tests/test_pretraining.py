"""Pre-training end to end: the shipped configs through the real CLI, export, golden losses, resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    GOLDEN,
    PYTHON,
    REPO,
    LossRecorder,
    nml_in_one_process,
    nml_subprocess_env,
    quiet_trainer,
    train_tiny,
)
from lightning.pytorch import seed_everything

from nml.data.modules import ClassificationShards
from nml.models.backbones import create_backbone
from nml.models.supervised import SupervisedPretraining

pytestmark = pytest.mark.slow  # end-to-end runs, subprocesses and DDP


def _event_accumulator(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(log_dir.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {log_dir}"
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    return acc


def _scalar_tags(log_dir: Path) -> set[str]:
    return set(_event_accumulator(log_dir).Tags()["scalars"])


@pytest.mark.parametrize(
    "config,expected",
    [
        (
            "pretrain_supervised.yaml",
            {
                "train/loss_step",
                "train/acc_clean_step",
                "train/acc_noisy_step",
                "train/memorised_step",
                "val/top1",
                "train/lr/decay",  # LearningRateMonitor and TrainingThroughput, added by nml fit
                "train/lr/no_decay",
                "train/samples",
            },
        ),
        (
            "pretrain_clip.yaml",
            {
                "train/loss_step",
                "train/logit_scale_step",
                "train/retrieval_clean_step",
                "val/zeroshot_top1",
                "train/lr/decay",
                "train/samples",
            },
        ),
    ],
)
def test_shipped_config_fits_end_to_end_and_exports(tiny_benchmark, tmp_path, config, expected):
    run = subprocess.run(
        [
            PYTHON,
            "-m",
            "nml.cli",
            "fit",
            "--config",
            config,
            "--data.root",
            str(tiny_benchmark),
            "--data.noise.rate",
            "0.3",
            "--data.loader.num_workers",
            "0",
            "--data.loader.batch_size",
            "32",
            "--trainer.max_steps",
            "4",
            "--trainer.val_check_interval",
            "2",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.log_every_n_steps",
            "2",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        env=nml_subprocess_env(),
        cwd=tmp_path,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout, parse_constant=pytest.fail)  # stdout: this JSON object alone (no NaN)
    assert Path(result["checkpoints"]["last"]).is_file() and Path(result["run_dir"]).is_dir()
    assert Path(result["checkpoints"]["best"]).name.startswith("best-") and result["global_step"] == 4
    val = "val/top1" if "supervised" in config else "val/zeroshot_top1"
    assert 0 <= result["metrics"][val] <= 1 and result["seconds"] > 0
    assert f"fit: {result['epochs']} epoch(s), 4 steps in" in run.stderr  # the one-line summary
    assert f"using config {REPO / 'nml' / 'configs' / config}" in run.stderr  # bare name -> shipped config
    assert run.stderr.count("GPU available") == 1  # Lightning's lines once, not through two handlers
    for noise in ("Tip:", "| Name", "Total Flops", "LeafSpec", "Parsing tokenizer", "Warning"):
        assert noise not in run.stderr, noise  # nml.quiet: what the terminal is spared
    # stderr is not a terminal here: plain progress lines every log_every_n_steps, no redrawn bars
    assert "epoch 0 step 2/" in run.stderr and "epoch 0 step 4/" in run.stderr and "\r" not in run.stderr
    assert "validation (epoch 0) | val/" in run.stderr
    assert expected <= _scalar_tags(tmp_path / "runs"), _scalar_tags(tmp_path / "runs")
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    assert (ckpt.parent.parent / "config.yaml").is_file()
    # FeatureSpectrum at the end of fit: scalars, histogram, figure and .npz for every test set
    tb = _event_accumulator(tmp_path / "runs")
    assert {"spectrum/glyphs_heldout/sve", "spectrum/glyphs_blur_3/lsvr"} <= set(tb.Tags()["scalars"])
    assert "spectrum/glyphs_heldout/singular_values" in tb.Tags()["histograms"]
    assert "spectrum/glyphs_heldout/normalised" in tb.Tags()["images"]
    npz = np.load(next((tmp_path / "runs").rglob("spectrum/glyphs_heldout_fit_end.npz")))
    assert float(npz["samples"]) == 44 * 3 and float(npz["sve"]) > 0

    other = "pretrain_supervised.yaml" if "clip" in config else "pretrain_clip.yaml"
    (tmp_path / "copy").mkdir()
    copied = Path(shutil.copy(ckpt, tmp_path / "copy" / "last.ckpt"))  # its metrics.json stays apart
    (test_out, test_err), (export_out, _), (_, other_err) = nml_in_one_process(
        [
            [
                "test",
                "--config",
                config,
                "--data.root",
                str(tiny_benchmark),
                "--data.loader.num_workers",
                "0",
                "--ckpt_path",
                str(ckpt.parent.parent),  # a run dir: its last.ckpt
                "--trainer.logger.init_args.save_dir",
                str(tmp_path / "runs"),
            ],
            ["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "export")],
            [  # the checkpoint under the other objective's config: Lightning runs the checkpoint's model
                "test",
                "--config",
                other,
                "--data.root",
                str(tiny_benchmark),
                "--data.loader.num_workers",
                "0",
                "--ckpt_path",
                str(copied),
                "--trainer.limit_test_batches",
                "1",
                "--trainer.logger.init_args.save_dir",
                str(tmp_path / "other"),
            ],
        ],
        tmp_path,
    )
    held, named = ("Contrastive", "Supervised") if "clip" in config else ("Supervised", "Contrastive")
    assert f"holds a {held}Pretraining; the config names {named}Pretraining" in other_err
    report = json.loads(test_out)
    metrics = report["metrics"]
    assert report["samples"]["glyphs_heldout"] == 44 * 3  # N per set: every test sample once
    assert {
        "test/id/glyphs_heldout/top1",
        "test/ood/glyphs_elastic_2/top1",
        "test/id/mean_top1",
        "test/ood/mean_top1",
    } <= set(metrics)
    ood = [v for k, v in metrics.items() if k.startswith("test/ood/glyphs_")]
    assert len(ood) == 12 and metrics["test/ood/mean_top1"] == pytest.approx(sum(ood) / 12, abs=1e-6)
    assert json.loads((ckpt.parent / "metrics.json").read_text()) == report
    assert "glyphs_heldout" in test_err and "mean" in test_err  # the table

    summary = json.loads(export_out)
    backbone = create_backbone(tmp_path / "export")
    meta = backbone.export_meta
    assert meta["feature_dim"] == summary["feature_dim"] == backbone.feature_dim
    assert meta["noise"]["rate"] == 0.3 and meta["data"]["manifest_sha256"]
    assert meta["pretraining_classes"] == (44 if "supervised" in config else None)  # CLIP has no classes
    assert meta["image_size"] == 32 and len(meta["mean"]) == 3
    x = torch.randn(2, 3, 32, 32)
    assert backbone.eval().features(x).shape == (2, meta["feature_dim"])


@pytest.mark.parametrize(
    "kind,workers,steps",
    [("supervised", 0, 0), ("clip", 0, 0), ("supervised", 2, 30), ("clip", 2, 0)],
)
def test_resume_under_max_epochs_continues_the_interrupted_epoch(
    tiny_benchmark, tmp_path, kind, workers, steps
):
    """Bounded by max_epochs (as the shipped configs are; ``steps``: max_steps too, both bounds), with
    0 or 2 loader workers, a checkpoint taken mid-epoch resumes the epoch where it stopped: the same
    per-step losses as the uninterrupted run. (Before the fix the loader's state was never applied
    and the epoch restarted at batch 0.)"""
    run = {"max_epochs": 2, "num_workers": workers}
    reference = train_tiny(kind, tiny_benchmark, tmp_path / "a", steps, **run)  # 2 x 17 batches (or 30)
    assert len(reference) == (steps or 34)
    head = train_tiny(kind, tiny_benchmark, tmp_path / "b", steps, stop_at=25, **run)  # epoch 1, batch 8
    assert head == reference[:25]
    ckpt = next((tmp_path / "b").glob("*.ckpt"))
    tail = train_tiny(kind, tiny_benchmark, tmp_path / "c", steps, ckpt_path=str(ckpt), **run)
    assert tail == pytest.approx(reference[25:], rel=1e-6)


@pytest.mark.parametrize("kind,stop", [("supervised", 25), ("clip", 25), ("supervised", 17)])
def test_a_resumed_epoch_logs_the_whole_epochs_training_metrics(tiny_benchmark, tmp_path, kind, stop):
    """The ``*_epoch`` training metrics (memorised, noise rate ...) of an epoch resumed mid-way cover
    the whole epoch, as uninterrupted: the sums before the resume are in the checkpoint, stamped
    with their epoch. A checkpoint saved on an epoch's last batch (step 17 of 17) resumes in the
    next epoch, whose metrics must not include the finished epoch's sums."""
    from nml.callbacks.epoch_metrics import EpochMetrics

    run = {"max_epochs": 2}
    reference, resumed = EpochMetrics(), EpochMetrics()  # train/<name>_epoch of every epoch
    train_tiny(kind, tiny_benchmark, tmp_path / "a", 0, callbacks=[reference], **run)
    train_tiny(
        kind, tiny_benchmark, tmp_path / "b", 0, stop_at=stop, **run
    )  # epoch 1 batch 8, or epoch 0's end
    ckpt = next((tmp_path / "b").glob(f"*step={stop}.ckpt"))
    train_tiny(kind, tiny_benchmark, tmp_path / "c", 0, ckpt_path=str(ckpt), callbacks=[resumed], **run)
    noise = "train/noise_rate" if kind == "supervised" else "train/retrieval_noisy"
    last_ref, last = reference.epochs[-1], resumed.epochs[-1]  # epoch 1: the resumed one
    assert noise in last and set(last) == set(last_ref)
    assert {k: v for k, v in last.items() if k != "epoch"} == pytest.approx(
        {k: v for k, v in last_ref.items() if k != "epoch"}, rel=1e-5
    )


@pytest.mark.parametrize("kind", ["supervised", "clip"])
def test_golden_losses_and_resume_reproduces_the_tail(tiny_benchmark, tmp_path, kind):
    steps, stop = 8, 5  # 5 is mid-epoch: the tiny corpus has 264 samples = 17 batches of 16
    reference = train_tiny(kind, tiny_benchmark, tmp_path, steps)
    assert len(reference) == steps
    if os.environ.get("NML_UPDATE_GOLDEN"):
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        golden[kind] = reference
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
        pytest.fail(
            f"NML_UPDATE_GOLDEN: wrote the golden losses for {kind}; commit {GOLDEN} and rerun without it"
        )
    assert GOLDEN.is_file(), f"{GOLDEN} is missing: write it with NML_UPDATE_GOLDEN=1 and commit it"
    golden = json.loads(GOLDEN.read_text())
    assert kind in golden, f"{GOLDEN} has no losses for {kind!r}: write them with NML_UPDATE_GOLDEN=1"
    # CPUs with other vector units may round differently: a tolerance, not bit equality
    assert reference == pytest.approx(golden[kind], rel=2e-4)

    head = train_tiny(kind, tiny_benchmark, tmp_path / "ckpt", steps, stop_at=stop)
    assert head == reference[:stop]
    ckpt = next((tmp_path / "ckpt").glob("*.ckpt"))
    assert torch.load(ckpt, weights_only=True)["global_step"] == stop  # weights-only loadable
    tail = train_tiny(kind, tiny_benchmark, tmp_path / "ckpt2", steps, ckpt_path=str(ckpt))
    assert tail == pytest.approx(reference[stop:], rel=1e-6)


def test_ema_callback_mixup_and_channels_last_switches(tiny_benchmark, caplog):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    seed_everything(0)
    dm = ClassificationShards(root=str(tiny_benchmark), loader={"batch_size": 16, "num_workers": 0})
    with caplog.at_level("WARNING"):
        model = SupervisedPretraining(
            "test_resnet", num_classes=44, mixup=0.2, cutmix=1.0, channels_last=True
        )
    assert "confound the label-noise" in caplog.text
    ema = EMAWeightAveraging(decay=0.5)
    losses = LossRecorder()
    quiet_trainer(
        max_steps=3,
        limit_val_batches=0,
        callbacks=[ema, losses],
    ).fit(model, dm)
    assert len(losses.losses) == 3 and all(torch.isfinite(torch.tensor(losses.losses)))
    averaged = dict(ema._average_model.module.named_parameters())
    for name, p in model.named_parameters():  # at the end of fit the module holds the EMA weights
        torch.testing.assert_close(p, averaged[name])
    assert model.backbone.model.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)

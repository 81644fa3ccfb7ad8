"""Downstream tuning: every method on images (a tiny exported backbone) and on cached features,
the frozen backbone, `nml features`, CachedFeatures' batching, resume, and the CLI end to end."""

from __future__ import annotations

import io
import json
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import TINY_CLIP, LossRecorder, nml_in_one_process, quiet_trainer
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from nml.data.modules import ClassificationShards
from nml.features.cache import FeatureSplit, load_split
from nml.features.datamodule import CachedFeatures, FeatureLoader
from nml.features.extract import extract_features
from nml.models.backbones import create_backbone
from nml.models.export import write_export
from nml.models.tuning import DownstreamTuning

DATA = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "noise": {"kind": "none"}}
FAST = {"loader": {"num_workers": 0, "batch_size": 16, "eval_batch_size": 64}}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A tiny open_clip export and a timm export with BatchNorm (random weights, seeded)."""
    root = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    write_export(
        create_backbone({"library": "open_clip", "name": "tiny", "model_cfg": TINY_CLIP}),
        root / "clip",
        data=DATA,
    )
    write_export(create_backbone({"library": "timm", "name": "test_resnet"}), root / "resnet", data=DATA)
    return {"clip": root / "clip", "resnet": root / "resnet"}


@pytest.fixture(scope="module")
def feature_cache(tiny_benchmark, exports, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features") / "clip"
    backbone = create_backbone(exports["clip"])
    meta = backbone.export_meta
    dm = ClassificationShards(
        root=str(tiny_benchmark), task="mnist", **FAST, image={"mean": meta["mean"], "std": meta["std"]}
    )
    extract_features(backbone, dm, out, views=2, seed=0)
    return out


def _trainer(**kw) -> Trainer:
    return quiet_trainer(
        **{"enable_checkpointing": False, "limit_val_batches": 1, **kw},
    )


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("method", ["linear", "mlp", "nmtune", "finetune"])
@pytest.mark.slow
def test_each_method_trains_on_images_and_tests_id_and_ood(tiny_benchmark, exports, method):
    seed_everything(0)
    backbone = exports["resnet"]  # BatchNorm: its running statistics must not move unless fine-tuning
    model = DownstreamTuning(method, backbone=str(backbone), optimizer=partial(torch.optim.AdamW, lr=1e-2))
    dm = ClassificationShards(root=str(tiny_benchmark), task="mnist", **FAST)
    before = _state(model.backbone)
    trainer = _trainer(max_steps=3)
    trainer.fit(model, dm)
    after = _state(model.backbone)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if method == "finetune":
        assert any("running_mean" in k for k in changed) and any(k.endswith("weight") for k in changed)
    else:
        assert changed == [], changed[:5]  # parameters and BatchNorm statistics untouched
        assert not any(p.requires_grad for p in model.backbone.parameters())
    # the data module followed the backbone: normalisation from the export, views from the method
    assert dm.inputs.options.mean == tuple(DATA["mean"]) and dm.inputs.options.views == (
        1 if method == "linear" else 2
    )
    assert dm.inputs.options.augment is (method != "linear")
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss_epoch"]) and 0 <= metrics["train/top1_epoch"] <= 1
    assert ("train/svd_epoch" in metrics) == (method in ("nmtune", "finetune"))
    trainer.test(model, dm, verbose=False)
    assert {"test/id/mnist/top1", "test/ood/mnist_to_handwriting_font/top1", "test/ood/mean_top1"} <= set(
        trainer.callback_metrics
    )


@pytest.mark.slow
def test_finetune_keeps_the_pretrained_anchor_frozen_and_out_of_the_checkpoint(exports):
    model = DownstreamTuning("finetune", backbone=str(exports["clip"]), num_classes=4)
    assert all(p.requires_grad for p in model.backbone.parameters())
    anchor = model._anchor[0]
    assert not any(p.requires_grad for p in anchor.parameters()) and not anchor.training
    assert not any(k.startswith("_anchor") for k in model.state_dict())
    model.train()
    assert model.backbone.training and not anchor.training


@pytest.mark.parametrize("method", ["linear", "mlp", "nmtune"])
@pytest.mark.slow
def test_each_method_trains_on_cached_features_with_no_backbone(feature_cache, method):
    seed_everything(0)
    model = DownstreamTuning(method)
    dm = CachedFeatures(str(feature_cache), batch_size=16)
    trainer = _trainer(max_epochs=2)
    trainer.fit(model, dm)
    assert model.backbone is None and model.hparams.feature_dim == TINY_CLIP["embed_dim"]
    assert dm.views == (1 if method == "linear" else 2)
    trainer.test(model, dm, verbose=False)
    metrics = trainer.callback_metrics
    assert {"test/id/mnist/top1", "test/ood/mnist_to_handwriting_font/top1"} <= set(metrics)
    split = load_split(feature_cache / "test" / "mnist")  # the metric counts every test sample once
    with torch.no_grad():
        expected = (model.eval()(torch.from_numpy(split.features)).argmax(1).numpy() == split.labels).mean()
    assert float(metrics["test/id/mnist/top1"]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_nml_features_writes_every_split_deterministically(tiny_benchmark, exports, feature_cache, tmp_path):
    meta = json.loads((feature_cache / "features.json").read_text())
    assert meta["format"] == "nml-features/1" and meta["feature_dim"] == 16 and meta["num_classes"] == 10
    assert set(meta["splits"]) == {"train", "val", "test/mnist", "test/mnist_to_handwriting_font"}
    assert meta["splits"]["test/mnist_to_handwriting_font"]["group"] == "ood"
    train = load_split(feature_cache / "train")
    assert train.views.shape == (len(train), 2, 16) and train.keys[0] and len(set(train.keys)) == len(train)
    assert not np.allclose(train.views[:, 0], train.views[:, 1])  # two different augmentations
    assert not np.allclose(train.views[:, 0], train.features)
    # the features are the backbone's: recompute a few from the shards with the eval transform
    backbone = create_backbone(exports["clip"])
    emeta = backbone.export_meta
    dm = ClassificationShards(
        root=str(tiny_benchmark), task="mnist", **FAST, image={"mean": emeta["mean"], "std": emeta["std"]}
    )
    batch = next(iter(dm.extraction_loader(dm.train_spec)))
    with torch.no_grad():
        f = backbone.eval().features(batch["image"][:4]).numpy()
    np.testing.assert_allclose(train.features[:4], f, rtol=1e-4, atol=1e-5)
    assert batch["key"][:4] == train.keys[:4]
    # same seed, same views
    extract_features(backbone, dm, tmp_path / "again", views=2, seed=0)
    np.testing.assert_array_equal(load_split(tmp_path / "again" / "train").views, train.views)


def test_feature_loader_equal_full_batches_per_rank_and_exact_evaluation():
    n, b = 37, 4
    split = FeatureSplit(np.random.rand(n, 3).astype(np.float32), np.arange(n) % 5)
    for world in (1, 2, 3):
        seen = []
        lengths = set()
        for rank in range(world):
            loader = FeatureLoader(split, True, b, seed=1, rank=rank, world_size=world)
            batches = list(loader)
            lengths.add(len(batches))
            assert len(batches) == len(loader) and all(len(x["target"]) == b for x in batches)
            seen += [int(i) for x in batches for i in x["feature"][:, 0].mul(1e6).round()]
        assert len(lengths) == 1  # DDP needs the same number of steps on every rank
        assert len(set(seen)) == n  # every sample at least once per epoch
        evaluated = []
        for rank in range(world):
            loader = FeatureLoader(split, False, b, rank=rank, world_size=world)
            batches = list(loader)
            assert len(batches) == len(loader)
            evaluated += [t for x in batches for t in x["feature"][x["valid"]].tolist()]
        assert sorted(map(tuple, evaluated)) == sorted(map(tuple, split.features.tolist()))  # each once
    a = [x["target"].tolist() for x in FeatureLoader(split, True, b, seed=1)]
    again = [x["target"].tolist() for x in FeatureLoader(split, True, b, seed=1)]
    other = FeatureLoader(split, True, b, seed=1)
    other.set_epoch(1)
    assert a == again and a != [x["target"].tolist() for x in other]  # seeded per (seed, epoch)


def test_two_views_from_stored_views_are_distinct_and_fall_back_to_the_feature():
    n, k, d = 50, 3, 4
    views = np.arange(n * k * d, dtype=np.float32).reshape(n, k, d)
    split = FeatureSplit(np.zeros((n, d), np.float32), np.zeros(n, np.int64), views)
    batch = next(iter(FeatureLoader(split, True, 50, views=2)))
    f = batch["feature"]
    assert f.shape == (50, 2, d)
    first, second = (f[:, i, 0] // d % k for i in (0, 1))
    assert (first != second).all()
    plain = FeatureSplit(np.random.rand(n, d).astype(np.float32), np.zeros(n, np.int64))
    f = next(iter(FeatureLoader(plain, True, 10, views=2)))["feature"]
    assert torch.equal(f[:, 0], f[:, 1])
    f = next(iter(FeatureLoader(plain, True, 10, views=2, view_noise=0.1)))["feature"]
    assert 0 < (f[:, 0] - f[:, 1]).std() < 0.2


def test_other_feature_formats_and_bad_input(tmp_path):
    x, y = np.random.rand(6, 3).astype(np.float32), np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "api.npz", features=x, labels=y)
    split = load_split(tmp_path / "api.npz")
    np.testing.assert_array_equal(split.features, x)
    with tarfile.open(tmp_path / "f-0.tar", "w") as tar:
        for i in range(6):
            for ext, data in (("npy", _npy(x[i])), ("cls", str(y[i]).encode())):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    split = load_split(str(tmp_path / "f-{0..0}.tar"))
    np.testing.assert_array_equal(split.features, x)
    assert split.labels.tolist() == y.tolist() and split.keys[0] == "s0"
    np.savez(tmp_path / "bad.npz", features=x, labels=y[:5])
    with pytest.raises(ValueError, match=r"bad.npz: labels must be \(6,\)"):
        load_split(tmp_path / "bad.npz")
    np.savez(tmp_path / "nolabels.npz", features=x)
    with pytest.raises(ValueError, match=r"nolabels.npz: no array \['labels'\]"):
        load_split(tmp_path / "nolabels.npz")
    dm = CachedFeatures(train=str(tmp_path / "api.npz"), val=str(tmp_path / "api.npz"))
    assert dm.num_classes == 3 and dm.feature_dim == 3
    with pytest.raises(ValueError, match="D=3, but the head expects D=8"):
        _trainer(max_steps=1).fit(DownstreamTuning("linear", feature_dim=8, num_classes=3), dm)
    with pytest.raises(ValueError, match="cross-entropy only"):
        DownstreamTuning("mlp", loss={"mse_weight": 1.0})
    with pytest.raises(ValueError, match="method=finetune trains the encoder: give model.backbone"):
        DownstreamTuning("finetune")


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _tune(cache: Path, out: Path, steps: int, stop_at=None, ckpt_path=None, max_epochs=None) -> list[float]:
    seed_everything(0)
    losses = LossRecorder(stop_at)
    callbacks = [losses]
    if stop_at is not None:
        callbacks.append(ModelCheckpoint(dirpath=out, every_n_train_steps=stop_at, save_top_k=-1))
    bound = {"max_steps": steps} if max_epochs is None else {"max_steps": -1, "max_epochs": max_epochs}
    trainer = _trainer(
        **bound, limit_val_batches=0, enable_checkpointing=stop_at is not None, callbacks=callbacks
    )
    trainer.fit(DownstreamTuning("nmtune"), CachedFeatures(str(cache), batch_size=16), ckpt_path=ckpt_path)
    return losses.losses


@pytest.mark.slow
def test_feature_tuning_resumes_mid_epoch_to_the_same_losses(feature_cache, tmp_path):
    steps, stop = 9, 4  # the tiny mnist cache has 7 batches of 16 per epoch: 4 is mid-epoch
    reference = _tune(feature_cache, tmp_path, steps)
    assert reference == _tune(feature_cache, tmp_path / "again", steps)  # deterministic
    head = _tune(feature_cache, tmp_path / "ckpt", steps, stop_at=stop)
    assert head == reference[:stop]
    tail = _tune(feature_cache, tmp_path, steps, ckpt_path=next((tmp_path / "ckpt").glob("*.ckpt")))
    assert tail == pytest.approx(reference[stop:], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_feature_tuning_resumes_mid_epoch_under_max_epochs(feature_cache, tmp_path):
    """The shipped configs bound runs by max_epochs: the resumed epoch continues, it does not restart."""
    reference = _tune(feature_cache, tmp_path, 0, max_epochs=2)  # 2 x 7 batches
    head = _tune(feature_cache, tmp_path / "ckpt", 0, stop_at=10, max_epochs=2)  # epoch 1, batch 3
    assert head == reference[:10]
    tail = _tune(feature_cache, tmp_path, 0, ckpt_path=next((tmp_path / "ckpt").glob("*.ckpt")), max_epochs=2)
    assert tail == pytest.approx(reference[10:], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_cli_features_fit_and_test_on_the_shipped_tune_configs(tiny_benchmark, exports, tmp_path):
    """As a user: `nml features`, then `nml fit` / `nml test` with a shipped tune config on the cache,
    and on images with the export."""
    common = [
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
    ]
    cache = tmp_path / "features"
    run_dir = tmp_path / "runs" / "tune_nmtune" / "version_0"  # `--ckpt_path RUN_DIR`: its last.ckpt
    runs = [
        [
            "features",
            "--backbone",
            str(exports["clip"]),
            "--data",
            "tune_nmtune.yaml",
            "--data.root",
            str(tiny_benchmark),
            "--views",
            "2",
            "--data.loader.num_workers",
            "0",
            "--out",
            str(cache),
        ],
        [
            "fit",
            "--config",
            "tune_nmtune.yaml",
            "--data",
            "data/features.yaml",
            "--data.init_args.root",
            str(cache),
            "--model.init_args.backbone",
            "null",
            "--trainer.max_epochs",
            "2",
            *common,
        ],
        [
            "test",
            "--config",
            "tune_nmtune.yaml",
            "--data",
            "data/features.yaml",
            "--data.init_args.root",
            str(cache),
            "--model.init_args.backbone",
            "null",
            "--ckpt_path",
            str(run_dir),
            *common,
        ],
        *(
            [
                sub,
                "--config",
                "tune_nmtune.yaml",
                "--data",
                "data/features.yaml",
                "--data.init_args.root",
                str(cache),
                "--model.init_args.backbone",
                "null",
                "--ckpt_path",
                str(run_dir / "checkpoints" / "last.ckpt"),
                *common,
            ]
            for sub in ("validate", "predict")
        ),
        [
            "fit",
            "--config",
            "tune_linear.yaml",
            "--model.init_args.backbone",
            str(exports["clip"]),
            "--data.root",
            str(tiny_benchmark),
            "--data.loader.num_workers",
            "0",
            "--trainer.max_steps",
            "3",
            "--trainer.limit_val_batches",
            "1",
            *common,
        ],
    ]
    (features_out, features_err), _, (test_out, test_err), (val_out, _), (pred_out, _), _ = (
        nml_in_one_process(runs, tmp_path)
    )
    summary = json.loads(features_out)
    assert summary["feature_dim"] == 16 and summary["splits"]["train"]["views"] == 2
    assert "using data " in features_err and "tune_nmtune.yaml" in features_err
    report = json.loads(test_out)
    ood = [k for k in report["metrics"] if k.startswith("test/ood/glyphs_")]
    assert "test/id/glyphs_heldout/top1" in report["metrics"] and len(ood) == 12
    assert "ood    mean" in test_err
    # evaluations of a run write beside its checkpoint and log into it: no new version_N, and the
    # run's own config.yaml is kept (each command's config beside it)
    assert [d.name for d in (tmp_path / "runs" / "tune_nmtune").iterdir()] == ["version_0"]
    assert json.loads((run_dir / "checkpoints" / "metrics.json").read_text()) == report
    assert {"config.yaml", "config.test.yaml", "config.validate.yaml", "config.predict.yaml"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_epochs"] == 2  # the fit's
    validated = json.loads(val_out)  # JSON, not Lightning's box table
    assert validated["ckpt_path"].endswith("last.ckpt") and 0 <= validated["metrics"]["val/top1"] <= 1
    predicted = json.loads(pred_out)["predictions"]["glyphs_heldout"]
    assert predicted["rows"] == 44 * 3
    assert predicted["files"] == [str(run_dir / "checkpoints" / "predictions" / "glyphs_heldout.csv")]
    spectra = list((tmp_path / "runs" / "tune_nmtune").rglob("spectrum/glyphs_heldout_fit_end.npz"))
    assert spectra and float(np.load(spectra[0])["samples"]) == 44 * 3  # the held-out test set: 3 per class
    assert list((tmp_path / "runs" / "tune_linear").rglob("last.ckpt"))


@pytest.mark.slow
def test_last_ckpt_is_the_last_epoch_when_validation_stops_improving(feature_cache, tmp_path, monkeypatch):
    """With lr 0 validation never improves after epoch 0: last.ckpt must still hold the final epoch and
    step (the shipped configs once kept the best epoch there), and the best one is named best-*."""
    monkeypatch.chdir(tmp_path)
    sgd = ["--model.init_args.optimizer", "torch.optim.SGD", "--model.init_args.optimizer.lr", "0.0"]
    assert 0 == _fit_linear_head(feature_cache, "3", *sgd)
    checkpoints = next(tmp_path.rglob("checkpoints"))
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    best = list(checkpoints.glob("best-*.ckpt"))
    steps_per_epoch = last["global_step"] // 3
    assert last["epoch"] == 2 and last["global_step"] == 3 * steps_per_epoch > 0
    assert len(best) == 1 and best[0].name.startswith("best-epoch=0-")


def test_feature_extraction_reports_progress_in_a_log_file(caplog):
    """On a terminal a bar; in a log file (stderr not a TTY, as here) a line every ``every`` seconds."""
    from nml.features.extract import _Progress

    progress = _Progress("test/mnist", 4, every=0.0)
    with caplog.at_level("INFO"):
        for b in range(1, 5):
            progress.step(b, 64 * (b - 1))
    progress.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test/mnist:")]
    assert lines[0].startswith("test/mnist: 1/4 batches") and "samples/s, ETA" in lines[0] and len(lines) == 3


def _fit_linear_head(feature_cache, epochs: str, *extra: str) -> int:
    """``nml fit`` of tune_linear.yaml on cached features for ``epochs`` epochs (its exit status)."""
    from nml.cli.main import main

    return main(
        [
            "fit",
            "--config",
            "tune_linear.yaml",
            "--data",
            "data/features.yaml",
            "--data.init_args.root",
            str(feature_cache),
            "--model.init_args.backbone",
            "null",
            "--trainer.max_epochs",
            epochs,
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ]
    )


@pytest.mark.slow
def test_a_fit_into_a_run_directory_with_checkpoints_is_refused_or_overwritten(
    feature_cache, tmp_path, capsys
):
    """A fixed version re-used by a fresh fit would mix two runs' checkpoints (``nml test --ckpt_path
    RUN`` then read the first run's): refused naming the directory; ``--overwrite_run true`` cleans."""

    def fit(epochs: str, *extra: str) -> int:
        where = ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
        return _fit_linear_head(
            feature_cache, epochs, *where, "--trainer.logger.init_args.version", "cached", *extra
        )

    run = tmp_path / "runs" / "tune_linear" / "cached"
    assert fit("2") == 0
    first = {p.name for p in (run / "checkpoints").glob("*.ckpt")}
    first_events = set(run.glob("events.out.tfevents.*"))
    assert first_events
    assert fit("1") == 1
    err = capsys.readouterr().err
    assert (
        f"the run directory '{run}' holds checkpoints of an earlier run" in err
        and "--overwrite_run true" in err
    )
    assert {p.name for p in (run / "checkpoints").glob("*.ckpt")} == first  # untouched
    assert fit("1", "--overwrite_run", "true") == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0  # the new run's
    assert not {p.name for p in (run / "checkpoints").glob("epoch=1*.ckpt")}  # nothing of the first run
    events = set(run.glob("events.out.tfevents.*"))  # TensorBoard shows the new run alone
    assert len(events) == 1 and not events & first_events


@pytest.mark.slow
def test_without_a_logger_the_working_directory_is_one_run_and_last_resumes_only_its_recipe(
    feature_cache, tmp_path, capsys, monkeypatch
):
    """With ``--trainer.logger false`` the checkpoints go to ``./checkpoints``: a fresh fit there is
    refused as in a fixed version, and ``--ckpt_path last`` resumes only a checkpoint trained with
    the same model and data options (another command's is refused, naming what differs)."""
    monkeypatch.chdir(tmp_path)

    def fit(epochs: str, *extra: str) -> int:
        return _fit_linear_head(feature_cache, epochs, "--trainer.logger", "false", *extra)

    assert fit("1") == 0
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "last.ckpt").exists()
    capsys.readouterr()
    assert fit("2") == 1  # a fresh fit into the used directory
    assert "the run directory '.' holds checkpoints of an earlier run" in capsys.readouterr().err
    # another recipe (weight decay) with --ckpt_path last: refused, naming the option and both values
    assert fit("2", "--ckpt_path", "last", "--model.init_args.optimizer.init_args.weight_decay", "0.5") == 1
    err = capsys.readouterr().err
    assert "was trained with other options than this command" in err
    assert "model.init_args.optimizer.init_args.weight_decay" in err and "-> 0.5" in err
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 0  # untouched
    # the same recipe resumes it (the evaluation batch size may change) and says what it resumed
    assert fit("2", "--ckpt_path", "last", "--data.init_args.eval_batch_size", "512") == 0
    assert "--ckpt_path last: resuming" in capsys.readouterr().err
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 1


def test_cached_features_are_standardised_with_training_statistics(tmp_path):
    """A head trained on a * x + b predicts what one trained on x predicts: the module standardises
    with the training split's statistics, kept in its checkpoint."""
    g = np.random.default_rng(0)
    n, d = 96, 6
    x = g.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    scale = np.array([10.0, 0.1, 3.0, 1.0, 5.0, 7.0], np.float32)  # within the 1 % floor of the median
    predictions = []
    for a, b in ((1.0, 0.0), (scale, 40.0)):
        split = {"features": x * a + b, "labels": y}
        for name in ("train", "test"):
            np.savez(tmp_path / f"{name}.npz", **split)
        dm = CachedFeatures(
            train=str(tmp_path / "train.npz"),
            test=[{"name": "t", "shards": str(tmp_path / "test.npz"), "group": "id"}],
            batch_size=16,
        )
        mean, std = dm.feature_statistics()
        assert np.allclose(mean, (x * a + b).mean(0), rtol=1e-4, atol=1e-3)
        assert np.allclose(std, (x * a + b).std(0), rtol=1e-4)
        seed_everything(0)
        model = DownstreamTuning("linear")
        trainer = Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        trainer.fit(model, dm)
        assert torch.allclose(model.feature_mean, mean) and torch.allclose(model.feature_std, std)
        trainer.save_checkpoint(tmp_path / "head.ckpt")
        state = torch.load(tmp_path / "head.ckpt", weights_only=True)["state_dict"]
        assert torch.equal(state["feature_std"], std)
        with torch.no_grad():
            predictions.append(model(torch.as_tensor(x * a + b)).argmax(1))
    assert torch.equal(predictions[0], predictions[1])
    split = FeatureSplit(np.zeros((4, 3), np.float32), np.zeros(4, np.int64))
    np.savez(tmp_path / "const.npz", features=split.features, labels=split.labels)
    _, std = CachedFeatures(train=str(tmp_path / "const.npz")).feature_statistics()
    assert torch.equal(std, torch.ones(3))  # a constant (dead) unit stays 0 after centring


def test_nearly_constant_feature_dimensions_cannot_blow_up_the_standardised_inputs(tmp_path):
    g = np.random.default_rng(0)
    x = g.normal(size=(64, 4)).astype(np.float32)
    x[:, 2] = 5.0 + 1e-4 * g.normal(size=64)  # a nearly dead unit
    x[:, 3] = 0.0  # a dead one
    np.savez(tmp_path / "train.npz", features=x, labels=np.zeros(64, np.int64))
    mean, std = CachedFeatures(train=str(tmp_path / "train.npz")).feature_statistics()
    live = float(np.median(x[:, :3].std(0)))
    assert std[2] == pytest.approx(1e-2 * live, rel=1e-3) and std[3] == 1
    assert np.allclose(std[:2], x[:, :2].std(0), rtol=1e-4)


@pytest.mark.slow
def test_validate_and_predict_run_on_every_shipped_config(tiny_benchmark, exports, tmp_path):
    """`nml validate` and `nml predict` on each shipped pre-training and tuning config, as written
    (with their loggers), on the embedded data: predict writes one CSV per test set with a row per
    sample, and prints where."""
    import csv

    from nml.configfiles import CONFIG_DIR

    configs = sorted(
        c.name
        for c in CONFIG_DIR.glob("*.yaml")
        if c.name.startswith(("pretrain_", "tune_")) and c.name != "pretrain_text.yaml"  # test_text.py
    )
    assert len(configs) == 7, configs
    runs = []
    for config in configs:
        backbone = ["--model.init_args.backbone", str(exports["clip"])] if config.startswith("tune_") else []
        for command, limit in (("validate", "limit_val_batches"), ("predict", "limit_predict_batches")):
            runs.append(
                [
                    command,
                    "--config",
                    config,
                    *backbone,
                    "--data.root",
                    str(tiny_benchmark),
                    "--data.loader.num_workers",
                    "0",
                    f"--trainer.{limit}",
                    "1",
                    "--trainer.logger.init_args.save_dir",
                    str(tmp_path / "runs" / config),
                ]
            )
    results = nml_in_one_process(runs, tmp_path)
    for config, (out, _) in zip(configs, results[1::2], strict=True):
        sets = json.loads(out)["predictions"]
        assert "glyphs_heldout" in sets, (config, sets)
        for name, written in sets.items():
            (file,) = written["files"]
            with open(file) as f:
                rows = list(csv.DictReader(f))
            assert written["rows"] == len(rows) > 0 and Path(file).name == f"{name}.csv"
            assert all(0 <= float(r["score"]) <= 1 and r["key"].startswith("glyphs_heldout-") for r in rows)


def test_a_study_tune_stage_builds_its_method_with_the_recipes_options(feature_cache, tmp_path):
    """``tuning.recipes`` reaches the model the stage trains (the shipped ``tune_nmtune.yaml`` through
    the CLI builder): with NMTune's COV weight set to 0 the COV term leaves its loss, where the
    default weight keeps it, and an MSE weight of 0.5 weighs the MSE term by 0.5."""
    import yaml

    from nml.study.stages import StageContext, TuneParams, tune

    def run(name: str, options: dict) -> dict:
        directory = tmp_path / "stages" / "tune" / name
        directory.mkdir(parents=True)
        params = TuneParams("nmtune", 0, 1, 16, 0.0, "tune_nmtune.yaml", "", 1, options)
        return tune(params, [{"cache": str(feature_cache)}], StageContext(directory, tmp_path, ""))["train"]

    ablated = run("ablated", {"loss": {"cov_weight": 0.0, "mse_weight": 0.5, "reference_dim": None}})
    default = run("default", {})
    assert "train/w_cov_epoch" not in ablated and default["train/w_cov_epoch"] > 0  # a 0 weight: no term
    assert ablated["train/w_mse_epoch"] == pytest.approx(0.5 * ablated["train/mse_epoch"], rel=1e-5)
    assert default["train/w_mse_epoch"] > 0
    hparams = yaml.safe_load((tmp_path / "tensorboard" / "tune" / "ablated" / "hparams.yaml").read_text())
    assert hparams["method"] == "nmtune" and hparams["backbone"] is None  # logged into the study's run

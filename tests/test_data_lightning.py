"""The DataModules under a real Lightning Trainer: 2-process gloo DDP and mid-epoch resume."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer, write_shards
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from nml.callbacks.predictions import PredictionWriter
from nml.data.modules import ClassificationShards
from nml.noise.config import NoiseConfig
from nml.shards.manifest import EvalSet

pytestmark = pytest.mark.slow  # end-to-end runs, subprocesses and DDP

UNEVEN = [7, 13, 3, 20, 9, 11, 5, 8]  # 76 training samples in 8 uneven shards


class Recorder(LightningModule):
    """Records what each rank sees; checks eval counts with one all_gather at epoch end."""

    def __init__(self, out_dir: str | None = None):
        super().__init__()
        self.layer = torch.nn.Linear(3 * 8 * 8, 5)
        self.out_dir = out_dir
        self.train_batches: list[dict] = []
        self.val_valid_keys: list[str] = []
        self.val_batches = 0
        self.val_total = -1

    def training_step(self, batch, batch_idx):
        self.train_batches.append(
            {
                "epoch": self.current_epoch,
                "batch_idx": batch_idx,
                "key": batch["key"],
                "target": batch["target"].tolist(),
                "is_noisy": batch["is_noisy"].tolist(),
            }
        )
        return F.cross_entropy(self.layer(batch["image"].flatten(1)), batch["target"])

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        valid = batch["valid"]
        self.val_batches += 1
        self.val_valid_keys += [k for k, v in zip(batch["key"], valid.tolist(), strict=True) if v]
        # what a metric does: count only valid rows, no collective here
        return F.cross_entropy(self.layer(batch["image"][valid].flatten(1)), batch["target"][valid])

    def on_validation_epoch_end(self):
        self.val_total = int(self.all_gather(torch.tensor(len(self.val_valid_keys))).sum())

    def on_fit_end(self):
        if self.out_dir:
            record = {
                "rank": self.global_rank,
                "train_batches": self.train_batches,
                "val_valid_keys": self.val_valid_keys,
                "val_batches": self.val_batches,
                "val_total": self.val_total,
            }
            Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(record))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _datamodule(tmp_path: Path, **kw) -> ClassificationShards:
    if not (tmp_path / "train").exists():
        write_shards(tmp_path / "train", UNEVEN)
        write_shards(tmp_path / "val", [9, 4], prefix="val")
    loader = {"batch_size": 4, "num_workers": 0, **kw}  # kw: loader options
    return ClassificationShards(
        train=f"{tmp_path}/train/train-{{0000..0007}}.tar",
        val=f"{tmp_path}/val/val-{{0000..0001}}.tar",
        test=[EvalSet("val_again", f"{tmp_path}/val/val-{{0000..0001}}.tar", "ood")],
        seed=4,
        noise=NoiseConfig("symmetric", 0.3),
        loader=loader,
        image={"image_size": 8, "train_transform": {"scale": [0.9, 1.0], "color_jitter": None}},
    )


def _trainer(**kw) -> Trainer:
    return quiet_trainer(**kw)


def test_ddp_ranks_read_disjoint_samples_equal_batches_one_pass_and_exact_eval(tmp_path):
    dm = _datamodule(tmp_path, num_workers=1, persistent_workers=False)
    out = tmp_path / "out"
    out.mkdir()
    trainer = _trainer(devices=2, strategy="ddp_spawn", max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(Recorder(str(out)), dm)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    # equal full batches on both ranks: ceil(76 / (4 * 2)) = 10
    assert [len(r["train_batches"]) for r in ranks] == [10, 10]
    assert all(len(b["key"]) == 4 for r in ranks for b in r["train_batches"])
    # one pass: every training sample once over the ranks, plus 80 - 76 = 4 padding repeats
    seen = [Counter(k for b in r["train_batches"] for k in b["key"]) for r in ranks]
    assert set(seen[0] + seen[1]) == {f"train-{i:06d}" for i in range(76)}
    assert sum((seen[0] + seen[1]).values()) == 80 and not set(seen[0]) & set(seen[1])
    # evaluation: every val sample counted exactly once over the ranks, same number of steps
    assert ranks[0]["val_batches"] == ranks[1]["val_batches"]
    assert sorted(ranks[0]["val_valid_keys"] + ranks[1]["val_valid_keys"]) == [
        f"val-{i:06d}" for i in range(13)
    ]
    assert ranks[0]["val_total"] == ranks[1]["val_total"] == 13


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_mid_epoch_checkpoint_continues_the_stream(tmp_path, workers):
    dm_kw = {"num_workers": workers}
    reference = Recorder()
    _trainer(max_epochs=2, limit_val_batches=0).fit(reference, _datamodule(tmp_path, **dm_kw))
    steps = len(reference.train_batches) // 2  # batches per epoch
    assert steps == 19  # ceil(76 / 4), for any number of workers
    epoch0 = [k for b in reference.train_batches[:steps] for k in b["key"]]
    epoch1 = [k for b in reference.train_batches[steps:] for k in b["key"]]
    assert epoch0 != epoch1  # epochs are reshuffled
    labels = {}
    for b in reference.train_batches:  # noise fixed across epochs
        for k, t in zip(b["key"], b["target"], strict=True):
            assert labels.setdefault(k, t) == t

    stop = 7  # mid-epoch 0, not a multiple of the workers
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=stop, save_top_k=-1)
    first = Recorder()
    _trainer(max_steps=stop, limit_val_batches=0, callbacks=[ckpt], enable_checkpointing=True).fit(
        first, _datamodule(tmp_path, **dm_kw)
    )
    path = next((tmp_path / "ckpt").glob("*.ckpt"))
    state = torch.load(path, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert state["epoch"] == 0 and state["batches_done"] == stop

    resumed = Recorder()
    _trainer(max_epochs=2, limit_val_batches=0).fit(resumed, _datamodule(tmp_path, **dm_kw), ckpt_path=path)
    strip = [{k: b[k] for k in ("epoch", "key", "target", "is_noisy")} for b in reference.train_batches]
    assert [
        {k: b[k] for k in ("epoch", "key", "target", "is_noisy")} for b in resumed.train_batches
    ] == strip[stop:]
    assert [b["batch_idx"] for b in resumed.train_batches][:2] == [stop, stop + 1]


def test_skipped_and_padding_samples_are_logged_every_epoch_under_lightning(tmp_path, caplog):
    """Under a Trainer the loader is not iterated to exhaustion: the module asks for the epoch's
    counts, logs them as data/skipped and data/padding and warns once per epoch."""
    from helpers import png_bytes

    from nml.models.supervised import SupervisedPretraining
    from nml.shards.writer import ShardWriter, write_index_files

    with ShardWriter(tmp_path / "d" / "train-%04d.tar", 10) as w:
        for i in range(18):
            w.write({"__key__": f"s{i:03d}", "png": b"not a png" if i == 5 else png_bytes(i), "cls": i % 3})
    write_index_files(
        tmp_path / "d", {"train": w.shards}, "d", {"num_classes": 3, "classes": ["a", "b", "c"]}
    )
    dm = ClassificationShards(
        train=f"{tmp_path}/d/train-{{0000..0001}}.tar",
        val=None,
        loader={"batch_size": 4, "num_workers": 0},
        image={"image_size": 8},
    )
    seen = []

    class Seen(Callback):  # callbacks' epoch-end hooks run before the module's: read them after it
        def record(self, trainer):
            seen.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("data/")})

        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch:
                self.record(trainer)

        def on_train_end(self, trainer, module):
            self.record(trainer)

    with caplog.at_level("WARNING"):
        _trainer(max_epochs=2, limit_val_batches=0, callbacks=[Seen()]).fit(
            SupervisedPretraining("test_resnet", num_classes=3), dm
        )
    # 18 samples, 5 batches of 4: 2 padding repeats + 1 repeat in place of the undecodable image
    assert seen == [{"data/skipped": 1.0, "data/padding": 3.0}] * 2
    assert caplog.text.count("skipped 1 unreadable sample(s)") == 2


class _ReportingWriter(PredictionWriter):
    """The predict callback, its rank-0 report kept in a file (the spawned ranks' objects stay there)."""

    def on_predict_end(self, trainer, pl_module) -> None:
        super().on_predict_end(trainer, pl_module)
        if trainer.is_global_zero:
            Path(self.out, "report.json").write_text(json.dumps(self.report))


def test_ddp_predict_reports_every_ranks_file_and_the_rows_over_all_ranks(tmp_path):
    """Each rank writes its own ``<set>.rank<k>.csv``; the report (what ``nml predict`` prints) lists
    both files and counts every sample once, not rank 0's share."""
    from nml.models.supervised import SupervisedPretraining

    dm = _datamodule(tmp_path)
    out = tmp_path / "predictions"
    trainer = _trainer(devices=2, strategy="ddp_spawn", callbacks=[_ReportingWriter(str(out))])
    trainer.predict(SupervisedPretraining("test_resnet", num_classes=5), dm, return_predictions=False)
    report = json.loads((out / "report.json").read_text())["predictions"]
    written = report["val_again"]
    assert sorted(Path(f).name for f in written["files"]) == ["val_again.rank0.csv", "val_again.rank1.csv"]
    keys = [r["key"] for f in written["files"] for r in csv.DictReader(open(f))]
    assert written["rows"] == len(keys) == 13 and len(set(keys)) == 13  # every val sample once

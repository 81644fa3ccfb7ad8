"""Backbone factory, optimisation helpers, the memorisation metric and the CLIP loss under DDP."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from helpers import TINY_CLIP, quiet_trainer

from nml.metrics.noisy import noise_split_counts
from nml.models.backbones import create_backbone
from nml.models.optim import param_groups, warmup_cosine


def test_memorisation_metric_on_a_hand_built_batch():
    clean = torch.tensor([0, 1, 2, 3, 4, 5])
    target = torch.tensor([0, 1, 2, 9, 8, 7])  # samples 3, 4, 5 were flipped
    noisy = torch.tensor([False, False, False, True, True, True])
    preds = torch.tensor(
        [0, 1, 5, 9, 4, 1]
    )  # 2 of 3 clean right; on flipped: 1 memorised, 1 clean, 1 neither
    c = {k: int(v) for k, v in noise_split_counts(preds, target, clean, noisy).items()}
    assert c == {"clean_correct": 2, "clean_total": 3, "noisy_correct": 1, "memorised": 1, "noisy_total": 3}


def test_timm_backbone_features_and_local_pretrained_weights(tmp_path):
    b = create_backbone({"library": "timm", "name": "test_resnet"}, num_classes=7)
    x = torch.randn(3, 3, 32, 32)
    assert b.features(x).shape == (3, b.feature_dim) and b.logits(x).shape == (3, 7)
    torch.testing.assert_close(b(x), b.features(x))  # calling a backbone means features()
    assert not any("fc" in k for k in b.encoder_state_dict())
    torch.save({"state_dict": b.model.state_dict()}, tmp_path / "w.pth")
    b2 = create_backbone({"library": "timm", "name": "test_resnet"}, pretrained=str(tmp_path / "w.pth"))
    from safetensors.torch import save_file

    save_file(b.model.state_dict(), tmp_path / "w.safetensors")  # as timm's weights are published
    b3 = create_backbone(
        {"library": "timm", "name": "test_resnet"}, pretrained=str(tmp_path / "w.safetensors")
    )
    b.eval(), b2.eval(), b3.eval()
    torch.testing.assert_close(b.features(x), b2.features(x))
    torch.testing.assert_close(b.features(x), b3.features(x))
    (tmp_path / "bad.safetensors").write_bytes(b"not tensors")
    with pytest.raises(ValueError, match="bad.safetensors' is not a readable .safetensors file"):
        create_backbone(
            {"library": "timm", "name": "test_resnet"}, pretrained=str(tmp_path / "bad.safetensors")
        )
    with pytest.raises(FileNotFoundError, match="never downloads"):
        create_backbone({"library": "timm", "name": "test_resnet"}, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        create_backbone({"library": "timm", "name": "no_such_net"})


def test_open_clip_custom_config_features_are_unnormalised_image_embeddings():
    b = create_backbone({"library": "open_clip", "name": "tiny", "model_cfg": TINY_CLIP})
    x = torch.randn(4, 3, 32, 32)
    f = b.features(x)
    assert f.shape == (4, 16) and b.feature_dim == 16
    torch.testing.assert_close(
        torch.nn.functional.normalize(f, dim=-1), b.model.encode_image(x, normalize=True)
    )
    with pytest.raises(ValueError, match="open_clip has no model"):
        create_backbone({"library": "open_clip", "name": "NoSuchCLIP"})
    with pytest.raises(ValueError, match="has no classifier head"):
        b.logits(x)
    with pytest.raises(ValueError, match=r"unknown keys \['pretrianed'\]"):
        create_backbone({"library": "open_clip", "name": "tiny", "pretrianed": "w.pt"})


def test_no_weight_decay_on_1d_params_and_warmup_cosine():
    b = create_backbone({"library": "open_clip", "name": "tiny", "model_cfg": TINY_CLIP})
    decay, no_decay = param_groups(b)
    assert all(p.ndim >= 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert any(p is b.model.logit_scale for p in no_decay["params"])
    vit = create_backbone({"library": "timm", "name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32}})
    decay, no_decay = param_groups(vit)
    exempt = {id(p) for p in no_decay["params"]}
    assert id(vit.model.pos_embed) in exempt and id(vit.model.cls_token) in exempt  # no_weight_decay()
    assert vit.model.pos_embed.ndim == 3 and all(p.ndim >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(vit.parameters()))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup=0.1, min_lr_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3) and all(
        a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)
    )


def _clip_loss_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from helpers import init_gloo

    from nml.models.contrastive import clip_loss

    init_gloo(rank, world, port)
    torch.manual_seed(0)
    img, txt = torch.randn(8, 6), torch.randn(8, 6)  # the same global batch on every rank
    img, txt = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)
    part = slice(rank * 4, rank * 4 + 4)
    results = {}
    for name, r in (("correct", rank), ("no_rank_offset", 0)):  # the classic bug: labels arange(B)
        li, lt = img[part].clone().requires_grad_(), txt[part].clone().requires_grad_()
        loss = clip_loss(r, world)(li, lt, torch.tensor(10.0))
        loss.backward()
        results[name] = (loss.detach(), li.grad, lt.grad)
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_clip_loss_under_two_process_gloo_equals_single_process(tmp_path):
    from helpers import spawn_gloo

    from nml.models.contrastive import clip_loss

    spawn_gloo(_clip_loss_worker, 2, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    torch.manual_seed(0)
    img, txt = torch.randn(8, 6), torch.randn(8, 6)
    img = torch.nn.functional.normalize(img, dim=-1).requires_grad_()
    txt = torch.nn.functional.normalize(txt, dim=-1).requires_grad_()
    loss = clip_loss(0, 1)(img, txt, torch.tensor(10.0))
    loss.backward()
    # DDP averages over ranks: mean of rank losses, and each rank's gradient / world
    torch.testing.assert_close((ranks[0]["correct"][0] + ranks[1]["correct"][0]) / 2, loss.detach())
    for r in (0, 1):
        torch.testing.assert_close(ranks[r]["correct"][1] / 2, img.grad[r * 4 : r * 4 + 4])
        torch.testing.assert_close(ranks[r]["correct"][2] / 2, txt.grad[r * 4 : r * 4 + 4])
    buggy = (ranks[0]["no_rank_offset"][0] + ranks[1]["no_rank_offset"][0]) / 2
    assert abs(float(buggy) - float(loss.detach())) > 0.1  # without the rank offset rank 1 learns wrong pairs


@pytest.mark.slow
def test_bench_gpu_step_runs_on_the_cpu_with_stand_in_models():
    import json

    from helpers import run_tool

    out = run_tool(
        "gpu_step",
        ["--cases", "resnet50,nmtune-d2048", "--warmup", "1", "--steps", "2", "--repeats", "1"],
    )
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [row["case"] for row in rows] == ["resnet50", "nmtune-d2048"]
    assert all(row["bare_samples_per_s"] > 0 and row["nml_samples_per_s"] > 0 for row in rows)
    # FLOPs of a step counted on the bare loop; no MFU on a CPU (no peak)
    assert all(row["gflops_per_step"] > 0 and row["bare_mfu"] is None for row in rows), rows


def test_a_broken_checkpoint_is_named_in_the_error(tmp_path):
    from nml.models.export import export_checkpoint

    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n" * 10)
    for name in ("empty.ckpt", "text.ckpt"):
        with pytest.raises(ValueError, match=rf"'{tmp_path / name}' is not a readable PyTorch checkpoint"):
            export_checkpoint(tmp_path / name, tmp_path / "out")
        with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint"):
            create_backbone({"library": "timm", "name": "test_resnet"}, pretrained=str(tmp_path / name))


class NoHostReads:
    """Fails on any read of a tensor's value by the host (what syncs a GPU): ``item``, ``bool``,
    ``int``, ``float``, ``tolist``, ``numpy``, ``cpu`` (function level), and the aten ops that copy a
    value out (``_local_scalar_dense``, ``equal``, ``is_nonzero``) at dispatch level. Also host data
    made into a tensor (``torch.tensor`` / ``as_tensor`` of numbers or lists): on a GPU, a copy the
    host waits for."""

    FUNCTIONS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")
    OPS = ("_local_scalar_dense", "equal", "is_nonzero")

    def __enter__(self):
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        functions = {getattr(torch.Tensor, name) for name in self.FUNCTIONS}
        ops = self.OPS
        self.reads: list[str] = []
        reads = self.reads

        class Functions(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in functions:
                    reads.append(func.__name__)
                elif (
                    func in (torch.tensor, torch.as_tensor) and args and not isinstance(args[0], torch.Tensor)
                ):
                    reads.append(f"{func.__name__} of host data")
                return func(*args, **(kwargs or {}))

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.__name__.split(".")[0] in ops:
                    reads.append(str(func))
                return func(*args, **(kwargs or {}))

        self._modes = [Functions(), Dispatch()]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)


def test_the_host_read_guard_catches_each_kind_of_read():
    x = torch.ones(3)
    reads = (
        lambda: x.sum().item(),
        lambda: bool(x.any()),
        lambda: int(x.sum()),
        lambda: x.tolist(),
        lambda: torch.as_tensor(3, device=x.device),
    )
    for read in reads:
        with NoHostReads() as guard:
            read()
        assert guard.reads, read
    with NoHostReads() as guard:
        (x * 2).sum()
    assert guard.reads == []


def _training_step_reads(module, datamodule) -> list[str]:

    reads: list[str] = []
    step = module.training_step

    def guarded(*args, **kwargs):
        with NoHostReads() as guard:
            out = step(*args, **kwargs)
        reads.extend(guard.reads)
        return out

    module.training_step = guarded
    quiet_trainer(
        max_steps=2,
        limit_val_batches=0,
    ).fit(module, datamodule)
    return reads


@pytest.mark.parametrize("kind", ["supervised", "clip", "linear", "nmtune"])
def test_training_steps_never_read_tensors_on_the_host(tiny_benchmark, tmp_path, kind):
    """What only a GPU measures (a step that waits for the device), guarded on the CPU: the step of
    every module keeps its counts and metrics on the device."""
    import numpy as np

    from nml.data.modules import ClassificationShards, ImageTextShards
    from nml.features.datamodule import CachedFeatures
    from nml.models.contrastive import ContrastivePretraining
    from nml.models.supervised import SupervisedPretraining
    from nml.models.tuning import DownstreamTuning
    from nml.noise.config import NoiseConfig

    common = {"root": str(tiny_benchmark), "loader": {"batch_size": 8, "num_workers": 0}}
    if kind == "supervised":
        module = SupervisedPretraining("test_resnet")
        dm = ClassificationShards(noise=NoiseConfig("symmetric", 0.3), **common)
    elif kind == "clip":
        module = ContrastivePretraining("tiny", TINY_CLIP)
        dm = ImageTextShards(noise=NoiseConfig("caption_swap", 0.3), context_length=16, **common)
    else:
        for split in ("train", "val"):
            (tmp_path / split).mkdir()
            rng = np.random.default_rng(0)
            np.save(tmp_path / split / "features.npy", rng.normal(size=(32, 12)).astype(np.float32))
            np.save(tmp_path / split / "labels.npy", rng.integers(0, 4, 32))
        module = DownstreamTuning(kind)
        dm = CachedFeatures(train=str(tmp_path / "train"), val=str(tmp_path / "val"), batch_size=8)
    assert _training_step_reads(module, dm) == []


def test_pretrained_weights_of_another_architecture_are_refused_unless_partial(tmp_path, caplog):
    src = create_backbone({"library": "timm", "name": "test_resnet"}, num_classes=7)
    torch.save(
        {"state_dict": {f"backbone.model.{k}": v for k, v in src.model.state_dict().items()}},
        tmp_path / "r.ckpt",
    )
    same = create_backbone(
        {"library": "timm", "name": "test_resnet"}, num_classes=3, pretrained=tmp_path / "r.ckpt"
    )
    x = torch.randn(2, 3, 32, 32)
    src.eval(), same.eval()  # an nml checkpoint's prefix is stripped; the new 3-class head is not an error
    torch.testing.assert_close(same.features(x), src.features(x))
    other = {"library": "timm", "name": "test_efficientnet"}
    with pytest.raises(
        ValueError, match=r"r.ckpt does not fit the model \(\d+ missing: .*unexpected.*partial: true"
    ):
        create_backbone(other, pretrained=tmp_path / "r.ckpt")
    wider = {"library": "timm", "name": "test_resnet", "kwargs": {"stem_width": 32}}
    with pytest.raises(ValueError, match=r"shape-mismatched: conv1\.0\.weight"):
        create_backbone(wider, pretrained=tmp_path / "r.ckpt")
    with caplog.at_level("WARNING"):
        create_backbone({**wider, "partial": True}, pretrained=tmp_path / "r.ckpt")
    assert "skipped (" in caplog.text and "conv1.0.weight" in caplog.text


@pytest.mark.slow
def test_siglip_loss_trains_and_needs_a_logit_bias(tiny_benchmark):

    from nml.data.modules import ImageTextShards
    from nml.models.contrastive import ContrastivePretraining

    with pytest.raises(ValueError, match="loss=siglip needs a model with a logit_bias"):
        ContrastivePretraining("tiny", TINY_CLIP, loss="siglip")
    module = ContrastivePretraining("tiny", {**TINY_CLIP, "init_logit_bias": -10.0}, loss="siglip")
    losses = []
    step = module.training_step
    module.training_step = lambda *a: losses.append(step(*a)) or losses[-1]
    dm = ImageTextShards(
        root=str(tiny_benchmark), context_length=16, loader={"batch_size": 8, "num_workers": 0}
    )
    quiet_trainer(
        max_steps=3,
        limit_val_batches=0,
    ).fit(module, dm)
    assert len(losses) == 3 and all(torch.isfinite(v) for v in losses)
    assert float(module.clip.logit_bias) != -10.0  # the bias is trained with the sigmoid loss


# the smallest open_clip config of each family whose image tower is a timm model, with a tiny text
# tower (the families' own text towers need Hugging Face tokenizers, which are downloads)
TIMM_TOWER_FAMILIES = [
    "convnext_tiny",
    "EVA02-B-16",
    "MobileCLIP2-S0",
    "PE-Core-B-16",
    "swin_base_patch4_window7_224",
    "ViT-B-16-SigLIP",
    "vit_medium_patch16_gap_256",
    "ViTamin-S",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_TOWER_FAMILIES)
def test_open_clip_models_with_a_timm_image_tower_train(tiny_benchmark, name):
    import open_clip

    from nml.data.modules import ImageTextShards
    from nml.models.contrastive import ContrastivePretraining

    cfg = open_clip.get_model_config(name)
    assert cfg["vision_cfg"].get("timm_model_name"), name
    cfg["text_cfg"] = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    size = cfg["vision_cfg"]["image_size"]
    loss = "siglip" if "init_logit_bias" in cfg else "clip"
    module = ContrastivePretraining(name, cfg, loss=loss)
    assert module.backbone.feature_dim == cfg["embed_dim"]
    dm = ImageTextShards(
        root=str(tiny_benchmark),
        context_length=16,
        loader={"batch_size": 2, "num_workers": 0},
        image={"image_size": size},
    )
    trainer = quiet_trainer(
        max_steps=1,
        limit_val_batches=0,
    )
    trainer.fit(module, dm)
    assert trainer.global_step == 1 and torch.isfinite(trainer.callback_metrics["train/loss_epoch"])


def test_zero_shot_head_is_batched_over_classes_and_built_once_per_class_set(tiny_benchmark, monkeypatch):
    import open_clip

    import nml.models.contrastive as contrastive
    from nml.data.modules import ImageTextShards
    from nml.models.zeroshot import zeroshot_classifier

    model = create_backbone({"library": "open_clip", "name": "tiny", "model_cfg": TINY_CLIP}).model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    prompts = [[f"a photo of a {c}", f"a {c}", f"the {c} itself"][: 1 + c % 3] for c in range(7)]
    with torch.no_grad():  # the obvious per-class loop
        ref = []
        for p in prompts:
            e = model.encode_text(tokenizer(p), normalize=True).mean(0)
            ref.append(e / e.norm())
    batched = zeroshot_classifier(model, tokenizer, prompts, torch.device("cpu"), batch_size=4)
    torch.testing.assert_close(batched, torch.stack(ref, dim=1), atol=1e-5, rtol=1e-5)

    calls = []
    monkeypatch.setattr(
        contrastive, "zeroshot_classifier", lambda *a, **k: calls.append(1) or zeroshot_classifier(*a, **k)
    )
    dm = ImageTextShards(
        root=str(tiny_benchmark), context_length=16, loader={"batch_size": 32, "num_workers": 0}
    )
    quiet_trainer(
        limit_test_batches=1,
    ).test(contrastive.ContrastivePretraining("tiny", TINY_CLIP), dm, verbose=False)
    assert len(dm.test_sets) == 13 and len(calls) == 1  # 13 test sets over the same 44 classes


@pytest.mark.parametrize("rule,expected", [("linear", 0.1 * 32 / 256), ("sqrt", 0.1 * (32 / 256) ** 0.5)])
def test_learning_rate_from_lr_base_and_the_global_batch(tiny_benchmark, rule, expected, caplog):
    """timm's rule: lr = lr_base x global batch / 256 (or its square root); global batch = 16 per
    rank x 1 rank x 2 accumulated. The optimizer's own lr is replaced before the schedule takes it
    as its base, logged, and kept in the checkpoint."""

    from nml.callbacks.lr_scaling import ScaleLearningRate
    from nml.data.modules import ClassificationShards
    from nml.models.supervised import SupervisedPretraining

    dm = ClassificationShards(root=str(tiny_benchmark), loader={"batch_size": 16, "num_workers": 0})
    module = SupervisedPretraining("test_resnet", optimizer=partial(torch.optim.SGD, lr=5.0))
    trainer = quiet_trainer(
        max_steps=2,
        limit_val_batches=0,
        accumulate_grad_batches=2,
        callbacks=[ScaleLearningRate(0.1, 256, rule)],
    )
    with caplog.at_level("INFO"):
        trainer.fit(module, dm)
    assert [g["initial_lr"] for g in trainer.optimizers[0].param_groups] == pytest.approx(
        [expected, expected]
    )
    assert module.provenance["lr"]["global_batch"] == 32 and module.provenance["lr"]["lr"] == pytest.approx(
        expected
    )
    assert "global batch 32 = 16 per rank x 1 rank(s) x 2 accumulation" in caplog.text
    with pytest.raises(ValueError, match="expected 'linear' or 'sqrt'"):
        ScaleLearningRate(0.1, 256, "cubic")


def test_throughput_counts_the_steps_flops_logs_rates_and_lr_and_syncs_only_on_log_steps(
    tiny_benchmark, tmp_path
):
    """TrainingThroughput (which nml fit adds, with LearningRateMonitor): the FLOPs of a batch are
    the model's forward + backward on it, counted independently here on a meta-device copy with
    Lightning's measure_flops; samples/s and FLOP/s appear once the window is full; the clock (a
    device sync on a GPU) is read once at the start and once per log step, never on other steps.
    The module's own metrics (log_training) are logged on the same steps, and the epoch's value is
    the mean over all of its steps."""
    import csv

    from lightning.fabric.utilities.throughput import measure_flops
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    from nml.callbacks.throughput import TrainingThroughput
    from nml.data.modules import ClassificationShards
    from nml.models.supervised import SupervisedPretraining

    module = SupervisedPretraining("test_resnet")
    dm = ClassificationShards(root=str(tiny_benchmark), loader={"batch_size": 8, "num_workers": 0})
    throughput = TrainingThroughput(window_size=2)
    clock_reads = []
    now = throughput._now
    throughput._now = lambda trainer: clock_reads.append(trainer.global_step) or now(trainer)
    shapes, losses, step = [], [], module.training_step

    def recorded(batch, *args):
        shapes.append(tuple(batch["image"].shape))
        losses.append(float(loss := step(batch, *args)))
        return loss

    module.training_step = recorded
    quiet_trainer(
        max_steps=6,
        log_every_n_steps=2,
        limit_val_batches=0,
        logger=CSVLogger(tmp_path),
        callbacks=[throughput, LearningRateMonitor(logging_interval="step")],
    ).fit(module, dm)

    with torch.device("meta"):
        meta = create_backbone({"library": "timm", "name": "test_resnet"}, num_classes=dm.num_classes).model
    assert set(shapes) == {(8, 3, 32, 32)}
    x = torch.empty(shapes[0], device="meta")
    assert throughput.flops_per_batch == measure_flops(meta, lambda: meta(x), torch.Tensor.sum) > 0
    assert clock_reads == [0, 2, 4, 6]  # the first step's start, then the log steps only

    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = {k: [(int(r["step"]), float(r[k])) for r in rows if r.get(k)] for k in rows[0]}
    assert [v for _, v in logged["train/loss_step"]] == pytest.approx(losses[1::2])  # steps 1, 3, 5 only
    assert logged["train/loss_epoch"][-1][1] == pytest.approx(sum(losses) / 6)  # all 6 (8 samples each)
    # on the batches where Lightning logs the loss, with the same step numbers
    assert [s for s, _ in logged["train/samples"]] == [s for s, _ in logged["train/loss_step"]] == [1, 3, 5]
    assert logged["train/samples"][-1][1] == 48
    assert [s for s, _ in logged["train/device/samples_per_sec"]] == [3, 5]  # a window of 2 updates
    rate = logged["train/device/samples_per_sec"][-1][1]
    assert logged["train/device/flops_per_sec"][-1][1] == pytest.approx(rate / 8 * throughput.flops_per_batch)
    assert "train/device/mfu" not in logged  # no peak FLOPs for a CPU
    lr = dict(logged["train/lr/decay"])
    assert lr.keys() == {1, 3, 5} and lr == dict(logged["train/lr/no_decay"]) and min(lr.values()) > 0


def test_a_backbone_family_is_one_registry_entry():
    """A new family is one adapter class: create_backbone, features, logits, preprocessing, export
    and the transform family all come from it, with no branch elsewhere."""
    from torch import nn

    from nml.models.backbones import BackboneFamily, get_family, list_families, register_family
    from nml.models.backbones.family import _FAMILIES

    assert {"timm", "open_clip"} <= set(list_families())
    with pytest.raises(
        ValueError, match=r"backbone library: expected one of \[.*'open_clip'.*'timm'\], got 'nope'"
    ):
        create_backbone({"library": "nope", "name": "x"})

    @register_family
    class TinyFamily(BackboneFamily):
        name, transforms, features_description = "tiny_test", "timm", "flattened pixels"

        def instantiate(self, config):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, config.kwargs.get("dim", 5)))

        def feature_dim(self, model, config):
            return model[1].out_features

        def features(self, model, images):
            return model(images)

        def preprocessing(self, model):
            return 8, [0.5] * 3, [0.25] * 3

    try:
        backbone = create_backbone({"library": "tiny_test", "name": "flat", "kwargs": {"dim": 7}})
        assert get_family("tiny_test") is backbone.family and backbone.feature_dim == 7
        assert backbone.features(torch.zeros(2, 3, 8, 8)).shape == (2, 7)
        assert backbone.preprocessing() == (8, [0.5] * 3, [0.25] * 3) and backbone.crop_pct() is None
        assert backbone.transforms == "timm"
        with pytest.raises(ValueError, match="has no classifier head"):
            backbone.logits(torch.zeros(1, 3, 8, 8))
        with pytest.raises(ValueError, match="already registered"):
            register_family(TinyFamily)
    finally:
        _FAMILIES.pop("tiny_test", None)


@pytest.mark.slow
def test_clip_on_shards_without_class_names_trains_and_keeps_its_last_checkpoint(tmp_path, caplog):
    """Zero-shot validation needs class names; without them a checkpoint monitoring
    val/zeroshot_top1 used to stop the run at its first validation (no checkpoint at all)."""
    from helpers import write_shards
    from lightning.pytorch.callbacks import ModelCheckpoint

    from nml.data.modules import ImageTextShards
    from nml.models.contrastive import ContrastivePretraining

    spec = write_shards(tmp_path / "d", [8, 8])
    info = json.loads((tmp_path / "d" / "_info.json").read_text())
    (tmp_path / "d" / "_info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "classes"}))
    dm = ImageTextShards(train=spec, val=spec, context_length=16, loader={"batch_size": 4, "num_workers": 0})
    best = ModelCheckpoint(tmp_path / "ckpt", monitor="val/zeroshot_top1", mode="max", filename="best")
    last = ModelCheckpoint(tmp_path / "ckpt", filename="last")
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        enable_checkpointing=True,
        callbacks=[best, last],
    )
    with caplog.at_level("WARNING"):
        trainer.fit(ContrastivePretraining("tiny", TINY_CLIP), dm)
    assert trainer.global_step == 2 and (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert (
        best not in trainer.callbacks
        and "monitoring val/zeroshot_top1 (filename 'best') is removed" in caplog.text
    )


def test_the_clip_log_scale_is_clamped_after_every_step_so_the_logged_scale_stays_in_1_to_100():
    from nml.models.contrastive import MAX_LOGIT_SCALE, ContrastivePretraining

    module = ContrastivePretraining("tiny", TINY_CLIP)
    for start, end in ((10.0, MAX_LOGIT_SCALE), (-3.0, 0.0), (2.0, 2.0)):
        module.clip.logit_scale.data.fill_(start)
        module.on_train_batch_end(None, None, 0)
        assert float(module.clip.logit_scale) == pytest.approx(end)
        assert 1.0 <= float(module.clip.logit_scale.exp()) <= 100.0 + 1e-4

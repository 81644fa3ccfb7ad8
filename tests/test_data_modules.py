"""DataModules on the embedded benchmark, from Python and YAML, and `nml data audit` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import REPO, nml_in_one_process, quiet_trainer

from nml.data.modules import ClassificationShards, ImageTextShards
from nml.data.options import LoaderOptions, StreamOptions
from nml.noise.config import NoiseConfig
from nml.shards.manifest import EvalSet


def test_defaults_point_at_the_embedded_benchmark(tiny_benchmark, monkeypatch):
    monkeypatch.setenv("NML_DATA", str(tiny_benchmark))
    dm = ClassificationShards(loader={"num_workers": 0, "batch_size": 16})
    assert dm.task == "pretraining" and dm.num_classes == 44
    names = {s.name: s.group for s in dm.test_sets}
    assert names["glyphs_heldout"] == "id" and names["glyphs_blur_3"] == "ood" and len(names) == 13
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["target"].max() < 44
    test = dm.test_dataloader()
    assert len(test) == 13 and sum(int(b["valid"].sum()) for b in test[0]) == 44 * 3

    greek = ClassificationShards(task="greek", loader={"num_workers": 0})
    assert greek.num_classes == 23 and [s.name for s in greek.test_sets] == ["greek"] + [
        f"greek_{k}_2" for k in ("blur", "noise", "contrast", "elastic")
    ]
    with pytest.raises(ValueError, match="task 'nope' is not in the benchmark manifest"):
        ClassificationShards(task="nope")


def test_missing_benchmark_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nml data embedded --out .*nowhere"):
        ClassificationShards(root=str(tmp_path / "nowhere"))


def test_image_text_batches_tokenised_with_caption_noise(tiny_benchmark):
    dm = ImageTextShards(
        root=str(tiny_benchmark),
        noise=NoiseConfig("caption_swap", 0.5),
        context_length=24,
        loader={"num_workers": 0, "batch_size": 32},
    )
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["text"].shape == (32, 24) and b["text"].dtype.is_signed
    assert 0 < int(b["is_noisy"].sum()) < 32
    with pytest.raises(
        ValueError,
        match=r"noise.kind='symmetric' does not corrupt captions; expected none or one of \('caption_swap',\)",
    ):
        ImageTextShards(root=str(tiny_benchmark), noise=NoiseConfig("symmetric", 0.2))
    with pytest.raises(ValueError, match="noise.kind='caption_swap' does not corrupt labels"):
        ClassificationShards(root=str(tiny_benchmark), noise=NoiseConfig("caption_swap", 0.2))


def test_yaml_configures_noise_and_named_test_sets(tiny_benchmark, tmp_path):
    from jsonargparse import ArgumentParser

    cfg = tmp_path / "data.yaml"
    cfg.write_text(
        f"""
data:
  root: {tiny_benchmark}
  noise: {{kind: pair, rate: 0.3}}
  loader: {{batch_size: 8, num_workers: 0}}
  image: {{image_size: 16}}
  test:
    - name: mnist
      shards: "mnist/test-{{000000..000003}}.tar"
      group: ood
      num_classes: 10
"""
    )
    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_class_arguments(ClassificationShards, "data")
    ns = parser.parse_args(
        ["--config", str(cfg), "--data.noise.rate", "0.4", "--data.loader.batch_size", "4"]
    )
    dm = parser.instantiate_classes(ns).data
    assert dm.noise == NoiseConfig("pair", 0.4)
    assert dm.loader == LoaderOptions(batch_size=4, num_workers=0) and dm.batch_size == 4
    assert dm.inputs.options.image_size == 16 and dm.inputs.input_size == 16 and dm.stream == StreamOptions()
    # relative to data.root, as every shard spec of a data module whose root is set
    assert dm.test_sets == [
        EvalSet("mnist", f"{tiny_benchmark}/mnist/test-{{000000..000003}}.tar", "ood", 10)
    ]


@pytest.mark.slow
def test_audit_cli_same_json_for_any_workers(tiny_benchmark):
    spec = json.loads((tiny_benchmark / "manifest.json").read_text())["pretraining"]["train"]
    common = [
        "--shards",
        str(tiny_benchmark / spec),
        "--noise.kind",
        "symmetric",
        "--noise.rate",
        "0.2",
    ]
    shards = ["--shards", str(tiny_benchmark / spec)]
    runs = [
        ["data", "audit", *common, "--num_workers", "0"],
        ["data", "audit", *common, "--num_workers", "2"],
        ["data", "audit", *shards, "--noise.kind", "caption_swap", "--noise.rate", "0.3"],
        ["data", "audit", *shards, "--noise.kind", "symmetric", "--noise.rate", "1.2"],
    ]
    (out0, err0), (out2, _), (swap, _), (_, bad) = nml_in_one_process(runs, REPO, expect=[0, 0, 0, 1])
    assert out0 == out2
    report = json.loads(out0)
    assert report["samples"] == 44 * 6 and report["num_classes"] == 44
    assert abs(report["realised_rate"] - 0.2) < 0.01 and report["noisy_to_true_class"] == 0
    t = np.array(report["transition"])
    assert t.shape == (44, 44) and np.allclose(t.sum(1), 1, atol=1e-3)
    assert "realised noise rate" in err0

    report = json.loads(swap)
    assert abs(report["realised_rate"] - 0.3) < 0.01 and report["self_swaps"] == 0
    assert report["mismatch_rate"] > 0.25
    assert "noise.rate must be in [0, 1)" in bad


def test_zero_shot_prompts_come_from_the_data(tiny_benchmark, tmp_path):
    """The benchmark's _info.json carries its templates and per-class fields (models know no charset);
    data with class names only gets CLIP's plainest template."""
    from helpers import write_shards

    dm = ImageTextShards(root=str(tiny_benchmark), loader={"num_workers": 0})
    prompts = dm.prompts_of(None)
    assert len(prompts) == len(dm.classes) == 44 and dm.classes[0] == "A"
    o = dm.classes.index("O/o")  # a merged class: one prompt per member and template
    assert prompts[o][:2] == ["the uppercase O", "the lowercase o"]
    assert "an image of the character 'O'" in prompts[o] and len(prompts[o]) == 4 * 2
    assert dm.prompts_of(None, ["a {name}"])[o] == ["a uppercase O", "a lowercase o"]
    with pytest.raises(ValueError, match=r"use a field 'ch' that class 0 does not have"):
        plain = write_shards(tmp_path / "plain", [6], num_classes=3)
        ClassificationShards(train=plain, val=plain, loader={"num_workers": 0}).prompts_of(None, ["the {ch}"])
    plain_dm = ClassificationShards(train=plain, val=plain, loader={"num_workers": 0})
    assert plain_dm.prompts_of(None) == [["a photo of a c0."], ["a photo of a c1."], ["a photo of a c2."]]


def test_your_shards_win_over_a_configs_task_and_info_num_classes_is_read(tmp_path, monkeypatch, caplog):
    """A shipped pre-training config says task: pretraining; --data.train/--data.val on your own
    6-class shards (relative to the working directory) must train on them, with no benchmark around."""
    import json as _json

    from helpers import write_shards

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NML_DATA", str(tmp_path / "no_benchmark_here"))  # data.root unset
    write_shards(tmp_path / "shards" / "mine", [5, 5], num_classes=6)
    write_shards(tmp_path / "shards" / "mine", [4], num_classes=6, prefix="val")
    with caplog.at_level("INFO"):
        dm = ClassificationShards(
            task="pretraining",
            train="shards/mine/train-{0000..0001}.tar",
            val="shards/mine/val-0000.tar",
        )
    assert dm.num_classes == 6 and dm.task is None and dm.test_sets == []
    assert "data.task 'pretraining' is not used" in caplog.text
    info = tmp_path / "shards" / "mine" / "_info.json"  # timm's own _info.json: a count, no names
    meta = _json.loads(info.read_text())
    del meta["classes"]
    meta["num_classes"] = 1000
    info.write_text(_json.dumps(meta))
    dm = ClassificationShards(train="shards/mine/train-{0000..0001}.tar", val="shards/mine/val-0000.tar")
    assert dm.num_classes == 1000 and dm.classes is None


def test_pretraining_on_your_shards_takes_the_models_input_size(tmp_path, tiny_benchmark):
    import timm
    from helpers import write_shards

    from nml.models.supervised import SupervisedPretraining

    spec = write_shards(tmp_path / "mine", [6, 6], num_classes=3)
    expected = timm.create_model("test_resnet").pretrained_cfg["input_size"][-1]
    runs = {
        "yours": ClassificationShards(train=spec, loader={"batch_size": 4, "num_workers": 0}),
        "benchmark": ClassificationShards(
            root=str(tiny_benchmark), loader={"batch_size": 4, "num_workers": 0}
        ),
    }
    for name, dm in runs.items():
        seen = []
        module = SupervisedPretraining("test_resnet")
        step = module.training_step
        module.training_step = lambda batch, batch_idx, seen=seen, step=step: (
            seen.append(batch["image"].shape[-1]) or step(batch, batch_idx)
        )
        quiet_trainer(
            max_steps=1,
            limit_val_batches=0,
        ).fit(module, dm)
        assert seen == ([expected] if name == "yours" else [32]), name  # the benchmark fixes 32 px
        # transforms: timm's own defaults and the model's eval crop on your shards; glyph-safe on the benchmark
        train_ops, eval_ops = (str(dm.inputs.transform(a)) for a in (True, False))
        crop = timm.create_model("test_resnet").pretrained_cfg["crop_pct"]
        if name == "yours":
            assert "RandomHorizontalFlip(p=0.5)" in train_ops and dm.inputs.eval_crop_pct == crop
            assert (
                f"Resize(size={int(expected / crop)}" in eval_ops
                and f"CenterCrop(size=({expected}, {expected}))" in eval_ops
            )
            assert module.provenance["data"]["crop_pct"] == crop  # exported with the model
        else:
            assert "HorizontalFlip" not in train_ops and dm.inputs.eval_crop_pct == 1.0


def test_audit_of_1000_classes_summarises_on_stdout_and_writes_the_matrix(tmp_path):
    from helpers import write_shards

    from nml.data.audit import audit_shards

    spec = write_shards(tmp_path / "d", [400, 400], num_classes=1000, captions=False)
    report = audit_shards(spec, NoiseConfig("symmetric", 0.4), num_classes=1000, out_dir=tmp_path / "audit")
    assert "transition" not in report and len(json.dumps(report)) < 4000  # not a 1000 x 1000 dump
    assert report["per_class"]["noisy_rate"]["max"] <= 1 and len(report["top_confusions"]) == 10
    matrix = np.load(tmp_path / "audit" / "transition.npy")
    assert matrix.shape == (1000, 1000) and report["transition_file"].endswith("transition.npy")
    top = report["top_confusions"][0]
    assert matrix[top["clean"], top["noisy"]] == pytest.approx(top["rate"], abs=1e-4)


def test_imagenet_class_names_for_sets_without_names_else_a_warning(tmp_path, caplog):
    """timm's ImageNet _info.json has a class count and no names: zero-shot needs them."""
    from helpers import TINY_CLIP, write_shards

    from nml.models.contrastive import ContrastivePretraining

    train = write_shards(tmp_path / "pairs", [8, 8], sizes_json=False)  # img2dataset-like: no names
    val = write_shards(tmp_path / "val", [6], num_classes=1000, prefix="val")
    info = tmp_path / "val" / "_info.json"
    meta = json.loads(info.read_text())
    del meta["classes"]
    info.write_text(json.dumps({**meta, "num_classes": 1000}))
    dm = ImageTextShards(train=train, val=val, class_names="imagenet", context_length=16)
    assert dm.num_classes == 1000 and dm.classes[:2] == ["tench", "goldfish"]
    prompts = dm.prompts_of(dm.val_sets[0])
    assert len(prompts) == 1000 and len(prompts[0]) == 80 and prompts[0][0] == "a bad photo of a tench."
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"thing {i}" for i in range(1000)))
    assert ImageTextShards(train=train, val=val, class_names=str(names)).classes[999] == "thing 999"
    with caplog.at_level("WARNING"):
        quiet_trainer(
            max_steps=1,
            limit_val_batches=1,
        ).fit(
            ContrastivePretraining("tiny", TINY_CLIP),
            ImageTextShards(
                train=train, val=val, context_length=16, loader={"batch_size": 4, "num_workers": 0}
            ),
        )
    assert (
        caplog.text.count("zero-shot validation is off") == 1 and "data.class_names: imagenet" in caplog.text
    )


def test_a_test_set_with_another_label_space_is_skipped_not_a_crash(tmp_path, caplog):
    from helpers import write_shards

    from nml.models.supervised import SupervisedPretraining

    small = write_shards(tmp_path / "small", [6, 6], num_classes=10)
    big = write_shards(tmp_path / "big", [8], num_classes=1000, prefix="big")
    info = tmp_path / "big" / "_info.json"  # timm style: a count, no names
    meta = json.loads(info.read_text())
    del meta["classes"]
    info.write_text(json.dumps({**meta, "num_classes": 1000}))
    dm = ClassificationShards(
        train=small,
        val=small,
        test=[EvalSet("big", big, "ood"), EvalSet("small", small, "id")],
        loader={"batch_size": 4, "num_workers": 0},
        image={"image_size": 16},
    )
    assert dm.num_classes == 10 and dm.num_classes_of(dm.test_sets[0]) == 1000
    trainer = quiet_trainer(
        max_steps=1,
    )
    module = SupervisedPretraining("test_resnet", num_classes=10)
    trainer.fit(module, dm)
    with caplog.at_level("WARNING"):
        metrics = trainer.test(module, dm, verbose=False)[0]
    assert "test set 'big' skipped" in caplog.text
    assert "test/id/small/top1" in metrics and not any("big" in k for k in metrics)


def test_a_test_set_that_fails_midway_keeps_the_finished_sets_metrics(tmp_path, monkeypatch):
    """`nml test` over [small, bad]: `bad` has a label outside its declared classes and stops the run;
    metrics.json still holds `small` (its top-1 and N), and says which set failed and why."""
    from helpers import write_shards

    from nml.callbacks.metrics_report import TestReport
    from nml.models.supervised import SupervisedPretraining
    from nml.shards.members import ShardFormatError

    small = write_shards(tmp_path / "small", [6, 6], num_classes=10)
    bad = write_shards(tmp_path / "bad", [12], num_classes=12, prefix="bad")  # labels 0-11 ...
    info = tmp_path / "bad" / "_info.json"
    info.write_text(
        json.dumps(
            {**json.loads(info.read_text()), "num_classes": 10, "classes": [str(c) for c in range(10)]}
        )
    )
    dm = ClassificationShards(
        train=small,
        val=small,
        test=[EvalSet("small", small, "id"), EvalSet("bad", bad, "ood")],
        loader={"batch_size": 4, "num_workers": 0},
        image={"image_size": 16},
    )
    monkeypatch.chdir(tmp_path)  # no logger, no checkpoint: metrics.json goes to the working directory
    trainer = quiet_trainer(
        max_steps=1,
        callbacks=[TestReport()],
    )
    module = SupervisedPretraining("test_resnet", num_classes=10)
    trainer.fit(module, dm)
    with pytest.raises(ShardFormatError, match=r"\.cls = 1[01] is outside \[0, 10\)"):
        trainer.test(module, dm, verbose=False)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert list(report["metrics"]) == ["test/id/small/top1"] and report["samples"] == {"small": 12}
    assert report["incomplete"]["failed_set"] == "bad" and "outside [0, 10)" in report["incomplete"]["error"]

    # a complete record (the good set alone) replaces the incomplete one ...
    dm.test_sets = [dm.test_sets[0]]
    trainer.test(module, dm, verbose=False)
    complete = (tmp_path / "metrics.json").read_text()
    assert "incomplete" not in json.loads(complete)
    # ... and is never replaced by an incomplete one: that goes beside it
    dm.test_sets = [EvalSet("small", small, "id"), EvalSet("bad", bad, "ood")]
    with pytest.raises(ShardFormatError):
        trainer.test(module, dm, verbose=False)
    assert (tmp_path / "metrics.json").read_text() == complete
    aside = json.loads((tmp_path / "metrics.incomplete.json").read_text())
    assert aside["incomplete"]["failed_set"] == "bad"
    # a run that scored nothing (it fails on its first set) writes nothing
    (tmp_path / "metrics.incomplete.json").unlink()
    dm.test_sets = [EvalSet("bad", bad, "ood")]
    with pytest.raises(ShardFormatError):
        trainer.test(module, dm, verbose=False)
    assert (tmp_path / "metrics.json").read_text() == complete
    assert not (tmp_path / "metrics.incomplete.json").exists()


def test_cpu_threads_leave_the_loader_workers_their_cores(monkeypatch):
    import torch

    from nml.data import loading

    monkeypatch.setattr(loading, "usable_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert loading.share_cores_with_workers(0, "cpu") is None and torch.get_num_threads() == 4
        assert loading.share_cores_with_workers(2, "cuda") is None and torch.get_num_threads() == 4
        assert loading.share_cores_with_workers(3, "cpu") == 1 and torch.get_num_threads() == 1
        assert (
            loading.share_cores_with_workers(1, "cpu") is None and torch.get_num_threads() == 1
        )  # never raised
    finally:
        torch.set_num_threads(before)


def test_the_threads_lent_to_the_workers_come_back_after_fit_and_extraction(tiny_benchmark, monkeypatch):
    from types import SimpleNamespace

    import torch

    from nml.data import loading
    from nml.features.extract import extract_features
    from nml.models.backbones import create_backbone

    monkeypatch.setattr(loading, "usable_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        dm = ClassificationShards(root=str(tiny_benchmark), task="mnist", loader={"num_workers": 3})
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
        dm.train_dataloader()
        assert torch.get_num_threads() == 1  # one core for the model, three for the workers
        dm.teardown("fit")
        assert torch.get_num_threads() == 4
        seen = []
        monkeypatch.setattr(
            "nml.features.extract._extract_splits", lambda *a, **k: seen.append(torch.get_num_threads()) or {}
        )
        extract_features(create_backbone({"library": "timm", "name": "test_resnet"}), dm, "unused")
        assert seen == [1] and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_each_downstream_head_has_id_and_ood_test_sets_and_novel_classes(tiny_benchmark):
    from nml.shards.manifest import load_manifest, task_sets

    manifest = load_manifest(tiny_benchmark)
    pretraining = set(task_sets(manifest, "pretraining", tiny_benchmark)["classes"])
    heads = {
        "digits_print": {"digits_print": "id", "print_to_mnist": "ood", "print_to_handwriting_font": "ood"},
        "greek": {"greek": "id", **{f"greek_{k}_2": "ood" for k in ("blur", "noise", "contrast", "elastic")}},
        "symbols": {
            "symbols": "id",
            **{f"symbols_{k}_2": "ood" for k in ("blur", "noise", "contrast", "elastic")},
        },
    }
    for task, expected in heads.items():
        sets = task_sets(manifest, task, tiny_benchmark)
        assert {s.name: s.group for s in sets["test"]} == expected
        assert not pretraining & set(sets["classes"])  # a label space pre-training never saw


def test_names_that_become_file_names_cannot_climb_out_of_their_directory(tiny_benchmark, tmp_path):
    """A test set named ``../../x`` would make ``nml predict`` and ``nml features`` write outside
    their run; names are checked where they come from: a config's test sets, a manifest's tasks."""
    from nml.shards.manifest import load_manifest

    for bad in ("../../../../evil_pred", ".hidden", "a/b", "", "x\\y"):
        with pytest.raises(ValueError, match="test set name: .* is not a valid name"):
            EvalSet(bad, "shards-{000000..000001}.tar")
    with pytest.raises(ValueError, match="is not a valid name"):
        ClassificationShards(
            root=str(tiny_benchmark), test=[{"name": "../../evil", "shards": "x-{000000..000001}.tar"}]
        )
    manifest = json.loads((tiny_benchmark / "manifest.json").read_text())
    first = manifest["tasks"][0]
    first["test"] = {"../../evil_feat": next(iter(first["test"].values()))}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"manifest.json: tasks\[0\].test: '../../evil_feat' is not a valid"):
        load_manifest(tmp_path)
    assert EvalSet("greek_noise_2", "s.tar").name == "greek_noise_2"  # the shipped names pass


def test_modalities_are_compared_by_name_only_in_their_table():
    """No ``modality == "text"`` outside nml/data/modalities.py: every choice between modalities reads
    the table, so a new modality touches one file (plus its inputs and data module)."""
    import ast

    from nml.data.modalities import MODALITIES

    def names_a_modality(node: ast.AST) -> bool:
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
        return "modality" in name

    found = []
    for path in (REPO / "nml").rglob("*.py"):
        if path.name == "modalities.py" and path.parent.name == "data":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                names_a_modality(s) for s in (node.left, *node.comparators)
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if (
                isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get"
            ):  # manifest.get("modality")
                if any(isinstance(a, ast.Constant) and a.value == "modality" for a in node.args):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} (reads a manifest's modality)")
    assert not found, found
    assert set(MODALITIES) >= {"image", "text"}


def test_the_text_module_keeps_no_image_members_and_the_data_module_stays_small():
    """What differs per modality lives in its inputs object (nml/data/inputs.py): the text module
    overrides nothing of the image preprocessing and takes no ``image`` group."""
    import inspect

    from nml.data.modules import ShardDataModule, TextClassificationShards

    own = {k for k in vars(TextClassificationShards) if not k.startswith("__")}
    assert own == {"modality"}, own  # its __init__ builds TextInputs; nothing is cancelled
    assert "image" not in inspect.signature(TextClassificationShards.__init__).parameters
    assert "image" not in inspect.signature(ShardDataModule.__init__).parameters
    lines, _ = inspect.getsourcelines(ShardDataModule)
    assert len(lines) <= 300, len(lines)


def test_a_registered_modality_is_listed_by_nml_data_and_chosen_by_its_manifest(
    tiny_benchmark, tmp_path, capsys
):
    """A modality is a table entry: registered, ``nml data modalities`` lists it, a benchmark whose
    manifest names it gets its data module, and a study builds its benchmark with its builder."""
    import shutil

    from nml.cli.main import main
    from nml.data.modalities import MODALITIES, Modality, register_modality
    from nml.data.modules import benchmark_data_module

    toy = Modality(
        name="toy",
        data_module="nml.data.modules:ClassificationShards",
        default_root=lambda: str(tmp_path / "toy"),
        tasks="nml.benchmark.plan:TASK_NAMES",
        builder="shutil:copytree",
        sizes=("tiny",),
        build_options=("dirs_exist_ok",),
        mixable=True,
        description="a toy modality registered by a test",
    )
    register_modality(toy)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_modality(toy)
        assert main(["data", "modalities"]) == 0
        listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["modalities"]}
        assert listed["toy"]["default_root"] == str(tmp_path / "toy") and listed["toy"]["sizes"] == ["tiny"]
        assert {"image", "text"} <= set(listed)
        with pytest.raises(ValueError, match="built tiny"):
            toy.build(str(tmp_path / "x"), seed=0, size="small")
        with pytest.raises(TypeError):  # the builder takes root, seed and size: copytree takes no seed
            toy.build(str(tiny_benchmark), seed=0, size="tiny", dirs_exist_ok=True, fonts="auto")
        root = tmp_path / "bench"
        shutil.copytree(tiny_benchmark, root)
        manifest = json.loads((root / "manifest.json").read_text())
        (root / "manifest.json").write_text(json.dumps({**manifest, "modality": "toy"}))
        dm = benchmark_data_module(str(root), "mnist", loader=LoaderOptions(num_workers=0))
        assert type(dm).__name__ == "ClassificationShards" and dm.task == "mnist"
        (root / "manifest.json").write_text(json.dumps({**manifest, "modality": "smell"}))
        with pytest.raises(
            ValueError, match=r"manifest.json: modality: expected one of .*'toy'.*got 'smell'"
        ):
            benchmark_data_module(str(root), "mnist")
    finally:
        MODALITIES.pop("toy", None)

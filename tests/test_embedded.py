from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nml.benchmark.build import SIZES, build_embedded


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read(root: Path, spec: str) -> list[dict]:
    import webdataset as wds

    urls = list(wds.shardlists.expand_urls(str(root / spec)))
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))


@pytest.mark.slow
def test_same_seed_same_bytes_for_any_worker_count(tiny_benchmark, tmp_path):
    again = tmp_path / "again"
    build_embedded(again, seed=3, size="tiny", fonts="fallback", shard_size=16, num_workers=0, progress=False)
    a, b = _digest(tiny_benchmark), _digest(again)
    assert a == b and len(a) > 30


@pytest.mark.slow
def test_another_seed_gives_other_images(tiny_benchmark, tmp_path):
    other = tmp_path / "other"
    build_embedded(other, seed=4, size="tiny", fonts="fallback", shard_size=16, num_workers=0, progress=False)
    a, b = _digest(tiny_benchmark), _digest(other)
    assert a.keys() == b.keys()
    assert a["glyphs/train-000000.tar"] != b["glyphs/train-000000.tar"]


def test_counts_match_sizes_and_info(tiny_benchmark):
    manifest = json.loads((tiny_benchmark / "manifest.json").read_text())
    for name, ds in manifest["datasets"].items():
        sizes = json.loads((tiny_benchmark / name / "sizes.json").read_text())
        info = json.loads((tiny_benchmark / name / "_info.json").read_text())
        assert info["num_classes"] == ds["num_classes"] == len(ds["classes"])
        for split, s in ds["splits"].items():
            samples = _read(tiny_benchmark, s["shards"])
            assert len(samples) == s["count"] == info["splits"][split]["num_samples"]
            assert info["splits"][split]["shard_lengths"] == [
                sizes[f] for f in info["splits"][split]["filenames"]
            ]
            assert len({x["__key__"] for x in samples}) == len(samples)
            assert all("." not in x["__key__"] for x in samples)
            labels = [int(x["cls"]) for x in samples]
            assert min(labels) >= 0 and max(labels) < ds["num_classes"]


def test_pretraining_samples_have_image_class_caption_and_metadata(tiny_benchmark):
    manifest = json.loads((tiny_benchmark / "manifest.json").read_text())
    samples = _read(tiny_benchmark, manifest["pretraining"]["train"])
    per_class = SIZES["tiny"]["corpus"]
    assert len(samples) == 44 * per_class
    assert np.bincount([int(s["cls"]) for s in samples]).tolist() == [per_class] * 44  # balanced
    for s in samples[:60]:
        assert {"png", "cls", "txt", "json"} <= set(s)
        img = Image.open(io.BytesIO(s["png"]))
        assert img.size == (32, 32)
        meta = json.loads(s["json"])
        cls = int(s["cls"])
        assert meta["char"] in manifest["classes"]["glyphs"][cls].split("/")
        assert meta["font_family"] in manifest["fonts"]["families"]["train"]
        assert s["txt"].decode().strip()
    # every class-balanced prefix is balanced: sample i has class i % C
    assert [int(s["cls"]) for s in samples[:88]] == list(range(44)) * 2


def test_the_known_task_table_is_what_a_build_writes(tiny_benchmark):
    from nml.benchmark.plan import TASK_NAMES

    manifest = json.loads((tiny_benchmark / "manifest.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == list(TASK_NAMES)


def test_tasks_reference_written_shards_with_groups(tiny_benchmark):
    manifest = json.loads((tiny_benchmark / "manifest.json").read_text())
    tasks = {t["name"]: t for t in manifest["tasks"]}
    assert {t["group"] for t in tasks.values()} == {"id", "ood"}
    assert tasks["print_to_mnist"]["test"]["print_to_mnist"] == tasks["mnist"]["test"]["mnist"]
    assert len(tasks["glyphs_corrupted"]["test"]) == 12
    for t in tasks.values():
        for spec in (t["train"], t["val"], *t["test"].values()):
            assert _read(tiny_benchmark, spec), spec
    # k-shot train splits are prefixes of the full train split (same stream, same images)
    full = _read(tiny_benchmark, tasks["glyphs_heldout"]["train"])
    five = _read(tiny_benchmark, tasks["glyphs_heldout_5shot"]["train"])
    assert [s["png"] for s in five] == [s["png"] for s in full[: len(five)]]
    # held-out glyph tasks never use a training font
    fonts = manifest["fonts"]
    assert not set(fonts["families"]["heldout"]) & set(fonts["families"]["train"])
    held = _read(tiny_benchmark, tasks["glyphs_heldout"]["test"]["glyphs_heldout"])
    assert {json.loads(s["json"])["font_family"] for s in held} <= set(fonts["families"]["heldout"])


def test_manifest_records_fonts_sources_and_class_policy(tiny_benchmark):
    from nml import __version__

    m = json.loads((tiny_benchmark / "manifest.json").read_text())
    assert m["seed"] == 3 and m["nml_version"] == __version__ and m["fonts"]["set"] == "fallback"
    assert "mnist_5k" in m["sources"]["mnist"]
    assert all(
        len(f["sha256"]) == 64 and f["split"] in ("train", "heldout", "handwriting")
        for f in m["fonts"]["faces"]
    )
    assert m["classes"]["ambiguous_groups"] and "merged" in m["classes"]["policy"]


def test_corrupted_test_sets_are_the_clean_images_corrupted(tiny_benchmark):
    m = json.loads((tiny_benchmark / "manifest.json").read_text())
    ds = m["datasets"]["glyphs_heldout"]["splits"]
    clean = _read(tiny_benchmark, ds["test"]["shards"])
    blurred = _read(tiny_benchmark, ds["test_blur_3"]["shards"])
    assert [s["cls"] for s in clean] == [s["cls"] for s in blurred]
    a = np.asarray(Image.open(io.BytesIO(clean[0]["png"])), dtype=float)
    b = np.asarray(Image.open(io.BytesIO(blurred[0]["png"])), dtype=float)
    assert 0 < np.abs(a - b).mean() and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.5


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="size"):
        build_embedded(tmp_path, size="huge", progress=False)
    with pytest.raises(ValueError, match="image_size"):
        build_embedded(tmp_path, image_size=16, progress=False)

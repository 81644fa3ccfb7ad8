"""The streaming pipeline on tiny shards written here: specs, splits, noise, epochs, resume, errors."""

from __future__ import annotations

import io
import json
import logging
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import png_bytes, quiet_trainer, write_shards
from torchvision.transforms import ToTensor

from nml.data.pipeline import ShardLoader, StreamConfig
from nml.noise.config import NoiseConfig
from nml.shards.members import BadImage, MemberSpec, ShardFormatError
from nml.shards.spec import (
    count_tar_samples,
    eval_assignment,
    eval_units,
    expand_spec,
    rebase_spec,
    resolve_shards,
    train_plan,
)

UNEVEN = [7, 13, 3, 20, 9, 11]  # 63 samples


def _cfg(spec, **kw) -> StreamConfig:
    kw.setdefault("members", MemberSpec(num_classes=5))
    kw.setdefault("transform", ToTensor())
    return StreamConfig(shards=resolve_shards(spec), **kw)


def _keys(loader) -> list[list[str]]:
    return [b["key"] for b in loader]


# -- specs and sizes ---------------------------------------------------------------------------
def test_spec_expansion_sources_and_missing_files(tmp_path, monkeypatch):
    a = write_shards(tmp_path / "a", [4, 4, 4])
    b = write_shards(tmp_path / "b", [5], prefix="extra")
    sources = expand_spec(rebase_spec("a/train-{0000..0002}.tar::b/extra-0000.tar", tmp_path))
    assert [len(s) for s in sources] == [3, 1]
    monkeypatch.chdir(tmp_path)  # a path you type is relative to the working directory
    assert expand_spec("a/train-{0000..0002}.tar::b/extra-0000.tar") == [
        ["a/train-0000.tar", "a/train-0001.tar", "a/train-0002.tar"],
        ["b/extra-0000.tar"],
    ]
    assert (
        rebase_spec("x/a.tar::/abs/b.tar::https://h/c.tar", "/root")
        == "/root/x/a.tar::/abs/b.tar::https://h/c.tar"
    )
    shards = resolve_shards(f"{a}::{b}")
    assert [s.size for s in shards] == [4, 4, 4, 5] and [s.source for s in shards] == [0, 0, 0, 1]
    with pytest.raises(FileNotFoundError, match=r"2 shard file\(s\) missing") as e:
        expand_spec(str(tmp_path / "a/train-{0002..0004}.tar"))
    assert "train-0003.tar" in str(e.value) and "train-0004.tar" in str(e.value)
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="empty shard spec"):
            expand_spec(empty)
    with pytest.raises(ValueError, match="empty source between '::'"):
        expand_spec(f"{a}::")


def test_sizes_from_index_files_or_by_scanning(tmp_path, caplog):
    spec = write_shards(tmp_path / "s", [3, 6], sizes_json=False)
    with caplog.at_level(logging.INFO):
        assert [s.size for s in resolve_shards(spec)] == [3, 6]
    assert "by scanning" in caplog.text
    (tmp_path / "s" / "sizes.json").write_text(json.dumps({"train-0000.tar": 3, "train-0001.tar": 5}))
    assert [s.size for s in resolve_shards(spec)] == [3, 5]  # the index wins (and is re-read when it changes)
    assert count_tar_samples(tmp_path / "s" / "train-0001.tar") == 6


def test_train_plan_cuts_one_pass_into_spans_of_equal_batches_per_rank():
    from nml.shards.spec import Shard

    shards = [Shard("a", 100), Shard("b", 37), Shard("c", 5)]
    for epoch in (0, 1):
        plans = train_plan(shards, 0, epoch, world_size=2, workers=2, batch_size=8)
        read = Counter((sp.shard.url, i) for p in plans for sp in p.spans for i in range(sp.start, sp.stop))
        assert len(read) == 142 and set(read.values()) == {1}  # every sample once
        per_rank = [sum(p.batches for p in plans[r * 2 : r * 2 + 2]) for r in range(2)]
        assert per_rank == [9, 9]  # ceil(142 / (8 * 2))
        padding = [p.batches * 8 - p.samples for p in plans]
        assert sum(padding) == 9 * 8 * 2 - 142 and max(padding) - min(padding) <= 1
    e0 = train_plan(shards, 0, 0, 1, 1, 8)[0].spans
    assert (
        e0 != train_plan(shards, 0, 1, 1, 1, 8)[0].spans and e0 == train_plan(shards, 0, 0, 1, 1, 8)[0].spans
    )
    tiny = train_plan([Shard("x", 1)], 0, 0, world_size=3, workers=1, batch_size=4)
    assert [p.samples for p in tiny] == [1, 0, 0] and all(p.batches == 1 and p.fallback for p in tiny[1:])


def _coverage(spec, world, workers, batch, epochs=2, **kw):
    from nml.data.audit import audit_stream

    return audit_stream(
        spec, batch, num_classes=5, world_size=world, num_workers=workers, epochs=epochs, **kw
    )


@pytest.mark.parametrize("sizes", [[100, 37, 5], UNEVEN, [1], [3, 3]])
def test_every_training_sample_is_seen_once_per_epoch_plus_counted_padding(tmp_path, sizes):
    spec = write_shards(tmp_path / "d", sizes)
    n = sum(sizes)
    for world in (1, 2, 3):
        for workers in (0, 1, 2):
            for batch in (4, 16):
                report = _coverage(spec, world, workers, batch, shuffle_buffer=8)
                per_rank = -(-n // (batch * world))
                for e in report["epochs"]:
                    where = f"sizes={sizes} world={world} workers={workers} batch={batch} epoch={e['epoch']}"
                    assert e["batches_per_rank"] == [per_rank] * world and e["short_batches"] == 0, where
                    assert e["unique"] == n and e["never_seen"] == 0, where
                    assert e["padding"] == per_rank * batch * world - n < batch * world, where
                    assert e["samples_yielded"] == n + e["padding"], where
                    assert e["seen_more_than_once"] <= e["padding"], where


def test_stream_audit_and_a_real_two_worker_loader_agree(tmp_path):
    spec = write_shards(tmp_path / "d", [100, 37, 5])
    report = _coverage(spec, 1, 2, 16, epochs=1)
    loader = ShardLoader(_cfg(spec, batch_size=16, num_workers=2))
    keys = Counter(k for b in _keys(loader) for k in b)
    assert len(loader) == 9 == report["epochs"][0]["batches_per_rank"][0]
    assert len(keys) == 142 and sum(keys.values()) == 144 == report["epochs"][0]["samples_yielded"]


def test_resampled_epochs_draw_shards_with_replacement(tmp_path):
    spec = write_shards(tmp_path / "d", [10, 10, 10])
    report = _coverage(spec, 2, 1, 5, epochs=1, resampled=True, num_samples=40)
    e = report["epochs"][0]
    assert e["batches_per_rank"] == [4, 4] and e["samples_yielded"] == 40 and e["padding"] == 0


def test_eval_units_read_every_sample_once_with_more_readers_than_shards():
    from nml.shards.spec import Shard

    shards = [Shard("a", 7), Shard("b", 2)]
    units = eval_units(shards, 6)
    parts = [eval_assignment(units, r, 6) for r in range(6)]
    read = Counter((u.shard.url, i) for p in parts for u in p for i in range(u.slot, u.shard.size, u.slots))
    assert sorted(read) == [("a", i) for i in range(7)] + [("b", i) for i in range(2)]
    assert set(read.values()) == {1}
    assert sum(1 for p in parts if p) >= 5  # the work is spread


# -- training stream ---------------------------------------------------------------------------
def test_noise_fixed_across_epochs_and_worker_counts(tmp_path):
    spec = write_shards(tmp_path / "d", UNEVEN)
    noise = NoiseConfig("symmetric", 0.4)
    seen = {}
    for workers in (0, 1, 2):
        loader = ShardLoader(_cfg(spec, batch_size=4, num_workers=min(workers, 2), noise=noise, seed=5))
        labels = {}
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            for b in loader:
                for k, t, c, n in zip(b["key"], b["target"], b["clean_target"], b["is_noisy"], strict=True):
                    assert labels.setdefault(k, (int(t), int(c), bool(n))) == (int(t), int(c), bool(n))
        seen[workers] = labels
    for a, b in ((0, 1), (1, 2), (0, 2)):  # readers cover different samples; shared ones agree
        common = seen[a].keys() & seen[b].keys()
        assert len(common) >= 40 and all(seen[a][k] == seen[b][k] for k in common)
    assert any(v[2] for v in seen[0].values())
    assert all(t != c for t, c, n in seen[0].values() if n)


def test_epochs_reshuffle_and_seed_repeats(tmp_path):
    spec = write_shards(tmp_path / "d", UNEVEN)

    def order(seed, epoch):
        loader = ShardLoader(_cfg(spec, batch_size=8, seed=seed, shuffle_buffer=16))
        loader.set_epoch(epoch)
        return [k for batch in _keys(loader) for k in batch]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_every_rank_yields_the_same_number_of_full_batches(tmp_path):
    spec = write_shards(tmp_path / "d", UNEVEN)
    for workers in (0, 2):
        counts = []
        for rank in (0, 1):
            loader = ShardLoader(_cfg(spec, batch_size=5, num_workers=workers, rank=rank, world_size=2))
            batches = _keys(loader)
            assert len(batches) == len(loader) and all(len(b) == 5 for b in batches)
            counts.append(len(batches))
        assert counts[0] == counts[1] == 7  # ceil(63 / (5 * 2)), for any number of workers


def test_more_readers_than_shards_share_the_shards(tmp_path):
    spec = write_shards(tmp_path / "d", [5, 5, 5])
    loader = ShardLoader(_cfg(spec, batch_size=4, num_workers=2, world_size=2, rank=1))
    assert len(_keys(loader)) == len(loader) == 2
    with pytest.raises(ValueError, match=r"train_samples=99: expected 1\.\.15.*resampled: true"):
        _cfg(spec, num_samples=99)


def test_resampled_sources_follow_weights(tmp_path):
    a = write_shards(tmp_path / "a", [10] * 4, prefix="a")
    b = write_shards(tmp_path / "b", [10] * 4, prefix="b")
    cfg = _cfg(f"{a}::{b}", batch_size=10, resampled=True, weights=[0.8, 0.2], num_samples=2000, decode=False)
    keys = [k for batch in _keys(ShardLoader(cfg)) for k in batch]
    frac_a = sum(k.startswith("a-") for k in keys) / len(keys)
    assert 0.7 < frac_a < 0.9
    with pytest.raises(ValueError, match="expected 2 non-negative weights"):
        _cfg(f"{a}::{b}", resampled=True, weights=[1.0])


# -- evaluation --------------------------------------------------------------------------------
@pytest.mark.parametrize("world,workers", [(1, 2), (2, 0), (2, 2), (3, 1)])
def test_eval_counts_every_sample_once_with_padding(tmp_path, world, workers):
    spec = write_shards(tmp_path / "d", [13, 3])  # fewer shards than readers
    valid_keys, lengths = [], []
    for rank in range(world):
        loader = ShardLoader(
            _cfg(spec, mode="eval", batch_size=4, rank=rank, world_size=world, num_workers=workers)
        )
        batches = list(loader)
        assert len(batches) == len(loader)
        lengths.append(len(batches))
        for b in batches:
            valid_keys += [k for k, v in zip(b["key"], b["valid"], strict=True) if v]
    assert len(set(lengths)) == 1
    assert sorted(valid_keys) == [f"train-{i:06d}" for i in range(16)]


def test_a_rank_with_no_evaluation_samples_gets_an_all_padding_batch(tmp_path):
    spec = write_shards(tmp_path / "d", [2])  # 2 samples, 3 ranks
    valid = []
    for rank in range(3):
        loader = ShardLoader(_cfg(spec, mode="eval", batch_size=4, rank=rank, world_size=3))
        batches = list(loader)
        assert len(batches) == len(loader) == 1
        valid += [k for b in batches for k, v in zip(b["key"], b["valid"], strict=True) if v]
        if rank == 2:
            assert not batches[0]["valid"].any() and batches[0]["image"].shape[1:] == (3, 8, 8)
    assert sorted(valid) == ["train-000000", "train-000001"]


# -- resume ------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers,stop", [(0, 3), (2, 3), (2, 4)])
def test_resume_mid_epoch_continues_the_same_stream(tmp_path, workers, stop):
    spec = write_shards(tmp_path / "d", UNEVEN)
    noise = NoiseConfig("symmetric", 0.3)

    def loader():
        return ShardLoader(_cfg(spec, batch_size=4, num_workers=workers, noise=noise, seed=9))

    full = loader()
    full.set_epoch(1)
    reference = [(b["key"], b["target"].tolist()) for b in full]
    interrupted = loader()
    interrupted.set_epoch(1)
    it = iter(interrupted)
    for _ in range(stop):
        next(it)
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == stop
    del it
    resumed = loader()
    resumed.set_epoch(1)
    resumed.load_state_dict(state)
    tail = [(b["key"], b["target"].tolist()) for b in resumed]
    assert tail == reference[stop:]
    at_end = loader()
    at_end.set_epoch(1)
    at_end.load_state_dict({**state, "batches_done": len(at_end)})
    assert list(at_end) == []  # a checkpoint taken after the last batch resumes to an empty epoch
    assert [(b["key"], b["target"].tolist()) for b in resumed] == reference  # the next pass is whole


# -- bad input ---------------------------------------------------------------------------------
def _tar(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _read_all(spec, **kw):
    kw.setdefault("mode", "eval")
    return [
        k
        for b in ShardLoader(_cfg(spec, batch_size=2, **kw))
        for k, v in zip(b["key"], b["valid"], strict=True)
        if v
    ]


def test_undecodable_image_is_skipped_with_a_count_or_raises_in_strict(tmp_path, caplog):
    spec = _tar(
        tmp_path / "bad.tar",
        {
            "a.png": png_bytes(0),
            "a.cls": b"1",
            "b.png": b"not a png",
            "b.cls": b"2",
            "c.png": png_bytes(1),
            "c.cls": b"0",
        },
    )
    with caplog.at_level(logging.WARNING):
        assert _read_all(spec) == ["a", "c"]
    assert "skipped undecodable image" in caplog.text and "'b'" in caplog.text
    assert "skipped 1 unreadable sample" in caplog.text
    with pytest.raises(BadImage, match="cannot decode image"):
        _read_all(spec, strict=True)


def test_a_reader_whose_first_samples_are_undecodable_fills_its_batches_from_later_ones(tmp_path, caplog):
    """The first batch of a training reader (its padding pool) is all undecodable, good samples
    follow: the lost samples are replaced by repeats of the first good ones (counted), not an error."""
    members = {}
    for i in range(4):
        members[f"bad{i}.png"], members[f"bad{i}.cls"] = b"not a png", b"1"
    for i in range(6):
        members[f"good{i}.png"], members[f"good{i}.cls"] = png_bytes(i), b"0"
    spec = _tar(tmp_path / "first-bad.tar", members)
    with caplog.at_level(logging.WARNING):
        batches = list(ShardLoader(_cfg(spec, batch_size=4, shuffle_buffer=0)))
    keys = [k for b in batches for k in b["key"]]
    assert len(batches) == 3 and len(keys) == 12  # the pass's 10 samples, in full batches of 4
    assert set(keys) <= {f"good{i}" for i in range(6)} and set(keys) == {f"good{i}" for i in range(6)}
    assert "skipped undecodable image" in caplog.text


def test_corrupt_tar_is_skipped_with_a_count_or_raises_in_strict(tmp_path, caplog):
    good = write_shards(tmp_path / "d", [4, 6])
    bad = tmp_path / "d" / "train-0001.tar"
    data = bad.read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.4)])  # truncated mid-member
    with caplog.at_level(logging.WARNING):
        keys = _read_all(good)
    assert set(keys) >= {f"train-{i:06d}" for i in range(4)} and len(keys) < 10
    assert "skipped unreadable data" in caplog.text
    assert "truncated after" in caplog.text or "read 3 samples, but the size index says 6" in caplog.text
    assert f"skipped {10 - len(keys)} unreadable sample(s)" in caplog.text
    assert "train-0001.tar" in caplog.text
    spec = good
    with pytest.raises(ShardFormatError, match="train-0001.tar"):
        _read_all(spec, strict=True)


@pytest.mark.parametrize(
    "members,match",
    [
        ({"a.png": None, "a.cls": b"x1"}, r"\.cls must be an integer class index, got 'x1'"),
        ({"a.png": None, "a.cls": b"5"}, r"\.cls = 5 is outside \[0, 5\)"),
        ({"a.png": None}, r"missing label member 'cls'"),
        ({"a.jpgx": None, "a.cls": b"1"}, r"no image member \(looked for 'jpg;png;jpeg;webp'"),
        ({"a.b.png": None, "a.b.cls": b"1"}, r"key with a dot"),
    ],
)
def test_format_errors_name_the_shard_and_sample(tmp_path, members, match):
    spec = _tar(tmp_path / "x.tar", {k: (v if v is not None else png_bytes(0)) for k, v in members.items()})
    with pytest.raises(ShardFormatError, match=match) as e:
        _read_all(spec)
    assert "x.tar" in str(e.value)


def test_missing_caption_is_an_error(tmp_path):
    spec = _tar(tmp_path / "c.tar", {"a.png": png_bytes(0), "a.txt": b"a cat", "b.png": png_bytes(1)})
    members = MemberSpec(label_key=None, caption_key="txt", require_caption=True)
    with pytest.raises(ShardFormatError, match=r"sample 'b': missing caption 'txt'"):
        _read_all(spec, members=members, decode=False)
    members = MemberSpec(label_key=None, caption_key="json:caption", require_caption=True)
    spec = _tar(tmp_path / "j.tar", {"a.png": png_bytes(0), "a.json": json.dumps({"caption": "x"}).encode()})
    assert _read_all(spec, members=members) == ["a"]


def test_pickle_members_are_never_loaded(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    spec = _tar(tmp_path / "p.tar", {"a.png": png_bytes(0), "a.cls": b"1", "a.pyd": pickle.dumps(Evil())})
    assert _read_all(spec) == ["a"]
    assert not marker.exists()


def test_batches_carry_clean_targets_and_noise_flags(tmp_path):
    spec = write_shards(tmp_path / "d", [32, 32])
    b = next(iter(ShardLoader(_cfg(spec, mode="eval", batch_size=64, noise=NoiseConfig("pair", 0.25)))))
    assert b["image"].shape == (64, 3, 8, 8) and b["image"].dtype == torch.float32
    assert b["is_noisy"].dtype == torch.bool and int(b["is_noisy"].sum()) == 16
    flipped = b["target"][b["is_noisy"]]
    assert torch.equal(flipped, (b["clean_target"][b["is_noisy"]] + 1) % 5)


def test_augmentation_seeding_touches_only_the_cpu_generator(tmp_path, monkeypatch):
    """Per-sample seeding (reproducible augmentations) must not call torch.manual_seed: with a CUDA
    build it queues a lazy seed of every CUDA device (~4 ms per sample in a process without CUDA, and
    on a GPU it would reseed the training's CUDA RNG). The process's RNG states are left as found."""
    import random

    import torch
    from torchvision import transforms

    from nml.data.pipeline import seeded_rng

    def refuse(*args, **kwargs):
        raise AssertionError("per-sample seeding reached torch.manual_seed / CUDA seeding")

    for target in ("manual_seed", "random.manual_seed", "cuda.manual_seed", "cuda.manual_seed_all"):
        module, _, name = f"torch.{target}".rpartition(".")
        monkeypatch.setattr(f"{module}.{name}", refuse)
    spec = write_shards(tmp_path / "s", [8, 8])
    augment = transforms.Compose([transforms.RandomResizedCrop(8, scale=(0.5, 1.0)), transforms.ToTensor()])
    py_state = random.getstate()
    batches = [b["image"] for b in ShardLoader(_cfg(spec, batch_size=4, transform=augment, seed=3))]
    again = [b["image"] for b in ShardLoader(_cfg(spec, batch_size=4, transform=augment, seed=3))]
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))  # same seed, same crops
    assert random.getstate() == py_state  # (the DataLoader itself draws a base seed from torch's RNG)
    state = torch.random.get_rng_state()
    with seeded_rng("x"):
        first = torch.rand(3)
    with seeded_rng("x"):
        assert torch.equal(torch.rand(3), first)
    assert torch.equal(torch.random.get_rng_state(), state) and random.getstate() == py_state


def test_no_per_sample_seeding_when_augmentation_is_off(tiny_benchmark, monkeypatch):
    import nml.data.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "seeded_rng", lambda name: calls.append(name))
    from nml.data.modules import ClassificationShards

    dm = ClassificationShards(
        root=str(tiny_benchmark), loader={"batch_size": 16, "num_workers": 0}, image={"augment": False}
    )
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    assert calls == []  # augment: false trains on the eval transform: nothing to seed


def test_audit_of_a_truncated_shard_with_a_size_index_counts_what_it_read(tmp_path, caplog):
    """Records (batch_size None) are never padded: a short read is counted and reported, not a
    KeyError on the padding path."""
    from nml.data.audit import audit_shards

    spec = write_shards(tmp_path / "d", [4, 6])
    bad = tmp_path / "d" / "train-0001.tar"
    bad.write_bytes(bad.read_bytes()[: int(bad.stat().st_size * 0.4)])
    with caplog.at_level(logging.WARNING):
        report = audit_shards(spec, NoiseConfig("symmetric", 0.2))
    assert 4 <= report["samples"] < 10
    assert f"skipped {10 - report['samples']} unreadable sample(s)" in caplog.text


@pytest.mark.parametrize("damage", ["cut_in_member", "empty", "random_bytes", "truncated_tgz"])
def test_corrupt_tar_without_a_size_index_is_counted_named_and_skipped(tmp_path, caplog, damage):
    import gzip
    import os

    from nml.data.audit import audit_shards, audit_stream
    from nml.shards.spec import UnreadableShard

    write_shards(tmp_path / "d", [6, 6, 6], sizes_json=False)
    bad = tmp_path / "d" / "train-0001.tar"
    data = bad.read_bytes()
    if damage == "cut_in_member":
        bad.write_bytes(data[: int(len(data) * 0.55) // 512 * 512 - 400])  # inside a member's data
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "random_bytes":
        bad.write_bytes(os.urandom(4000))
    else:
        bad.unlink()
        bad = bad.with_suffix(".tgz")
        bad.write_bytes(gzip.compress(data)[:-300])
    spec = "{" + ",".join(str(p) for p in sorted((tmp_path / "d").iterdir())) + "}"
    with caplog.at_level(logging.WARNING):
        report = audit_shards(spec, NoiseConfig("symmetric", 0.2), num_classes=5)
        stream = audit_stream(spec, 4, num_classes=5, num_workers=0)
    assert bad.name in caplog.text and "not a readable tar" in caplog.text
    assert 12 <= report["samples"] < 18
    e = stream["epochs"][0]
    assert e["never_seen"] == 0 and e["unique"] >= 12 and stream["samples_in_data"] < 18
    with pytest.raises(UnreadableShard, match=bad.name):
        audit_shards(spec, NoiseConfig(), num_classes=5, strict=True)


def test_large_jpegs_are_decoded_at_a_reduced_scale_only_where_the_transform_loses_nothing(tmp_path):
    """Evaluation (resize to 256 then crop 224) needs a shorter side of 256: a 1024 x 768 JPEG is
    decoded at 1/2 scale (both sides stay >= 256), and the batch is within JPEG-rounding of the
    full decode's. Training (timm's random resized crop, scale >= 0.08) needs 915 px: decoded whole."""
    import numpy as np
    from PIL import Image

    from nml.data.transforms import build_transform, min_decode_side
    from nml.shards.members import decode_image

    y, x = np.mgrid[0:768, 0:1024]
    pixels = np.stack([(x * 0.3) % 256, (y * 0.25) % 256, ((x + y) * 0.1) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    jpeg = buf.getvalue()
    evaluate = build_transform("timm", 224, train=False, overrides={"crop_pct": 0.875}, glyph_safe=False)
    train = build_transform("timm", 224, train=True, glyph_safe=False)
    assert (min_decode_side(evaluate), min_decode_side(train)) == (256, 915)
    assert decode_image(jpeg, min_side=256).size == (512, 384)
    assert decode_image(jpeg, min_side=915).size == decode_image(jpeg).size == (1024, 768)
    assert (
        decode_image(png_bytes(0), min_side=8).size == Image.open(io.BytesIO(png_bytes(0))).size
    )  # not a JPEG

    spec = _tar(tmp_path / "big.tar", {"a.jpg": jpeg, "a.cls": b"1"})
    reduced, whole = (
        next(iter(ShardLoader(_cfg(spec, mode="eval", batch_size=1, transform=evaluate, reduced_decode=r))))
        for r in (True, False)
    )
    assert reduced["image"].shape == whole["image"].shape == (1, 3, 224, 224)
    assert (reduced["image"] - whole["image"]).abs().mean() < 0.05  # normalised units (std ~0.22)
    assert not torch.equal(reduced["image"], whole["image"])  # it did decode differently


@pytest.mark.slow
def test_bench_pipeline_reports_the_per_core_rate_against_the_jpeg_decode_limit():
    from helpers import run_tool

    argv = [
        "--mode",
        "jpeg",
        "--samples",
        "64",
        "--image_px",
        "320x240",
        "--num_workers",
        "0",
        "--repeats",
        "1",
        "--image_size",
        "96",
    ]
    out = json.loads(run_tool("pipeline", argv))
    assert out["shards"] == "64 synthetic 320x240 JPEGs" and out["decode_limit_per_core"] > 0
    # decoding is part of the pipeline: a pipeline faster than decoding alone would be a wrong figure
    assert 0 < out["train_one_core_over_decode_limit"] < 1
    assert out["train_one_core_over_decode_limit"] == pytest.approx(
        out["train_one_core_samples_per_s"] / out["decode_limit_per_core"], rel=0.01
    )


def test_decoding_on_the_device_draws_the_same_crops_and_flips_as_the_cpu_path(tmp_path):
    """decode_on_device (run here with torchvision's CPU JPEG decoder; a GPU runs nvJPEG): the
    workers pass encoded images and the crops and flips drawn from the same seeded RNG, so the
    batches match the CPU path's to interpolation rounding, for JPEG and PNG, 1 and 2 views. A step
    the device path cannot run (colour jitter) is refused by name, and a Lightning fit trains on it."""
    from helpers import write_pattern_shards

    from nml.data.modules import ClassificationShards
    from nml.models.supervised import SupervisedPretraining

    spec = write_pattern_shards(tmp_path, 16, 128, 96, png_every=4)
    common = dict(
        train=spec,
        val=spec,
        num_classes=4,
        loader={"batch_size": 8, "num_workers": 0},
        noise=NoiseConfig("symmetric", 0.3),
    )
    image = {"image_size": 48, "train_transform": {"color_jitter": 0}}

    def first_batch(views: int, on_device: bool) -> dict:
        dm = ClassificationShards(**common, image={**image, "views": views, "decode_on_device": on_device})
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        if on_device:
            assert batch["encoded"][0].dtype == torch.uint8 and "image" not in batch
        return dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)

    for views in (1, 2):
        cpu, device = first_batch(views, False), first_batch(views, True)
        assert device["key"] == cpu["key"] and torch.equal(device["target"], cpu["target"])
        assert (
            device["image"].shape
            == cpu["image"].shape
            == ((8, 3, 48, 48) if views == 1 else (8, 2, 3, 48, 48))
        )
        diff = (device["image"] - cpu["image"]).abs().mean(dim=(-3, -2, -1))
        assert diff.max() < 0.03, diff  # the same crop and flip: only interpolation differs (another
        # seed, other crops: 0.14-1.9)

    # an image whose header reads but whose data does not decode: its row becomes a repeat of a good one
    from nml.data.device_decode import decode_batch, device_plan, fill_failed

    dm = ClassificationShards(**common, image={**image, "decode_on_device": True})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    jpeg = next(i for i, data in enumerate(batch["encoded"]) if data[0] == 0xFF)
    batch["encoded"][jpeg] = batch["encoded"][jpeg][: len(batch["encoded"][jpeg]) // 2]  # truncated
    plan = device_plan(dm.inputs.transform(True))
    images, failed = decode_batch(batch["encoded"], batch["boxes"], plan, torch.device("cpu"))
    assert failed == [jpeg] and torch.isfinite(images).all()
    good = next(i for i in range(8) if i != jpeg)
    fill_failed(batch, failed)
    assert batch["key"][jpeg] == batch["key"][good] and batch["target"][jpeg] == batch["target"][good]

    with pytest.raises(ValueError, match="ColorJitter cannot run on the device"):
        jitter = {**image, "train_transform": {"color_jitter": 0.4}, "decode_on_device": True}
        dm = ClassificationShards(**common, image=jitter)
        dm.setup("fit")
        next(iter(dm.train_dataloader()))

    # a Lightning fit on it, with a truncated JPEG among 24 samples: skipped and counted (data/skipped)
    jpeg = next(data for data in batch["encoded"] if data[0] == 0xFF)
    truncated = {"t0.jpg": bytes(jpeg[: len(jpeg) // 2].numpy()), "t0.cls": b"1"}
    for i in range(1, 8):
        truncated |= {f"t{i}.png": png_bytes(i), f"t{i}.cls": b"1"}
    spec_with_bad = f"{spec}::{_tar(tmp_path / 'bad.tar', truncated)}"
    dm = ClassificationShards(**{**common, "train": spec_with_bad}, image={**image, "decode_on_device": True})
    trainer = quiet_trainer(
        max_epochs=1,
        limit_val_batches=1,
    )
    trainer.fit(SupervisedPretraining("test_resnet", num_classes=4), dm)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert trainer.callback_metrics["data/skipped"] == 1


def test_the_audit_reads_the_class_count_from_a_timm_info_json_without_names(tmp_path):
    """timm's ImageNet shards carry ``_info.json`` with ``num_classes`` and no names: the audit
    reads it as ``nml fit`` does (one reader of ``_info.json``)."""
    from nml.data.audit import audit

    spec = write_shards(tmp_path / "d", [6, 4])
    (tmp_path / "d" / "_info.json").write_text(json.dumps({"num_classes": 5}))
    report = audit(spec, NoiseConfig("symmetric", 0.2))
    assert report["num_classes"] == 5 and report["samples"] == 10
    (tmp_path / "d" / "_info.json").write_text(json.dumps({"name": "no classes"}))
    with pytest.raises(ValueError, match="no _info.json with 'classes' or 'num_classes'"):
        audit(spec, NoiseConfig("symmetric", 0.2))


def test_decode_on_device_fills_a_batch_none_of_whose_images_decode_from_an_earlier_batch(tmp_path):
    """The CPU path skips undecodable images and repeats earlier samples in their places; the device
    path does the same when a whole batch fails (it used to stop the run)."""
    from helpers import write_pattern_shards

    from nml.data.device_decode import DeviceDecoder
    from nml.data.modules import ClassificationShards

    spec = write_pattern_shards(tmp_path, 16, 64, 48)  # all JPEGs
    image = {"image_size": 32, "train_transform": {"color_jitter": 0}, "decode_on_device": True}
    dm = ClassificationShards(
        train=spec, val=spec, num_classes=4, loader={"batch_size": 4, "num_workers": 0}, image=image
    )
    dm.setup("fit")
    good, bad = list(iter(dm.train_dataloader()))[:2]
    decoder = dm.inputs.device_decoder()
    assert isinstance(decoder, DeviceDecoder) and decoder is dm.inputs.device_decoder()  # built once
    with pytest.raises(BadImage, match="none of the batch's 4 images could be decoded"):
        DeviceDecoder(dm.inputs.transform(True)).decode(
            {**bad, "encoded": [b[:10] for b in bad["encoded"]]}, "cpu"
        )
    assert decoder.decode(good, torch.device("cpu")) == []
    bad["encoded"] = [data[: len(data) // 3] for data in bad["encoded"]]  # every JPEG truncated
    assert decoder.decode(bad, torch.device("cpu")) == [0, 1, 2, 3]
    assert bad["image"].shape == good["image"].shape and torch.equal(bad["image"][1], good["image"][0])
    assert bad["key"] == [good["key"][0]] * 4 and torch.equal(bad["target"], good["target"][:1].expand(4))


@pytest.mark.slow
def test_bench_pipeline_measures_the_cost_of_noise_on_the_embedded_shards(tiny_benchmark):
    from helpers import run_tool

    argv = ["--root", str(tiny_benchmark), "--num_workers", "0", "--repeats", "2", "--batch_size", "16"]
    out = json.loads(run_tool("pipeline", argv))
    for modality, kinds in (
        ("classification", {"none", "symmetric"}),
        ("image_text", {"none", "caption_swap"}),
    ):
        result = out[modality]
        assert set(result["samples_per_s"]) == kinds and all(len(v) == 2 for v in result["all_runs"].values())
        assert (
            all(v > 0 for v in result["samples_per_s"].values()) and result["noise_stage_us_per_sample"] > 0
        )

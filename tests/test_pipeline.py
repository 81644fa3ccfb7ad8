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
from helpers import png_bytes, write_shards
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
    train_assignment,
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


def test_train_shards_are_disjoint_and_cover_each_epoch():
    from nml.shards.spec import Shard

    shards = [Shard(f"s{i}", 10) for i in range(10)]
    for epoch in (0, 1):
        parts = [train_assignment(shards, 0, epoch, r, 4) for r in range(4)]
        flat = [s.url for p in parts for s in p]
        assert sorted(flat) == sorted(s.url for s in shards)
    e0 = [s.url for s in train_assignment(shards, 0, 0, 0, 1)]
    e1 = [s.url for s in train_assignment(shards, 0, 1, 0, 1)]
    assert e0 != e1 and e0 == [s.url for s in train_assignment(shards, 0, 0, 0, 1)]


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
        # ceil(63 / (5 * 2)) = 7 global batches, rounded up to a multiple of the workers
        assert counts[0] == counts[1] == (7 if workers == 0 else 8)


def test_too_few_shards_for_readers_suggests_fixes(tmp_path):
    spec = write_shards(tmp_path / "d", [5, 5, 5])
    with pytest.raises(
        ValueError, match=r"3 training shard\(s\) for 2 rank\(s\) x 2 worker\(s\) = 4 readers"
    ) as e:
        _cfg(spec, num_workers=2, world_size=2)
    assert "resampled: true" in str(e.value) and "fewer" in str(e.value)
    loader = ShardLoader(_cfg(spec, batch_size=4, num_workers=2, world_size=2, resampled=True))
    assert len(_keys(loader)) == len(loader) == 2


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

    dm = ClassificationShards(root=str(tiny_benchmark), batch_size=16, num_workers=0, augment=False)
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

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from nml.shards.byod import ImageError, write_captions, write_imagefolder


def _img(path, seed, fmt):
    arr = np.random.default_rng(seed).integers(0, 255, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def _read(out, spec):
    import webdataset as wds

    urls = list(wds.shardlists.expand_urls(str(out / spec)))
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))


@pytest.fixture
def imagefolder(tmp_path):
    root = tmp_path / "folder"
    for c, name in enumerate(["cat", "dog", "eel"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            _img(root / name / f"img.{i}.{'png' if i % 2 else 'jpg'}", 10 * c + i, "PNG" if i % 2 else "JPEG")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_round_trip(imagefolder, tmp_path, caplog):
    out = tmp_path / "shards"
    res = write_imagefolder(imagefolder, out, shard_size=5, progress=False)
    assert res["samples"] == 12 and res["skipped"] == 1 and res["num_shards"] == 3
    assert "skipped 1 of 13" in caplog.text
    samples = _read(out, res["shards"])
    info = json.loads((out / "_info.json").read_text())
    assert info["classes"] == ["cat", "dog", "eel"] and info["splits"]["train"]["num_samples"] == 12
    assert json.loads((out / "sizes.json").read_text()) == {
        "train-000000.tar": 5,
        "train-000001.tar": 5,
        "train-000002.tar": 2,
    }
    seen = set()
    for s in samples:
        assert "." not in s["__key__"] and {"jpg", "cls", "json"} <= set(s)
        meta = json.loads(s["json"])
        cls = int(s["cls"])
        assert meta["class_name"] == info["classes"][cls] and meta["path"].startswith(
            meta["class_name"] + "/"
        )
        src = Image.open(imagefolder / meta["path"]).convert("RGB")
        got = Image.open(io.BytesIO(s["jpg"]))
        assert got.format == "JPEG" and got.size == src.size
        if meta["path"].endswith(".jpg"):  # JPEG sources are stored verbatim
            assert s["jpg"] == (imagefolder / meta["path"]).read_bytes()
        seen.add(meta["path"])
    assert len(seen) == 12
    # seeded order mixes classes across shards; the same seed gives the same shards
    again = write_imagefolder(imagefolder, tmp_path / "again", shard_size=5, progress=False)
    assert (tmp_path / "again" / "train-000000.tar").read_bytes() == (out / "train-000000.tar").read_bytes()
    assert again["samples"] == 12


def test_imagefolder_strict_fails_on_unreadable_image(imagefolder, tmp_path):
    with pytest.raises(ImageError, match="broken.jpg.*cannot decode"):
        write_imagefolder(imagefolder, tmp_path / "s", strict=True, progress=False)


def test_imagefolder_rejects_a_flat_folder(tmp_path):
    _img(tmp_path / "a.png", 0, "PNG")
    with pytest.raises(SystemExit, match="not an ImageFolder"):
        write_imagefolder(tmp_path, tmp_path / "out", progress=False)


def test_imagefolder_refuses_an_empty_class_folder(tmp_path):
    (tmp_path / "tree" / "cat").mkdir(parents=True)
    _img(tmp_path / "tree" / "cat" / "a.png", 0, "PNG")
    (tmp_path / "tree" / "aardvark").mkdir()  # sorts first: it would silently become class 0
    with pytest.raises(SystemExit, match=r"class folder\(s\) \['aardvark'\] under .* hold no images"):
        write_imagefolder(tmp_path / "tree", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_caption_table_round_trip(tmp_path, caplog):
    (tmp_path / "imgs").mkdir()
    rows = ["image\tcaption\tsource"]
    for i in range(5):
        _img(tmp_path / "imgs" / f"{i}.png", i, "PNG")
        rows.append(f"imgs/{i}.png\ta photo number {i}\tweb")
    rows.append("imgs/missing.png\ta missing photo\tweb")
    rows.append("imgs/0.png\t \tweb")
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "shards"
    res = write_captions(tmp_path / "pairs.tsv", out, shard_size=2, progress=False)
    assert res["samples"] == 5 and res["skipped"] == 1 and res["skipped_empty_captions"] == 1
    assert "missing.png" in caplog.text and "empty caption" in caplog.text
    samples = _read(out, res["shards"])
    assert [s["txt"].decode() for s in samples] == [f"a photo number {i}" for i in range(5)]
    meta = json.loads(samples[3]["json"])
    assert meta["image"] == "imgs/3.png" and meta["source"] == "web" and meta["caption"] == "a photo number 3"
    assert sum(json.loads((out / "sizes.json").read_text()).values()) == 5
    with pytest.raises(SystemExit, match="1 rows with an empty caption .first at line 8"):
        write_captions(tmp_path / "pairs.tsv", tmp_path / "strict", strict=True, progress=False)
    (tmp_path / "pairs2.tsv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(ImageError, match="missing.png: file not found"):
        write_captions(tmp_path / "pairs2.tsv", tmp_path / "strict2", strict=True, progress=False)


def test_caption_table_names_missing_columns(tmp_path):
    (tmp_path / "t.csv").write_text("path,text\na.png,hello\n")
    with pytest.raises(SystemExit, match="no column 'image'.*--image_column"):
        write_captions(tmp_path / "t.csv", tmp_path / "out", progress=False)


def test_shard_writer_rejects_keys_with_dots(tmp_path):
    from nml.shards.writer import ShardWriter

    with ShardWriter(tmp_path / "x-%06d.tar") as w, pytest.raises(ValueError, match="first dot"):
        w.write({"__key__": "img.001", "png": b"x"})

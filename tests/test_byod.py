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


def test_high_bit_depth_images_are_scaled_by_their_range_or_refused(tmp_path):
    """16-bit PNGs and 32-bit integer / float TIFFs keep their brightness (PIL's convert clips them)."""
    root = tmp_path / "folder" / "a"
    root.mkdir(parents=True)
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(root / "u16.png")
    Image.fromarray((ramp * 65535).astype(np.int32)).save(root / "i32.tif")
    Image.fromarray(ramp.astype(np.float32)).save(root / "f32.tif")
    Image.fromarray((ramp * 255).astype(np.uint8)).save(root / "u8.png")
    res = write_imagefolder(tmp_path / "folder", tmp_path / "out", seed=None, progress=False)
    assert res["samples"] == 4 and res["skipped"] == 0
    means = {
        json.loads(s["json"])["path"]: np.asarray(Image.open(io.BytesIO(s["jpg"]))).mean()
        for s in _read(tmp_path / "out", res["shards"])
    }
    for name in ("a/u16.png", "a/i32.tif", "a/f32.tif"):
        assert means[name] == pytest.approx(means["a/u8.png"], abs=2), means
    Image.fromarray((ramp * 1000 - 5).astype(np.float32)).save(root / "hdr.tif")  # no known range
    with pytest.raises(ImageError, match=r"hdr.tif: 'F' image with values in \[-5, 995\]"):
        write_imagefolder(tmp_path / "folder", tmp_path / "out2", strict=True, progress=False)


def test_decompression_bomb_is_skipped_and_named(tmp_path, caplog, monkeypatch):
    from nml.shards.members import BadImage, decode_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 200 MP image, scaled down
    big = tmp_path / "folder" / "a" / "big.png"
    big.parent.mkdir(parents=True)
    Image.new("RGB", (100, 100)).save(big)
    _img(big.parent / "small.png", 0, "PNG")
    res = write_imagefolder(tmp_path / "folder", tmp_path / "out", progress=False)
    assert res["samples"] == 1 and res["skipped"] == 1 and "big.png" in caplog.text
    with pytest.raises(BadImage, match="shard x, sample big.*DecompressionBombError"):
        decode_image(big.read_bytes(), "shard x, sample big")


def test_caption_tables_bom_latin1_and_archives(tmp_path):
    from nml.cli.commands.data import write

    (tmp_path / "imgs").mkdir()
    _img(tmp_path / "imgs" / "0.png", 0, "PNG")
    (tmp_path / "bom.csv").write_bytes("image,caption\nimgs/0.png,a café\n".encode("utf-8-sig"))
    res = write_captions(tmp_path / "bom.csv", tmp_path / "out", progress=False)
    assert res["samples"] == 1 and _read(tmp_path / "out", res["shards"])[0]["txt"].decode() == "a café"
    (tmp_path / "latin.csv").write_bytes("image,caption\nimgs/0.png,a café\n".encode("latin-1"))
    with pytest.raises(SystemExit, match=r"latin.csv is not UTF-8 text \(byte 0xe9"):
        write_captions(tmp_path / "latin.csv", tmp_path / "out2", progress=False)
    with pytest.raises(SystemExit, match=r"train-000000.tar' is an archive"):
        write(str(tmp_path / "out" / "train-000000.tar"), str(tmp_path / "out3"))


def test_output_directory_is_refused_unless_overwrite_and_a_stop_leaves_no_shards(imagefolder, tmp_path):
    out = tmp_path / "shards"
    write_imagefolder(imagefolder, out, shard_size=5, progress=False)
    with pytest.raises(SystemExit, match=r"already holds shards of the split 'train' .*--overwrite"):
        write_imagefolder(imagefolder, out, shard_size=5, progress=False)
    res = write_imagefolder(imagefolder, out, shard_size=20, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["_info.json", "sizes.json", "train-000000.tar"]
    assert res["num_shards"] == 1
    with pytest.raises(ImageError, match="--strict: stopping"):  # broken.jpg comes after some shards
        write_imagefolder(
            imagefolder, tmp_path / "strict", shard_size=1, strict=True, progress=False, seed=None
        )
    assert list((tmp_path / "strict").iterdir()) == []  # no complete or partial shard left


def test_splits_share_a_directory_and_overwrite_replaces_only_its_own(imagefolder, tmp_path):
    """train and val written into one directory (the documented layout) with merged index files;
    ``--overwrite`` of one split removes that split's shards and nothing else (it used to delete the
    other split's shards and indexes)."""
    out = tmp_path / "shards"
    write_imagefolder(imagefolder, out, shard_size=5, progress=False)
    train = sorted(p.name for p in out.glob("train-*.tar"))
    write_imagefolder(imagefolder, out, shard_size=20, prefix="val", progress=False)
    info = json.loads((out / "_info.json").read_text())
    sizes = json.loads((out / "sizes.json").read_text())
    assert set(info["splits"]) == {"train", "val"} and info["classes"] == ["cat", "dog", "eel"]
    assert sorted(sizes) == [*train, "val-000000.tar"] and info["splits"]["train"]["filenames"] == train
    write_imagefolder(imagefolder, out, shard_size=20, prefix="train", progress=False, overwrite=True)
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "val-000000.tar"]
    sizes = json.loads((out / "sizes.json").read_text())
    assert sorted(sizes) == ["train-000000.tar", "val-000000.tar"]
    assert set(json.loads((out / "_info.json").read_text())["splits"]) == {"train", "val"}
    other = tmp_path / "other"  # a split with other classes does not join them
    for name in ("ant", "bee"):
        (other / name).mkdir(parents=True)
        _img(other / name / "a.png", 1, "PNG")
    with pytest.raises(ValueError, match=r"the splits already there \(train, val\) have other classes"):
        write_imagefolder(other, out, prefix="test", progress=False)
    assert not list(out.glob("test-*"))  # refused before writing


def test_a_tree_of_splits_is_one_command(imagefolder, tmp_path, capsys):
    """root/train/<class>/, root/val/<class>/ (timm's ImageNet layout): one `nml data write` writes
    train-*.tar and val-*.tar into one directory with merged index files."""
    import shutil

    from nml.cli.main import main

    tree = tmp_path / "tree"
    shutil.copytree(imagefolder, tree / "train")
    shutil.copytree(imagefolder, tree / "val")
    assert (
        main(["data", "write", "--source", str(tree), "--out", str(tmp_path / "out"), "--progress", "false"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert set(result["splits"]) == {"train", "val"}
    info = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert set(info["splits"]) == {"train", "val"} and info["classes"] == ["cat", "dog", "eel"]
    assert sorted(p.name[:5] for p in (tmp_path / "out").glob("*.tar")) == ["train", "val-0"]

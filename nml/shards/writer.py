"""Deterministic WebDataset shard writing, with open_clip's ``sizes.json`` and timm's ``_info.json``.

Written with :mod:`tarfile` rather than ``webdataset.ShardWriter`` so that (a) the same samples
give the same bytes (fixed mtime, owner and mode; webdataset stamps the wall-clock time), and (b)
building data never imports torch. The tests read every shard back with plain ``webdataset``.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-/]+$")
_EXT_RE = re.compile(r"^[a-z0-9]+$")


def check_key(key: str) -> str:
    """Sample keys may not contain dots: webdataset splits member names at the first dot."""
    if not key or not _KEY_RE.match(key):
        raise ValueError(
            f"sample key {key!r} is not valid: use letters, digits, '_', '-' or '/' only "
            "(webdataset splits member names at the first dot)"
        )
    return key


def encode_value(ext: str, value) -> bytes:
    if isinstance(value, bytes):
        return value
    if ext == "json":
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode()
    if isinstance(value, str | int):
        return str(value).encode()
    raise TypeError(
        f"cannot encode a {type(value).__name__} as .{ext}: pass bytes, str, int or (for json) a dict"
    )


class ShardWriter:
    """Write samples ``{"__key__": k, ext: value, ...}`` into ``<pattern % index>`` tar shards.

    ``pattern`` is a path with one ``%06d``-style field, e.g. ``out/train-%06d.tar``. A new shard
    starts every ``max_count`` samples. ``shards`` lists ``(path, count)`` of what was written.
    Each shard is written under a temporary name (``<path>.partial``) and renamed when complete, so
    a reader never sees a half-written shard; leaving the ``with`` block by an exception removes
    the partial one.
    """

    def __init__(self, pattern: str | Path, max_count: int = 1000):
        if max_count < 1:
            raise ValueError(f"shard size (max_count) must be >= 1, got {max_count}")
        self.pattern, self.max_count = str(pattern), max_count
        self.shards: list[tuple[str, int]] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        Path(self.pattern % 0).parent.mkdir(parents=True, exist_ok=True)

    def write(self, sample: Mapping[str, object]) -> None:
        key = check_key(str(sample["__key__"]))
        if self._tar is None or self._count >= self.max_count:
            self._next_shard()
        for ext in sorted(k for k in sample if not k.startswith("__")):
            if not _EXT_RE.match(ext):
                raise ValueError(
                    f"sample {key!r}: extension {ext!r} must be lowercase letters/digits without dots"
                )
            data = encode_value(ext, sample[ext])
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uname = info.gname = "nml"
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self.shards[-1] = (self.shards[-1][0], self._count)

    def write_all(self, samples: Iterable[Mapping[str, object]]) -> None:
        for s in samples:
            self.write(s)

    def _next_shard(self) -> None:
        self._close_tar()
        path = self.pattern % len(self.shards)
        self._tar = tarfile.open(path + ".partial", "w", format=tarfile.USTAR_FORMAT)
        self._count = 0
        self.shards.append((path, 0))

    def _close_tar(self, complete: bool = True) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            path = self.shards[-1][0]
            if complete:
                Path(path + ".partial").replace(path)
            else:
                Path(path + ".partial").unlink(missing_ok=True)
                self.shards.pop()

    def close(self) -> list[tuple[str, int]]:
        self._close_tar()
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._close_tar(complete=exc_type is None)


def shard_spec(shards: list[tuple[str, int]], root: str | Path | None = None) -> str:
    """Brace pattern covering ``shards`` written by one ShardWriter, e.g. ``train-{000000..000004}.tar``."""
    names = [Path(p).name for p, _ in shards]
    if not names:
        raise ValueError("no shards were written")
    first, last = names[0], names[-1]
    m1, m2 = re.search(r"(\d+)\.tar$", first), re.search(r"(\d+)\.tar$", last)
    prefix = first[: m1.start()]
    spec = first if len(names) == 1 else f"{prefix}{{{m1.group(1)}..{m2.group(1)}}}.tar"
    if root is not None:
        rel = Path(shards[0][0]).parent.relative_to(root)
        spec = str(rel / spec) if str(rel) != "." else spec
    return spec


def write_index_files(
    directory: str | Path,
    splits: Mapping[str, list[tuple[str, int]]],
    name: str,
    extra: Mapping[str, object] | None = None,
) -> None:
    """Write ``sizes.json`` (basename -> count) and ``_info.json`` (timm) for a dataset directory,
    merged with the other splits already indexed there (their entries are kept; the splits written
    now replace theirs). Splits of one directory must agree on their classes."""
    directory = Path(directory)
    old_sizes = _read_json(directory / "sizes.json") or {}
    old_info = _read_json(directory / "_info.json") or {}
    replaced = {
        f for split in splits for f in (old_info.get("splits", {}).get(split) or {}).get("filenames", [])
    }
    sizes = {k: v for k, v in old_sizes.items() if k not in replaced and (directory / k).exists()}
    sizes |= {Path(p).name: n for shards in splits.values() for p, n in shards}
    for key in ("classes", "num_classes"):
        if (
            extra
            and key in extra
            and key in old_info
            and old_info[key] != extra[key]
            and set(old_info["splits"]) - set(splits)
        ):
            raise ValueError(
                f"{directory / '_info.json'}: the splits already there have other {key} than this one "
                f"({old_info[key] if key == 'num_classes' else len(old_info[key])} vs "
                f"{extra[key] if key == 'num_classes' else len(extra[key])}): write it to another directory"
            )
    info = {
        **{k: v for k, v in old_info.items() if k != "splits"},
        "name": name,
        **(extra or {}),
        "splits": {
            **{k: v for k, v in (old_info.get("splits") or {}).items() if k not in splits},
            **{
                split: {
                    "name": split,
                    "num_samples": sum(n for _, n in shards),
                    "filenames": [Path(p).name for p, _ in shards],
                    "shard_lengths": [n for _, n in shards],
                }
                for split, shards in splits.items()
            },
        },
    }

    (directory / "sizes.json").write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
    (directory / "_info.json").write_text(
        json.dumps(info, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    )


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); remove it to rewrite the index") from None
    return data if isinstance(data, dict) else None

"""Shard specs, shard sizes and which reader gets which shard.

A spec is one or more sources joined by ``::``, each a brace pattern
(``glyphs/train-{000000..000020}.tar``). URLs (``https://``, ``s3://``, ``pipe:``...) are read by
:mod:`nml.shards.remote` (retries, resumption, errors naming the URL).

The path rule (one for every path option of nml): a path you type, on the command line or in a
config, is relative to the working directory, except a data module's shard specs, which are relative
to ``data.root`` when it is set (:func:`nml.data.modules.rebase_sets`); a path stored inside a file nml wrote (the shard
specs of ``manifest.json``, the splits of ``features.json``) is relative to that file's directory
and is rebased onto it when read (:func:`rebase_spec`).

Sizes come from ``sizes.json`` (open_clip: basename -> count) or ``_info.json`` (timm: splits with
filenames and shard lengths) beside the shards, local or remote (for ``pipe:`` commands: beside
the ``.tar`` the command names); local shards without either are counted by scanning their tar
headers (logged).

Readers are identified by a global worker id ``rank * num_workers + worker``. Training cuts the
shards, shuffled by ``(seed, epoch)`` and laid end to end, into one contiguous span per reader, sized
by sample count (:func:`train_plan`); evaluation splits ``(shard, slot)`` units so that every sample
is read by exactly one reader even with fewer shards than readers.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import braceexpand

from nml.seeding import named_rng
from nml.shards.remote import index_directory, read_index_file

log = logging.getLogger(__name__)
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class Shard:
    url: str  # local path or URL (nml.shards.remote.open_shard)
    size: int  # samples in the shard
    source: int = 0  # index of the '::' source it came from


def is_local(url: str) -> bool:
    return not _URL_RE.match(url) or url.startswith("file:")


def _local_path(url: str) -> Path:
    return Path(url[5:] if url.startswith("file:") else url)


def rebase_spec(spec: str, base: str | Path) -> str:
    """``spec`` with each relative local source joined onto ``base`` (URLs and absolute paths kept)."""
    parts = []
    for part in str(spec).split("::"):
        part = part.strip()
        if is_local(part) and not _local_path(part).is_absolute():
            part = str(Path(base) / _local_path(part))
        parts.append(part)
    return "::".join(parts)


def local_directory(spec: str) -> Path | None:
    """The directory of the first source of ``spec`` if it is local (where its index files live)."""
    first = str(spec).split("::")[0].strip()
    return _local_path(first).parent if is_local(first) else None


def expand_spec(spec: str) -> list[list[str]]:
    """The shard URLs of each ``::``-separated source of ``spec``; local shards must exist."""
    if spec is None or not str(spec).strip():
        raise ValueError("empty shard spec: expected e.g. 'glyphs/train-{000000..000020}.tar'")
    sources, missing = [], []
    for part in str(spec).split("::"):
        part = part.strip()
        if not part:
            raise ValueError(f"shard spec {spec!r} has an empty source between '::' separators")
        urls = []
        for url in braceexpand.braceexpand(part):
            if is_local(url):
                p = _local_path(url)
                if not p.is_file():
                    missing.append(str(p))
                url = str(p)
            urls.append(url)
        sources.append(urls)
    if missing:
        shown = "\n  ".join(missing[:10]) + (
            f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise FileNotFoundError(
            f"shard spec {spec!r}: {len(missing)} shard file(s) missing, first {missing[0]!r} (relative "
            f"paths are relative to the working directory, {str(Path.cwd())!r}):\n  {shown}"
        )
    return sources


def _index_sizes(directory: str) -> dict[str, int]:
    """Basename -> sample count from ``sizes.json`` or ``_info.json`` in ``directory`` (may be empty)."""
    stamps = tuple(
        (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None
        for p in (Path(directory) / "_info.json", Path(directory) / "sizes.json")
    )
    return _read_index_sizes(directory, stamps)


@lru_cache(maxsize=256)
def _read_index_sizes(directory: str, stamps: tuple) -> dict[str, int]:
    d = Path(directory)
    return _parse_index_sizes(
        *[(str(p), p.read_bytes() if p.is_file() else None) for p in (d / "_info.json", d / "sizes.json")]
    )


@lru_cache(maxsize=256)
def _remote_index_sizes(directory: str) -> dict[str, int]:
    """Basename -> sample count from the index files at a remote ``directory`` (read once per process)."""
    urls = [f"{directory}/_info.json", f"{directory}/sizes.json"]
    return _parse_index_sizes(*[(u, read_index_file(u)) for u in urls])


def _parse_index_sizes(
    info: tuple[str, bytes | None], sizes_json: tuple[str, bytes | None]
) -> dict[str, int]:
    """Sizes from the (name, bytes or None) of an ``_info.json`` and a ``sizes.json``."""
    sizes: dict[str, int] = {}
    name, data = info
    if data is not None:
        try:
            for split in json.loads(data).get("splits", {}).values():
                sizes.update(zip(split.get("filenames", []), split.get("shard_lengths", []), strict=False))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ValueError(f"{name}: not a timm _info.json ({e})") from e
    name, data = sizes_json
    if data is not None:
        try:
            sizes.update({k: int(v) for k, v in json.loads(data).items()})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, ValueError) as e:
            raise ValueError(f"{name}: expected a JSON object of shard basename -> sample count ({e})") from e
    return sizes


class UnreadableShard(ValueError):
    """A shard whose tar structure cannot be read to the end (``samples``: the readable ones)."""

    def __init__(self, message: str, samples: int):
        super().__init__(message)
        self.samples = samples


def count_tar_samples(path: str | Path) -> int:
    """Samples (distinct keys, as webdataset groups them) in a local tar, reading headers only.
    A tar that breaks off raises :class:`UnreadableShard` naming it, with the samples before the
    break (the last one, possibly incomplete, not counted)."""
    keys, last = 0, None
    try:
        with tarfile.open(path, "r") as tar:
            for m in tar:
                if not m.isreg() or "/" not in m.name and m.name.startswith("__"):
                    continue
                base = Path(m.name).name.split(".", 1)[0]
                key = str(Path(m.name).parent / base)
                if key != last:
                    keys, last = keys + 1, key
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        readable = max(keys - 1, 0)
        raise UnreadableShard(
            f"shard {str(path)!r} is not a readable tar ({type(e).__name__}: {e or 'empty'}); "
            f"{readable} complete sample(s) before the break",
            readable,
        ) from e
    return keys


def shard_sizes(urls: list[str], strict: bool = False) -> list[int]:
    """Sample counts of ``urls``: from index files beside them, else by scanning local tars. A
    corrupt tar counts its readable samples, with a warning naming it (``strict``: an error)."""
    out, scanned, broken = [], 0, 0
    for url in urls:
        if is_local(url):
            directory, name = url.rsplit("/", 1) if "/" in url else (".", url)
            size = _index_sizes(directory).get(name)
        else:
            directory, name = index_directory(url)
            size = _remote_index_sizes(directory).get(name) if name else None
        if size is None and is_local(url):
            scanned += 1
            try:
                size = count_tar_samples(_local_path(url))
            except UnreadableShard as e:
                if strict:
                    raise
                broken += 1
                log.warning("%s: counted as %d (strict: raise instead)", e, e.samples)
                size = e.samples
        if size is None:
            raise ValueError(
                f"size of shard {url!r} unknown: put a sizes.json (basename -> count) beside the shards "
                "(for a remote or pipe: source, where it can be read: "
                f"{index_directory(url)[0] + '/sizes.json' if not is_local(url) else 'the same directory'})"
            )
        out.append(int(size))
    if scanned:
        log.info(
            "counted the samples of %d shard(s) by scanning (no sizes.json/_info.json entry)%s",
            scanned,
            f"; {broken} of them unreadable in part" if broken else "",
        )
    return out


def resolve_shards(spec: str, need_sizes: bool = True, strict: bool = False) -> list[Shard]:
    """The shards of ``spec`` with their sample counts and source index (``strict``: a corrupt
    shard is an error, not a warning)."""
    sources = expand_spec(spec)
    shards = []
    for i, urls in enumerate(sources):
        sizes = shard_sizes(urls, strict) if need_sizes else [0] * len(urls)
        shards += [Shard(u, n, i) for u, n in zip(urls, sizes, strict=True)]
    return shards


# -- who reads what ------------------------------------------------------------------------------
def epoch_shard_order(shards: list[Shard], seed: int, epoch: int) -> list[Shard]:
    """All shards, shuffled by (seed, epoch): the same order on every rank and worker."""
    order = list(shards)
    named_rng("shards", seed, epoch).shuffle(order)
    return order


@dataclass(frozen=True)
class Span:
    """Samples ``[start, stop)`` of a shard, in shard order."""

    shard: Shard
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ReaderPlan:
    """What one training reader yields in one epoch: its ``spans`` of the pass (disjoint from every
    other reader's), then repeats up to ``batches`` full batches. A reader whose share of the pass is
    empty repeats ``fallback`` (the first samples of the pass)."""

    spans: tuple[Span, ...]
    batches: int
    fallback: tuple[Span, ...] = ()

    @property
    def samples(self) -> int:
        return sum(s.size for s in self.spans)


def rank_batches(samples: int, batch_size: int, world_size: int) -> int:
    """Full batches every rank yields in one pass over ``samples`` (the fewest that cover them)."""
    return -(-samples // (batch_size * world_size))


def worker_batches(batches: int, workers: int, slot: int) -> int:
    """The share of a rank's ``batches`` that worker ``slot`` yields (DataLoader round-robin order)."""
    return batches // workers + (slot < batches % workers)


def train_plan(
    shards: list[Shard],
    seed: int,
    epoch: int,
    world_size: int,
    workers: int,
    batch_size: int,
    num_samples: int | None = None,
) -> list[ReaderPlan]:
    """Every reader's part of one training epoch (index: ``rank * workers + worker``).

    The shards, shuffled by (seed, epoch), are laid end to end and the first ``num_samples`` (all by
    default) cut into contiguous spans, one per reader, sized so that each rank yields
    :func:`rank_batches` full batches: every sample once, plus the fewest repeats that fill the last
    batches (spread evenly over the readers; a shard may be split between readers)."""
    total = sum(s.size for s in shards)
    n = total if num_samples is None else int(num_samples)
    if not 0 < n <= total:
        raise ValueError(f"training epoch of {n} samples from shards holding {total}: expected 1..{total}")
    per_rank = rank_batches(n, batch_size, world_size)
    batches = [worker_batches(per_rank, workers, r % workers) for r in range(world_size * workers)]
    active = [r for r, b in enumerate(batches) if b]
    padding = sum(batches) * batch_size - n
    share = [0] * len(batches)
    for i, r in enumerate(active):
        share[r] = batches[r] * batch_size - (
            padding // len(active) + (i >= len(active) - padding % len(active))
        )
    order = epoch_shard_order(shards, seed, epoch)

    def cut(start: int, size: int) -> tuple[Span, ...]:
        spans, offset = [], 0
        for s in order:
            lo, hi = max(start, offset), min(start + size, offset + s.size)
            if lo < hi:
                spans.append(Span(s, lo - offset, hi - offset))
            offset += s.size
            if offset >= start + size:
                break
        return tuple(spans)

    plans, start = [], 0
    for r, b in enumerate(batches):
        fallback = cut(0, min(n, b * batch_size)) if b and share[r] <= 0 else ()
        plans.append(ReaderPlan(cut(start, max(share[r], 0)), b, fallback))
        start += max(share[r], 0)
    return plans


@dataclass(frozen=True)
class EvalUnit:
    shard: Shard
    slot: int  # read samples with index % slots == slot
    slots: int

    @property
    def size(self) -> int:
        return len(range(self.slot, self.shard.size, self.slots))


def eval_units(shards: list[Shard], num_readers: int) -> list[EvalUnit]:
    """(shard, slot) units: shards split into enough slots that every reader has work when possible."""
    slots = max(1, -(-num_readers // max(1, len(shards))))
    return [EvalUnit(s, j, slots) for s in shards for j in range(slots)]


def eval_assignment(units: list[EvalUnit], reader: int, num_readers: int) -> list[EvalUnit]:
    """Units of one reader, balanced greedily by sample count (deterministic, disjoint, covering)."""
    loads = [0] * num_readers
    mine: list[list[EvalUnit]] = [[] for _ in range(num_readers)]
    for i, u in sorted(enumerate(units), key=lambda t: (-t[1].size, t[0])):
        r = min(range(num_readers), key=lambda k: (loads[k], k))
        loads[r] += u.size
        mine[r].append((i, u))
    return [u for _, u in sorted(mine[reader], key=lambda t: t[0])]

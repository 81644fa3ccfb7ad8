"""LightningDataModules streaming WebDataset shards: classification and image-text.

Both default to the embedded benchmark (``data/embedded``, or ``$NML_DATA``; build it with
``nml data embedded --out data/embedded``): ``task: pretraining`` trains on the glyph corpus and
tests on the held-out fonts (``id``) and their corruptions (``ood``); any other task name from the
benchmark's ``manifest.json`` (``greek``, ``print_to_mnist`` ...) selects that downstream task.
A downstream task's test suite also holds the test sets of every other task trained on the same
split (``glyphs_heldout``: the held-out fonts as ID plus their corruptions as OOD). An explicit
``train`` spec replaces the task (its validation and test sets too). Paths follow nml's one rule: relative to the
working directory when you type them, relative to ``manifest.json`` for the task's own shards
(:mod:`nml.shards.spec`). In YAML::

    data:
      class_path: nml.data.modules.ClassificationShards
      init_args:
        noise: {kind: symmetric, rate: 0.3}
        test:
          - {name: my_set, shards: /data/my-{000..009}.tar, group: ood}

Validation and test loaders evaluate every sample exactly once across ranks; batches carry a
``valid`` mask (padding on ranks with fewer batches). Names of the loaders, in order, are in
``val_sets`` / ``test_sets`` so that modules can log ``test/<group>/<name>/top1``.

Options come in three typed groups (:mod:`nml.data.options`): ``loader`` (batch sizes, workers),
``stream`` (resampling, shard subsets, shuffle buffer, member keys, strictness) and ``image``.

Transforms: on the embedded benchmark, glyph-safe defaults (no flips, no centre crop:
:mod:`nml.data.transforms`); on your own shards, timm's / open_clip's own defaults (flips, crop
0.875 ...), with the backbone's ``crop_pct`` for evaluation. ``image.train_transform`` /
``image.eval_transform`` (timm ``create_transform`` arguments) override either.
``image.reduced_decode`` (on by default): a JPEG at least twice the size the transform needs is
decoded at 1/2, 1/4 or 1/8 scale (PIL ``draft``; see :func:`~nml.data.transforms.min_decode_side`),
which leaves the transform's output at full detail. ``image.normalize_on_device`` (on by default,
as timm's prefetcher): training batches carry uint8 images, a quarter of the bytes through the
workers' shared memory, and are scaled and normalised on the training device
(``on_after_batch_transfer``) instead of in the workers. ``image.decode_on_device`` (off by
default): training JPEGs are decoded where the model trains (nvJPEG on a GPU), after the workers
drew each view's crop and flip (:class:`~nml.data.device_decode.DeviceDecoder`; crop, resize and
flip only).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule

from nml.data.inputs import ImageInputs, Inputs, TextInputs
from nml.data.loading import IteratedAsIs, fit_progress, share_cores_with_workers
from nml.data.modalities import get_modality, modality_of
from nml.data.options import ImageOptions, LoaderOptions, StreamOptions
from nml.data.pipeline import ShardLoader, StreamConfig, collate
from nml.noise.config import NoiseConfig
from nml.noise.kinds import kinds_that_corrupt, noise_kind
from nml.shards.manifest import (
    MANIFEST,
    EvalSet,
    class_prompts,
    info_num_classes,
    load_manifest,
    prompt_fields,
    read_info,
    resolve_classes,
    task_sets,
)
from nml.shards.members import MemberSpec
from nml.shards.spec import expand_spec, rebase_spec, resolve_shards
from nml.typed_options import as_options

log = logging.getLogger(__name__)


def load_class_names(spec: str | None) -> tuple[list[str], dict] | None:
    """``class_names``: ``imagenet`` (open_clip's ImageNet-1k names and OpenAI's 80 prompt templates),
    or a file with one name per line (``.txt``) or a JSON list; for sets whose ``_info.json`` has a
    class count but no names (timm's ImageNet shards). Returns (names, an ``_info``-style dict)."""
    if spec is None:
        return None
    if spec == "imagenet":
        import open_clip

        templates = [t("{name}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
        names = list(open_clip.IMAGENET_CLASSNAMES)
        return names, {"prompts": {"templates": templates, "classes": [[{"name": n}] for n in names]}}
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"class_names: expected 'imagenet' or a file of names, got {spec!r} (no such file)")
    text = path.read_text(encoding="utf-8-sig")
    names = (
        json.loads(text) if path.suffix == ".json" else [ln.strip() for ln in text.splitlines() if ln.strip()]
    )
    if not isinstance(names, list) or not names:
        raise ValueError(f"class_names {spec!r}: expected a non-empty list of class names")
    return [str(n) for n in names], {}


def rebase_sets(root: str, train: str | None, val: str | None, test: list | None):
    """``train`` / ``val`` / ``test`` with their relative local shard specs joined onto ``root``
    (absolute paths and URLs kept): a config names its shards once, relative to ``data.root``, and
    ``--data.root DIR`` moves them all."""
    train = rebase_spec(train, root) if train is not None else None
    val = rebase_spec(val, root) if val is not None else None
    if test is not None:
        test = [
            replace(s, shards=rebase_spec(s.shards, root))
            if isinstance(s, EvalSet)
            else {**s, "shards": rebase_spec(s["shards"], root)}
            if isinstance(s, dict) and "shards" in s
            else s
            for s in test
        ]
    return train, val, test


class ShardDataModule(LightningDataModule):
    """Shared logic of the streaming DataModules (see the module docstring): the sets, classes,
    loaders and evaluation suite. What differs per modality is the module's ``inputs``
    (:mod:`nml.data.inputs`), built by each subclass; its modality (:mod:`nml.data.modalities`)
    gives the default root."""

    modality = "image"  # a name of nml.data.modalities: where the benchmark is when root is unset
    noise_target = "label"  # what its noise kinds corrupt (NoiseKind.corrupts)
    inputs: Inputs

    def __init__(
        self,
        root: str | None = None,
        task: str | None = None,
        train: str | None = None,
        val: str | None = None,
        test: list[EvalSet] | None = None,
        num_classes: int | None = None,
        class_names: str | None = None,
        seed: int = 0,
        noise: NoiseConfig | None = None,
        loader: LoaderOptions | None = None,
        stream: StreamOptions | None = None,
    ):
        """
        Args:
            root: The data directory: where the benchmark's ``manifest.json`` is (default: the
                modality's, ``data/embedded`` or ``$NML_DATA`` for images) and, when set, what the
                relative shard specs of ``train`` / ``val`` / ``test`` are relative to (unset: the
                working directory).
            task: A benchmark task (``pretraining``, ``greek``, ...): its shards and test sets.
            train / val: Shard specs; ``train`` replaces the task (its validation and test sets too).
            test: Named evaluation sets (``{name, shards, group, num_classes}``).
            num_classes: Classes of the training labels (default: the task's or ``_info.json``'s).
            class_names: ``imagenet`` or a file of names, for sets whose ``_info.json`` has none.
            seed: Seeds the shard order, shuffling, augmentation and (unless ``noise.seed``) the noise.
            noise: The label noise of the training stream.
            loader / stream: The option groups of :mod:`nml.data.options`.
        """
        super().__init__()
        self.root = root if root is not None else get_modality(self.modality).default_root()
        if root is not None:  # the one rule for a config's shards: relative to data.root when it is set
            train, val, test = rebase_sets(root, train, val, test)
        self.loader = replace(as_options(LoaderOptions, loader, "data.loader"))
        self.stream = replace(as_options(StreamOptions, stream, "data.stream"))
        self.seed, self.noise = seed, noise or NoiseConfig()
        if noise_kind(self.noise.kind).corrupts not in (None, self.noise_target):
            raise ValueError(
                f"{type(self).__name__}: noise.kind={self.noise.kind!r} does not corrupt {self.noise_target}s; "
                f"expected none or one of {kinds_that_corrupt(self.noise_target)}"
            )
        self.named = load_class_names(class_names)  # (names, info) for sets that have none

        task_classes = None
        for given in (train, val):  # a mistyped path is named now, not as a missing class count later
            if given is not None:
                expand_spec(given)
        if train is not None:  # your shards win over a task (a shipped config's task: pretraining)
            if task is not None:
                log.info(
                    "data.train is given: data.task %r is not used (nor its validation and test sets; "
                    "give data.val / data.test for yours)",
                    task,
                )
            task = None
        else:
            sets = task_sets(load_manifest(self.root), task or "pretraining", self.root)
            train, val = sets["train"], val or sets["val"]
            test = test if test is not None else sets["test"]
            task, task_classes = task or "pretraining", sets["classes"]
        self.task = task
        self.train_spec, self.val_spec = train, val
        self.classes, self._info, self.num_classes = resolve_classes(
            task_classes, [train, val], self.named, num_classes
        )
        self.val_sets = [EvalSet("val", val, "id", self.num_classes)] if val else []
        self.test_sets = [
            s if isinstance(s, EvalSet) else EvalSet(**s)  # plain dicts from Python callers
            for s in (test or [])
        ]
        names = [s.name for s in self.test_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"test set names must be unique, got {names}")
        self.rank, self.world_size = 0, 1
        self._loaders: dict[str, Any] = {}

    @property
    def batch_size(self) -> int:
        """Training samples per batch and rank (``loader.batch_size``; :class:`TrainingData`)."""
        return self.loader.batch_size

    @property
    def glyph_safe(self) -> bool:
        """Glyph-safe transform defaults: on the embedded benchmark (a task), not on your shards."""
        return self.task is not None

    def describe(self) -> dict:
        """What a model trained on this module saw (stored in checkpoints and exports)."""
        from nml.checksums import file_sha256

        manifest = Path(self.root) / MANIFEST
        noise = self.noise.describe() | {
            "seed": self.noise.seed if self.noise.seed is not None else self.seed
        }
        return {
            "datamodule": type(self).__name__,
            "root": str(self.root),
            "task": self.task,
            "train": self.train_spec,
            "train_shards": self.stream.train_shards,
            "num_classes": self.num_classes,
            "noise": noise,
            "seed": self.seed,
            **self.inputs.describe(),
            "manifest_sha256": file_sha256(manifest) if manifest.is_file() else None,
        }

    feature_dim = None  # batches hold the modality's inputs, not features (TrainingData)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        skipped = self.inputs.before_transfer(batch, device)
        if skipped and "train" in self._loaders:  # counted, as the CPU path counts its drops
            self._loaders["train"].count_dropped(skipped)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.inputs.after_transfer(batch)

    def configure_views(self, views: int, augment: bool) -> None:
        """What a model asks of its training batches (:meth:`ImageInputs.configure_views`)."""
        self.inputs.configure_views(views, augment)

    def match_preprocessing(self, *args, **kwargs) -> None:
        """Adopt a backbone's preprocessing where unset (:meth:`ImageInputs.match_preprocessing`)."""
        self.inputs.match_preprocessing(*args, **kwargs)

    def members(self, num_classes: int | None) -> MemberSpec:
        """What the evaluation and extraction streams read (labels checked against ``num_classes``)."""
        return self.inputs.members(self.stream, num_classes)

    def train_members(self) -> MemberSpec:
        return self.members(self.num_classes)

    def train_collate(self):
        return collate

    # -- Lightning -----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Capture (global rank, world size) here: workers cannot ask torch.distributed."""
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        self._loaders = {}

    def teardown(self, stage: str | None = None) -> None:
        """Give torch back the threads :meth:`train_dataloader` left to the loader workers."""
        threads = self.__dict__.pop("_threads_before_fit", None)
        if threads is not None:
            torch.set_num_threads(threads)

    def _stream(self, spec: str, mode: str, members: MemberSpec, **kw) -> StreamConfig:
        train, stream = mode == "train", self.stream
        shards = resolve_shards(spec, strict=stream.strict)
        if train and stream.train_shards is not None:
            if stream.train_shards > len(shards):
                raise ValueError(
                    f"data.stream.train_shards={stream.train_shards}, but {spec!r} has only {len(shards)} shards"
                )
            shards = shards[: stream.train_shards]
        return StreamConfig(
            shards=shards,
            members=members,
            mode=mode,
            batch_size=self.loader.batch_size if train else self.eval_batch_size,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.loader.num_workers,
            noise=self.noise if train else NoiseConfig(),
            resampled=stream.resampled and train,
            weights=stream.weights if train else None,
            num_samples=stream.train_samples if train else None,
            shuffle_buffer=stream.shuffle_buffer,
            strict=stream.strict,
            **self.inputs.stream_settings(train),
            **kw,
        )

    def train_samples_per_epoch(self) -> int:
        """Training samples in one epoch, over all ranks: ``stream.train_samples`` when set (resampled
        streams), else the sizes of the training shards it reads (``stream.train_shards`` of them)."""
        if self.stream.train_samples is not None:
            return int(self.stream.train_samples)
        shards = resolve_shards(self.train_spec, strict=self.stream.strict)
        return sum(s.size for s in shards[: self.stream.train_shards])

    @property
    def eval_batch_size(self) -> int:
        return self.loader.eval_batch_size or self.loader.batch_size

    def extraction_loader(self, spec: str, views: int = 0, seed: int = 0) -> ShardLoader:
        """Every sample of ``spec`` once, in order, on one process: with the eval transform
        (``views=0``) or as ``views`` augmented views seeded per (seed, sample, view)."""
        members = self.members(None)
        cfg = replace(
            self._stream(spec, "eval", members, collate=collate),
            rank=0,
            world_size=1,
            seed=seed,
            **self.inputs.extraction_settings(views),
        )
        return self._loader(cfg, persistent=False)

    def _loader(self, cfg: StreamConfig, persistent: bool = True, **kw) -> ShardLoader:
        return ShardLoader(
            cfg,
            persistent_workers=self.loader.persistent_workers and persistent,
            pin_memory=self.loader.pin_memory,
            **kw,
        )

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else self._loaders["train"].epoch

    def _progress(self) -> tuple[int, int]:
        return fit_progress(self.trainer)

    def train_dataloader(self) -> ShardLoader:
        if not self.train_spec:
            raise ValueError(f"{type(self).__name__}: no training shards (set data.train or data.task)")
        cfg = self._stream(self.train_spec, "train", self.train_members(), collate=self.train_collate())
        if self.trainer is not None:
            threads = torch.get_num_threads()
            if share_cores_with_workers(self.loader.num_workers, self.trainer.strategy.root_device.type):
                self._threads_before_fit = threads  # given back in teardown
        loader = self._loader(
            cfg, epoch_fn=self._epoch, progress_fn=self._progress if self.trainer is not None else None
        )
        self._loaders["train"] = loader
        log.info(
            "train: %d shards, %d samples per epoch%s, %d batches of %d per rank (%d ranks x %d workers)%s",
            len(cfg.shards),
            cfg.epoch_samples,
            " (drawn with replacement)"
            if cfg.resampled
            else ("" if cfg.epoch_samples == cfg.total_samples else f" of {cfg.total_samples}"),
            len(loader),
            cfg.batch_size,
            cfg.world_size,
            cfg.workers,
            f", noise {self.noise.describe()}" if self.noise.active else "",
        )
        return loader

    def eval_loader(self, s: EvalSet, persistent: bool = False) -> ShardLoader:
        """A loader over one evaluation set: every sample once across ranks, ``valid`` mask."""
        members = self.members(self.num_classes_of(s))
        return self._loader(self._stream(s.shards, "eval", members, collate=collate), persistent)

    def num_classes_of(self, s: EvalSet) -> int | None:
        """The set's own count (given, or its _info.json's), else the training data's."""
        return s.num_classes or info_num_classes(read_info(s.shards)) or self.num_classes

    def _set_info(self, s: EvalSet) -> tuple[list[str] | None, dict | None]:
        """(class names, _info.json) of an evaluation set: its own _info.json, else the training
        data's when the class count fits."""
        info = read_info(s.shards)
        if info is not None and isinstance(info.get("classes"), list):
            return [str(c) for c in info["classes"]], info
        if self.classes is not None and len(self.classes) == self.num_classes_of(s):
            return self.classes, self._info
        if self.named is not None and len(self.named[0]) == self.num_classes_of(s):
            return self.named
        return None, None

    def classes_of(self, s: EvalSet) -> list[str] | None:
        """The class names of an evaluation set, if known."""
        return self._set_info(s)[0]

    def prompts_of(self, s: EvalSet | None, templates: list[str] | None = None) -> list[list[str]] | None:
        """Zero-shot prompts per class of an evaluation set (None: the training data's classes)."""
        classes, info = self._set_info(s) if s is not None else (self.classes, self._info)
        if classes is None:
            return None
        data_templates, fields = prompt_fields(info, classes)
        return class_prompts(templates or data_templates, fields)

    def _eval_loaders(self, sets: list[EvalSet], persistent: bool) -> list[ShardLoader]:
        return [self.eval_loader(s, persistent) for s in sets]

    def val_dataloader(self) -> list[ShardLoader]:
        return self._eval_loaders(self.val_sets, persistent=True)  # runs every epoch

    def test_dataloader(self) -> list[ShardLoader]:
        return self._eval_loaders(self.test_sets, persistent=False)  # one pass; many sets

    def predict_dataloader(self) -> list[IteratedAsIs]:
        """``nml predict`` predicts the test sets, sample by sample."""
        return [IteratedAsIs(loader) for loader in self.test_dataloader()]


class ClassificationShards(ShardDataModule):
    """Image classification shards (timm style: ``jpg;png;jpeg;webp`` + ``cls``) with label noise.

    Training batches: ``image``, ``target`` (noisy), ``clean_target``, ``is_noisy``, ``valid``, ``key``.

    Args (besides those of ShardDataModule):
        image: The images' preprocessing (:class:`~nml.data.options.ImageOptions`).
    """

    transforms = "timm"  # the transform family (nml.data.transforms)

    def __init__(self, *args, image: ImageOptions | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # a copy: models adopt settings into it
        options = replace(as_options(ImageOptions, image, "data.image"))
        self.inputs = ImageInputs(self.transforms, options, glyph_safe=self.glyph_safe)


class TextClassificationShards(ShardDataModule):
    """Text classification shards (``txt`` + ``cls``, optionally ``json``) with label noise: the same
    pipeline, noise models and guarantees as images (noise fixed per sample, exact evaluation,
    mid-epoch resume). The default root is the embedded text benchmark (``data/embedded_text``, built
    by ``nml data embedded_text``).

    Batches: ``text`` (an object array of the documents, which the text backbone tokenises), ``target``
    (noisy), ``clean_target``, ``is_noisy``, ``valid``, ``key``. A document must be non-empty UTF-8;
    anything else raises an error naming the shard and sample. Text has no augmentation: one view.

    Args (besides those of ShardDataModule):
        text_key: The document's member (``txt``).
    """

    modality = "text"

    def __init__(self, *args, text_key: str = "txt", **kwargs):
        super().__init__(*args, **kwargs)
        self.inputs = TextInputs(text_key)


def benchmark_data_module(root: str | None, task: str, **kwargs) -> ShardDataModule:
    """The data module of a benchmark task: its manifest's ``modality``'s (:mod:`nml.data.modalities`;
    image classification shards when it names none)."""
    root = root if root is not None else get_modality("image").default_root()  # a task of $NML_DATA's
    return modality_of(root).data_module_class()(root=root, task=task, **kwargs)


class ImageTextShards(ClassificationShards):
    """Image-text shards (img2dataset style: ``jpg`` + ``txt``) with caption-swap noise.

    Training batches: ``image``, ``text`` (token ids), ``is_noisy``, ``valid``, ``key``.
    Validation / test sets are labelled image sets (``cls``) for zero-shot classification.

    Args (besides those of ClassificationShards):
        caption_key: Caption member: ``txt``, or ``json:<field>`` for a field of the ``.json`` member.
        tokenizer: open_clip model name whose tokenizer encodes captions (the BPE vocab ships in
            open_clip's wheel; ``hf-hub:`` names would download and are not the default).
        context_length: Tokens per caption (None: the tokenizer's default, 77 for CLIP).
    """

    transforms = "open_clip"
    noise_target = "caption"

    def __init__(
        self,
        *args,
        caption_key: str = "txt",
        tokenizer: str = "ViT-B-32",
        context_length: int | None = None,
        **kwargs,
    ):
        self.caption_key, self.tokenizer_name, self.context_length = caption_key, tokenizer, context_length
        super().__init__(*args, **kwargs)

    def train_members(self) -> MemberSpec:
        return MemberSpec(self.stream.image_keys, None, None, self.caption_key, require_caption=True)

    def train_collate(self):
        import open_clip

        return TextCollate(open_clip.get_tokenizer(self.tokenizer_name, context_length=self.context_length))


class TextCollate:
    """Image-text batch: image, text (token ids), is_noisy, valid, key."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, records: list[dict]) -> dict[str, Any]:
        batch = collate(records)
        batch["text"] = self.tokenizer([r["caption"] for r in records])
        if "cls" in records[0]:
            batch["label"] = torch.tensor([r["cls"] for r in records], dtype=torch.long)
        return batch

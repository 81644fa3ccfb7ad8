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

from nml.data.loading import IteratedAsIs, fit_progress, share_cores_with_workers
from nml.data.options import ImageOptions, LoaderOptions, StreamOptions
from nml.data.pipeline import ShardLoader, StreamConfig, collate
from nml.data.transforms import (
    DEFAULT_IMAGE_SIZE,
    TransformFamily,
    build_transform,
    get_transforms,
    normalize,
)
from nml.noise.config import NoiseConfig
from nml.noise.kinds import kinds_that_corrupt, noise_kind
from nml.shards.manifest import (
    MANIFEST,
    EvalSet,
    class_prompts,
    default_root,
    default_text_root,
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
    """Shared logic of the streaming DataModules (see the module docstring)."""

    library = "timm"

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
        image: ImageOptions | None = None,
    ):
        """
        Args:
            root: The data directory: where the benchmark's ``manifest.json`` is (default
                ``data/embedded`` or ``$NML_DATA``) and, when set, what the relative shard specs of
                ``train`` / ``val`` / ``test`` are relative to (unset: the working directory).
            task: A benchmark task (``pretraining``, ``greek``, ...): its shards and test sets.
            train / val: Shard specs; ``train`` replaces the task (its validation and test sets too).
            test: Named evaluation sets (``{name, shards, group, num_classes}``).
            num_classes: Classes of the training labels (default: the task's or ``_info.json``'s).
            class_names: ``imagenet`` or a file of names, for sets whose ``_info.json`` has none.
            seed: Seeds the shard order, shuffling, augmentation and (unless ``noise.seed``) the noise.
            noise: The label noise of the training stream.
            loader / stream / image: The option groups of :mod:`nml.data.options`.
        """
        super().__init__()
        self.root = root if root is not None else self.default_root()
        if root is not None:  # the one rule for a config's shards: relative to data.root when it is set
            train, val, test = rebase_sets(root, train, val, test)
        self.loader = replace(as_options(LoaderOptions, loader, "data.loader"))
        self.stream = replace(as_options(StreamOptions, stream, "data.stream"))
        self.image = replace(as_options(ImageOptions, image, "data.image"))  # a copy: models adopt settings
        self.seed, self.noise = seed, noise or NoiseConfig()
        self._device_decoder = None  # decode_on_device: built once (device_decoder())
        self._check_noise_kind()
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

    @staticmethod
    def default_root() -> str:
        """Where the benchmark is when ``root`` is unset: ``$NML_DATA`` or data/embedded."""
        return default_root()

    @property
    def batch_size(self) -> int:
        """Training samples per batch and rank (``loader.batch_size``; :class:`TrainingData`)."""
        return self.loader.batch_size

    @property
    def transform_family(self) -> TransformFamily:
        return get_transforms(self.library)

    def describe(self) -> dict:
        """What a model trained on this module saw (stored in checkpoints and exports)."""
        from nml.checksums import file_sha256

        manifest = Path(self.root) / MANIFEST
        noise = self.noise.describe() | {
            "seed": self.noise.seed if self.noise.seed is not None else self.seed
        }
        mean, std = self.normalization()
        return {
            "datamodule": type(self).__name__,
            "root": str(self.root),
            "task": self.task,
            "train": self.train_spec,
            "train_shards": self.stream.train_shards,
            "num_classes": self.num_classes,
            "noise": noise,
            "seed": self.seed,
            "image_size": self.input_size,
            "mean": list(mean),
            "std": list(std),
            "crop_pct": self.eval_crop_pct,
            "manifest_sha256": file_sha256(manifest) if manifest.is_file() else None,
        }

    feature_dim = None  # batches hold images (TrainingData)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) the images are normalised with: as configured (or adopted from the backbone),
        else the library's default."""
        default_mean, default_std = self.transform_family.normalization()
        return tuple(self.image.mean or default_mean), tuple(self.image.std or default_std)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``decode_on_device``: training images arrive encoded, with each view's crop and flip
        drawn in the worker; decoded, cropped and normalised here on the training device."""
        if isinstance(batch, dict) and "encoded" in batch:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            keys = list(batch["key"])
            failed = self.device_decoder().decode(batch, device)
            if failed:  # skipped and counted, their places taken by a repeat, as on the CPU path
                log.warning("decode_on_device: skipped undecodable images %s", [keys[i] for i in failed])
                if "train" in self._loaders:
                    self._loaders["train"].count_dropped(len(failed))
        return batch

    def device_decoder(self):
        """The :class:`~nml.data.device_decode.DeviceDecoder` of the training transform, built once
        (``decode_on_device``); the same object goes to the workers and decodes on the device."""
        if self._device_decoder is None:
            from nml.data.device_decode import DeviceDecoder

            self._device_decoder = DeviceDecoder(self.transform(self.image.augment is not False))
        return self._device_decoder

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training images arrive as uint8 (``normalize_on_device``): scaled to [0, 1] and
        normalised here, on the training device (:func:`~nml.data.transforms.normalize`: the same
        result as the workers' ``ToTensor`` + ``Normalize`` on the CPU)."""
        image = batch.get("image") if isinstance(batch, dict) else None
        if image is not None and image.dtype == torch.uint8:
            batch["image"] = normalize(image, *self.normalization())
        return batch

    @property
    def input_size(self) -> int:
        return self.image.image_size or DEFAULT_IMAGE_SIZE

    def configure_views(self, views: int, augment: bool) -> None:
        """What a model asks of its training batches (tuning: LP one unaugmented view, NMTune two
        augmented views); settings given explicitly in the data config win."""
        if self.image.views is None:
            self.image.views = views
        if self.image.augment is None:
            self.image.augment = augment
        log.info(
            "training batches: %d view(s), %s",
            self.image.views,
            "augmented" if self.image.augment else "eval transform",
        )

    @property
    def eval_crop_pct(self) -> float | None:
        """timm's evaluation centre-crop fraction: as configured, else 1 (glyphs) or timm's 0.875
        (None for open_clip's transform, which resizes and crops to the image size)."""
        return self.transform_family.eval_crop_pct(self.image.eval_transform, self.glyph_safe)

    @property
    def glyph_safe(self) -> bool:
        """Glyph-safe transform defaults: on the embedded benchmark (a task), not on your shards."""
        return self.task is not None

    def match_preprocessing(
        self, image_size: int | None, mean, std, source: str, crop_pct: float | None = None
    ) -> None:
        """Adopt a backbone's input size and normalisation where the config left them unset (and, on
        your own shards, its evaluation ``crop_pct``); warn where an explicit setting differs from
        what the backbone was trained with."""
        adopted = []
        takes_crop = self.transform_family.has_eval_crop and not self.glyph_safe
        if crop_pct is not None and takes_crop and "crop_pct" not in (self.image.eval_transform or {}):
            self.image.eval_transform = {**(self.image.eval_transform or {}), "crop_pct": float(crop_pct)}
            adopted.append(f"eval crop_pct={float(crop_pct)}")
        for name, value in (("image_size", image_size), ("mean", mean), ("std", std)):
            if value is None:
                continue
            mine = getattr(self.image, name)
            value = value if name == "image_size" else tuple(float(v) for v in value)
            if mine is None:
                setattr(self.image, name, value)
                adopted.append(f"{name}={value}")
            elif (mine if name == "image_size" else tuple(float(v) for v in mine)) != value:
                log.warning(
                    "data.image.%s=%s differs from the %s the backbone %s was trained with",
                    name,
                    mine,
                    value,
                    source,
                )
        if adopted:
            log.info("data: %s from the backbone %s (unset in the data config)", ", ".join(adopted), source)

    # -- subclass hooks ------------------------------------------------------------------------
    def _check_noise_kind(self) -> None:
        if noise_kind(self.noise.kind).corrupts not in (None, "label"):
            raise ValueError(
                f"{type(self).__name__}: noise.kind={self.noise.kind!r} is not a label noise; "
                f"expected none or one of {kinds_that_corrupt('label')} (caption noise is for ImageTextShards)"
            )

    def members(self, num_classes: int | None) -> MemberSpec:
        """What the evaluation and extraction streams read (labels checked against ``num_classes``)."""
        return MemberSpec(self.stream.image_keys, self.stream.label_key, num_classes)

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
        train, stream, image = mode == "train", self.stream, self.image
        shards = resolve_shards(spec, strict=stream.strict)
        if train and stream.train_shards is not None:
            if stream.train_shards > len(shards):
                raise ValueError(
                    f"data.stream.train_shards={stream.train_shards}, but {spec!r} has only {len(shards)} shards"
                )
            shards = shards[: stream.train_shards]
        on_device = train and image.decode_on_device
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
            reduced_decode=image.reduced_decode,
            transform=self.transform(
                train and image.augment is not False,
                uint8=train and image.normalize_on_device and not on_device,
            ),
            device_decoder=self.device_decoder() if on_device else None,
            views=(image.views or 1) if train else 1,
            augment=image.augment if train else None,
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

    def transform(self, augment: bool, uint8: bool = False):
        """The train (augmenting) or eval transform of this module (``uint8``: ending in uint8
        tensors, normalised on the device by :meth:`on_after_batch_transfer`)."""
        return build_transform(
            self.library,
            self.input_size,
            augment,
            self.image.mean,
            self.image.std,
            self.image.train_transform if augment else self.image.eval_transform,
            glyph_safe=self.glyph_safe,
            uint8=uint8,
        )

    def check_views(self, views: int) -> None:
        """Raise now if this data cannot give ``views`` augmented views (text cannot)."""

    def extraction_loader(self, spec: str, views: int = 0, seed: int = 0) -> ShardLoader:
        """Every sample of ``spec`` once, in order, on one process: with the eval transform
        (``views=0``) or as ``views`` augmented views seeded per (seed, sample, view)."""
        members = self.members(None)
        cfg = replace(
            self._stream(spec, "eval", members, collate=collate),
            rank=0,
            world_size=1,
            seed=seed,
            transform=self.transform(views > 0),
            views=max(views, 1),
            augment=views > 0,
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
    """


class TextClassificationShards(ShardDataModule):
    """Text classification shards (``txt`` + ``cls``, optionally ``json``) with label noise: the same
    pipeline, noise models and guarantees as images (noise fixed per sample, exact evaluation,
    mid-epoch resume). The default root is the embedded text benchmark (``data/embedded_text``, built
    by ``nml data embedded_text``).

    Batches: ``text`` (an object array of the documents, which the text backbone tokenises), ``target``
    (noisy), ``clean_target``, ``is_noisy``, ``valid``, ``key``. A document must be non-empty UTF-8;
    anything else raises an error naming the shard and sample. Text has no augmentation: one view.

    Args (besides those of ClassificationShards; ``image`` options do not apply):
        text_key: The document's member (``txt``).
    """

    library = "text"

    def __init__(self, *args, text_key: str = "txt", **kwargs):
        self.text_key = text_key
        super().__init__(*args, **kwargs)

    @staticmethod
    def default_root() -> str:
        """Where the text benchmark is when ``root`` is unset: ``$NML_TEXT_DATA`` or data/embedded_text."""
        return default_text_root()

    def members(self, num_classes: int | None) -> MemberSpec:
        return MemberSpec(None, self.stream.label_key, num_classes, self.text_key, require_caption=True)

    def transform(self, augment: bool, uint8: bool = False):
        return None

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (), ()

    @property
    def input_size(self) -> None:
        return None

    @property
    def eval_crop_pct(self) -> None:
        return None

    def match_preprocessing(self, *args, **kwargs) -> None:
        """Text backbones tokenise the documents themselves: nothing to adopt."""

    def configure_views(self, views: int, augment: bool) -> None:
        if views > 1:
            raise ValueError(
                f"{views} augmented views asked of text shards: text has no augmentation; tune NMTune on "
                "cached text features (its second view: tuning.view_noise)"
            )
        self.image.views, self.image.augment = 1, False

    def check_views(self, views: int) -> None:
        if views > 0:
            raise ValueError(f"--views {views}: text has no augmented views (use --views 0)")

    def extraction_loader(self, spec: str, views: int = 0, seed: int = 0) -> ShardLoader:
        self.check_views(views)
        return super().extraction_loader(spec, 0, seed)


def benchmark_data_module(root: str | None, task: str, **kwargs) -> ShardDataModule:
    """The data module of a benchmark task: text shards when the benchmark's manifest says
    ``"modality": "text"``, else image classification shards."""
    root = root if root is not None else default_root()  # a task of $NML_DATA's benchmark
    modality = load_manifest(root).get("modality", "image")
    cls = TextClassificationShards if modality == "text" else ClassificationShards
    return cls(root=root, task=task, **kwargs)


class ImageTextShards(ShardDataModule):
    """Image-text shards (img2dataset style: ``jpg`` + ``txt``) with caption-swap noise.

    Training batches: ``image``, ``text`` (token ids), ``is_noisy``, ``valid``, ``key``.
    Validation / test sets are labelled image sets (``cls``) for zero-shot classification.

    Args (besides those of ClassificationShards):
        caption_key: Caption member: ``txt``, or ``json:<field>`` for a field of the ``.json`` member.
        tokenizer: open_clip model name whose tokenizer encodes captions (the BPE vocab ships in
            open_clip's wheel; ``hf-hub:`` names would download and are not the default).
        context_length: Tokens per caption (None: the tokenizer's default, 77 for CLIP).
    """

    library = "open_clip"

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

    def _check_noise_kind(self) -> None:
        if noise_kind(self.noise.kind).corrupts not in (None, "caption"):
            raise ValueError(
                f"ImageTextShards: noise.kind={self.noise.kind!r}: expected none or one of "
                f"{kinds_that_corrupt('caption')} (label noise is for ClassificationShards)"
            )

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

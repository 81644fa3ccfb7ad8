"""The data modules' option groups, each one typed object (as :class:`~nml.noise.config.NoiseConfig`
is): how batches are loaded, how the training stream is read, how images are decoded and
transformed. In YAML they nest under the data section::

    data:
      class_path: ClassificationShards
      init_args:
        loader: {batch_size: 128, num_workers: 4}
        stream: {shuffle_buffer: 2000}
        image: {image_size: 224, train_transform: {color_jitter: 0}}

On the command line: ``--data.loader.batch_size 128``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nml.shards.members import IMAGE_KEYS


@dataclass
class LoaderOptions:
    """How batches are loaded.

    Args:
        batch_size: Training samples per batch and rank.
        eval_batch_size: Validation / test / extraction batch size (None: ``batch_size``).
        num_workers: DataLoader worker processes per rank.
        persistent_workers: Keep the training and validation workers alive between epochs.
        pin_memory: Page-locked host memory for faster host-to-GPU copies.
    """

    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 2
    persistent_workers: bool = True
    pin_memory: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.loader.{name}: expected >= 1, got {value}")
        if self.num_workers < 0:
            raise ValueError(f"data.loader.num_workers: expected >= 0, got {self.num_workers}")


@dataclass
class StreamOptions:
    """How the training stream reads shards.

    Args:
        resampled: Draw shards with replacement (``::`` sources weighted by ``weights``) for
            ``train_samples`` samples per epoch, instead of exact passes.
        weights: Per-source weights of a ``::``-joined training spec (``resampled`` only).
        train_samples: Samples per epoch (``resampled``; or a cut of each pass).
        train_shards: Read only the first N training shards.
        shuffle_buffer: Samples in the shuffle buffer of each reader.
        image_keys: Image member extensions to try, in order, ``;``-separated.
        label_key: Member with the integer class.
        strict: Raise on an unreadable shard or image instead of skipping and counting it.
    """

    resampled: bool = False
    weights: list[float] | None = None
    train_samples: int | None = None
    train_shards: int | None = None
    shuffle_buffer: int = 1000
    image_keys: str = IMAGE_KEYS
    label_key: str = "cls"
    strict: bool = False

    def __post_init__(self) -> None:
        if self.train_shards is not None and self.train_shards < 1:
            raise ValueError(
                f"data.stream.train_shards: expected >= 1 (the first N training shards), got {self.train_shards}"
            )


@dataclass
class ImageOptions:
    """How images are decoded and transformed.

    Args:
        image_size: Input side (None: the backbone's, else the embedded benchmark's 32 px).
        mean: Normalisation mean (None: the backbone's, else the library's default).
        std: Normalisation std (None: as ``mean``).
        train_transform: timm ``create_transform`` (or open_clip ``aug_cfg``) arguments for training.
        eval_transform: The same for evaluation (``crop_pct`` ...).
        views: Training views per sample (None: what the model asks for).
        augment: Augment training views (None: what the model asks for).
        reduced_decode: Decode a JPEG at 1/2, 1/4 or 1/8 scale when the transform loses nothing.
        normalize_on_device: Training batches carry uint8 images, normalised on the training device.
        decode_on_device: Training JPEGs are decoded on the training device (nvJPEG on a GPU).
    """

    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    train_transform: dict | None = None
    eval_transform: dict | None = None
    views: int | None = None
    augment: bool | None = None
    reduced_decode: bool = True
    normalize_on_device: bool = True
    decode_on_device: bool = False


GROUPS: dict[str, type] = {"loader": LoaderOptions, "stream": StreamOptions, "image": ImageOptions}

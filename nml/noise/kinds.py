"""The kinds of noise, as registered classes: each says what it corrupts, checks its own options and
draws its own wrong label or caption; the stratified block draw that decides *which* samples are
noisy is the same for every kind and lives in :class:`~nml.noise.models.NoiseModel`.

A new kind is a subclass of :class:`LabelNoise` (draws a wrong label from the clean one and a
64-bit hash) or :class:`CaptionNoise` (picks a donor caption within the block), decorated with
:func:`register_noise_kind`; ``noise.kind: <name>`` then selects it everywhere (training, ``nml data
audit``, the study), e.g.::

    @register_noise_kind
    class Reverse(LabelNoise):
        name = "reverse"  # class c -> C - 1 - c

        def wrong_label(self, c: int, h: int) -> int:
            return self.num_classes - 1 - c

Nothing here imports torch; numpy only where a kind needs it.
"""

from __future__ import annotations

from typing import ClassVar

NOISE_KINDS: dict[str, type[NoiseKind]] = {}


def register_noise_kind(cls: type[NoiseKind]) -> type[NoiseKind]:
    """Add ``cls`` to :data:`NOISE_KINDS` under ``cls.name`` (a class decorator)."""
    if not cls.name or cls.name in NOISE_KINDS and NOISE_KINDS[cls.name] is not cls:
        raise ValueError(f"noise kind {cls.name!r}: a kind needs a name no other kind has")
    NOISE_KINDS[cls.name] = cls
    return cls


def noise_kind(name: str) -> type[NoiseKind]:
    """The registered kind ``name``, or an error naming the registered ones."""
    try:
        return NOISE_KINDS[name]
    except KeyError:
        raise ValueError(f"noise.kind: expected one of {', '.join(NOISE_KINDS)}, got {name!r}") from None


def kinds_that_corrupt(what: str | None) -> tuple[str, ...]:
    """The names of the kinds that corrupt ``what`` (``label``, ``caption``; None: nothing)."""
    return tuple(n for n, k in NOISE_KINDS.items() if k.corrupts == what)


class NoiseKind:
    """A kind of noise. ``corrupts``: ``label``, ``caption`` or None (no noise); ``options``: the
    :class:`~nml.noise.config.NoiseConfig` fields it reads besides kind, rate, seed and block (any
    other set is an error naming it)."""

    name: ClassVar[str] = ""
    corrupts: ClassVar[str | None] = None
    options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check(cls, config) -> None:
        """Refuse options this kind does not read (a kind with more rules extends this)."""
        for option in ("class_map", "matrix"):
            if getattr(config, option) is not None and option not in cls.options:
                users = [n for n, k in NOISE_KINDS.items() if option in k.options]
                raise ValueError(
                    f"noise.{option} is only used with noise.kind={' or '.join(users)} (kind is {cls.name!r})"
                )

    @classmethod
    def active(cls, config) -> bool:
        """Whether ``config`` corrupts anything."""
        return cls.corrupts is not None and config.rate > 0

    def __init__(self, config, num_classes: int | None):
        self.config, self.num_classes = config, num_classes


@register_noise_kind
class NoNoise(NoiseKind):
    name = "none"


class LabelNoise(NoiseKind):
    """Noise of class labels: a sample of clean class ``c`` is noisy with probability
    ``rates()[c]`` and then gets ``wrong_label(c, h)`` (``h``: the sample's 64-bit choice hash)."""

    corrupts = "label"

    def __init__(self, config, num_classes: int | None):
        super().__init__(config, num_classes)
        if not num_classes or num_classes < 2:
            raise ValueError(f"noise.kind={self.name} needs num_classes >= 2, got {num_classes}")

    def rates(self):
        """The probability of noise per clean class (numpy, one per class)."""
        import numpy as np

        return np.full(self.num_classes, float(self.config.rate))

    def wrong_label(self, c: int, h: int) -> int:
        raise NotImplementedError


class CaptionNoise(NoiseKind):
    """Noise of image-text pairs: a noisy sample's caption is replaced by ``donor``'s."""

    corrupts = "caption"

    def donor(self, i: int, captions: list[str], h: int) -> int:
        raise NotImplementedError


@register_noise_kind
class Symmetric(LabelNoise):
    """Uniform over the other classes."""

    name = "symmetric"

    def wrong_label(self, c: int, h: int) -> int:
        C = self.num_classes
        return (c + 1 + h % (C - 1)) % C


@register_noise_kind
class Pair(LabelNoise):
    """``class_map[c]`` (default ``c + 1 mod C``)."""

    name = "pair"
    options = ("class_map",)

    def __init__(self, config, num_classes: int | None):
        super().__init__(config, num_classes)
        cmap = config.class_map or [(c + 1) % num_classes for c in range(num_classes)]
        if len(cmap) != num_classes:
            raise ValueError(
                f"noise.class_map has {len(cmap)} entries, expected one per class ({num_classes})"
            )
        for c, t in enumerate(cmap):
            if not (0 <= int(t) < num_classes) or int(t) == c:
                raise ValueError(f"noise.class_map[{c}] = {t}: expected another class in [0, {num_classes})")
        self.class_map = [int(t) for t in cmap]

    def wrong_label(self, c: int, h: int) -> int:
        return self.class_map[c]


@register_noise_kind
class Matrix(LabelNoise):
    """Row ``c`` of a row-stochastic transition matrix without its diagonal; the rate per class is
    1 - the diagonal (so ``noise.rate`` must stay 0)."""

    name = "matrix"
    options = ("matrix",)

    @classmethod
    def check(cls, config) -> None:
        super().check(config)
        if not config.matrix:
            raise ValueError("noise.kind=matrix needs noise.matrix: a path to a C x C transition matrix")
        if config.rate:
            raise ValueError(
                "noise.rate must be 0 with noise.kind=matrix: the rate is 1 - the matrix diagonal"
            )

    @classmethod
    def active(cls, config) -> bool:
        return True

    def __init__(self, config, num_classes: int | None):
        super().__init__(config, num_classes)
        import numpy as np

        from nml.noise.matrix import load_transition_matrix

        m = load_transition_matrix(config.matrix, num_classes)
        self._rates = 1.0 - np.diag(m)
        off = m.copy()
        np.fill_diagonal(off, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            self._cdf = np.cumsum(off / off.sum(1, keepdims=True), axis=1)

    def rates(self):
        return self._rates

    def wrong_label(self, c: int, h: int) -> int:
        import numpy as np

        u = (h >> 11) / float(2**53)
        return int(min(np.searchsorted(self._cdf[c], u, side="right"), self.num_classes - 1))


@register_noise_kind
class CaptionSwap(CaptionNoise):
    """Another sample's caption from the same block, preferring one whose text differs."""

    name = "caption_swap"

    def donor(self, i: int, captions: list[str], h: int) -> int:
        n = len(captions)
        others = [j for j in range(n) if j != i and captions[j] != captions[i]] or [
            j for j in range(n) if j != i
        ]
        return others[h % len(others)]

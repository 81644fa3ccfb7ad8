"""What noise to inject (:class:`NoiseConfig`). Imports nothing heavy: the CLI reads it for --help;
the kinds are :mod:`nml.noise.kinds`; the noise itself is applied by :mod:`nml.noise.models`."""

from __future__ import annotations

from dataclasses import dataclass

from nml.noise.kinds import noise_kind


@dataclass
class NoiseConfig:
    """What noise to inject into the training stream.

    Args:
        kind: A registered noise kind (:mod:`nml.noise.kinds`): none, symmetric / pair / matrix
            (labels), or caption_swap (image-text pairs).
        rate: Fraction of corrupted samples, in [0, 1). For ``matrix`` it is implied by the matrix
            (1 - diagonal) and must be left at 0.
        seed: Seed of the noise; null uses the data seed.
        class_map: ``pair`` only: the class each class is flipped to (default ``c -> c+1 mod C``).
        matrix: ``matrix`` only: a row-stochastic C x C transition matrix, ``T[clean, noisy]``, in a
            .npy, .csv/.txt (whitespace or comma separated) or .json (list of rows) file.
        block: Samples per stratification block (see the module docstring).
    """

    kind: str = "none"
    rate: float = 0.0
    seed: int | None = None
    class_map: list[int] | None = None
    matrix: str | None = None
    block: int = 64

    def __post_init__(self) -> None:
        kind = noise_kind(self.kind)  # a name no kind has is an error listing the kinds
        if not (0.0 <= float(self.rate) < 1.0):
            raise ValueError(f"noise.rate must be in [0, 1), got {self.rate}")
        if self.block < 2:
            raise ValueError(f"noise.block must be >= 2, got {self.block}")
        kind.check(self)

    @property
    def active(self) -> bool:
        return noise_kind(self.kind).active(self)

    def describe(self) -> dict:
        d = {"kind": self.kind, "rate": self.rate, "seed": self.seed, "block": self.block}
        if self.class_map is not None:
            d["class_map"] = list(self.class_map)
        if self.matrix:
            d["matrix"] = self.matrix
        return d

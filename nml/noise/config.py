"""What noise to inject (:class:`NoiseConfig`). Imports nothing heavy: the CLI reads it for --help;
the noise itself is applied by :mod:`nml.noise.models`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NoiseKind = Literal["none", "symmetric", "pair", "matrix", "caption_swap"]
LABEL_KINDS = ("symmetric", "pair", "matrix")


@dataclass
class NoiseConfig:
    """What noise to inject into the training stream.

    Args:
        kind: none, symmetric / pair / matrix (labels), or caption_swap (image-text pairs).
        rate: Fraction of corrupted samples, in [0, 1). For ``matrix`` it is implied by the matrix
            (1 - diagonal) and must be left at 0.
        seed: Seed of the noise; null uses the data seed.
        class_map: ``pair`` only: the class each class is flipped to (default ``c -> c+1 mod C``).
        matrix: ``matrix`` only: a row-stochastic C x C transition matrix, ``T[clean, noisy]``, in a
            .npy, .csv/.txt (whitespace or comma separated) or .json (list of rows) file.
        block: Samples per stratification block (see the module docstring).
    """

    kind: NoiseKind = "none"
    rate: float = 0.0
    seed: int | None = None
    class_map: list[int] | None = None
    matrix: str | None = None
    block: int = 64

    def __post_init__(self) -> None:
        if self.kind not in ("none", *LABEL_KINDS, "caption_swap"):
            raise ValueError(
                f"noise.kind: expected none, symmetric, pair, matrix or caption_swap, got {self.kind!r}"
            )
        if not (0.0 <= float(self.rate) < 1.0):
            raise ValueError(f"noise.rate must be in [0, 1), got {self.rate}")
        if self.block < 2:
            raise ValueError(f"noise.block must be >= 2, got {self.block}")
        if self.kind == "matrix":
            if not self.matrix:
                raise ValueError("noise.kind=matrix needs noise.matrix: a path to a C x C transition matrix")
            if self.rate:
                raise ValueError(
                    "noise.rate must be 0 with noise.kind=matrix: the rate is 1 - the matrix diagonal"
                )
        elif self.matrix:
            raise ValueError(f"noise.matrix is only used with noise.kind=matrix (kind is {self.kind!r})")
        if self.class_map is not None and self.kind != "pair":
            raise ValueError(f"noise.class_map is only used with noise.kind=pair (kind is {self.kind!r})")

    @property
    def active(self) -> bool:
        return self.kind == "matrix" or (self.kind != "none" and self.rate > 0)

    def describe(self) -> dict:
        d = {"kind": self.kind, "rate": self.rate, "seed": self.seed, "block": self.block}
        if self.class_map is not None:
            d["class_map"] = list(self.class_map)
        if self.matrix:
            d["matrix"] = self.matrix
        return d

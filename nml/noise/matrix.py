"""Reading a label-noise transition matrix (``noise.kind: matrix``) from a file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_transition_matrix(path: str | Path, num_classes: int) -> np.ndarray:
    """A row-stochastic ``num_classes`` x ``num_classes`` matrix from .npy/.csv/.txt/.json."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"noise.matrix: no such file {str(p)!r}")
    try:
        if p.suffix == ".npy":
            m = np.load(p, allow_pickle=False)
        elif p.suffix == ".json":
            m = np.asarray(json.loads(p.read_text()), dtype=np.float64)
        else:
            text = p.read_text().replace(",", " ")
            m = np.asarray([[float(x) for x in line.split()] for line in text.splitlines() if line.strip()])
    except (ValueError, OSError) as e:
        raise ValueError(f"noise.matrix {str(p)!r}: cannot read a numeric matrix ({e})") from e
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (num_classes, num_classes):
        raise ValueError(
            f"noise.matrix {str(p)!r}: expected a {num_classes} x {num_classes} matrix (one row per class), "
            f"got shape {m.shape}"
        )
    if not np.isfinite(m).all():
        r, c = np.argwhere(~np.isfinite(m))[0]
        raise ValueError(f"noise.matrix {str(p)!r}: entry [{r}, {c}] = {m[r, c]} is not a finite number")
    if (m < 0).any():
        r, c = np.argwhere(m < 0)[0]
        raise ValueError(f"noise.matrix {str(p)!r}: entry [{r}, {c}] = {m[r, c]} is negative")
    bad = np.flatnonzero(np.abs(m.sum(1) - 1.0) > 1e-6)
    if bad.size:
        raise ValueError(
            f"noise.matrix {str(p)!r} is not row-stochastic: row {bad[0]} sums to {m[bad[0]].sum():.6g} "
            f"({bad.size} rows do not sum to 1)"
        )
    if (np.diag(m) >= 1.0).all():
        raise ValueError(f"noise.matrix {str(p)!r} is the identity: it corrupts nothing")
    return m

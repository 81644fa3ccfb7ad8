"""``nml spectrum``. Imports stay inside the function: this module is read for --help."""

from __future__ import annotations

import logging

log = logging.getLogger("nml.spectrum")


def spectrum(
    features: str,
    key: str | None = None,
    normalize_rows: bool = True,
    center: bool = True,
    top_k: int = 5,
    out: str | None = None,
    batch_size: int = 8192,
) -> dict:
    """Singular-value spectrum metrics of a feature matrix (SVE, LSVR, p1, top-k share, effective rank).

    Streams the rows into a float64 Gram matrix (memory O(D^2) whatever the number of rows), so it
    works on large files, e.g. embeddings from an API.

    Args:
        features: An (N, D) .npy (memory-mapped) or .npz file, or a spec of feature shards (tars of .npy vectors).
        key: .npz only: the array to use (default: the only one, or 'features').
        normalize_rows: L2-normalise every row first.
        center: Centre the columns.
        top_k: k of the top-k share.
        out: Directory to write spectrum.npz (singular values and metrics) into.
        batch_size: Rows read per chunk.
    """
    import time
    from pathlib import Path

    import numpy as np

    from nml.features.cache import iter_feature_chunks
    from nml.metrics.spectrum import SpectrumAccumulator

    t0 = time.perf_counter()
    acc = SpectrumAccumulator(normalize_rows=normalize_rows, center=center)
    for chunk in iter_feature_chunks(features, key, batch_size):
        acc.update(chunk)
    result = acc.compute(k=top_k, sync=False)
    s = result.pop("singular_values")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        np.savez(Path(out) / "spectrum.npz", singular_values=s, **{k: v for k, v in result.items()})
    log.info(
        "spectrum of %d x %d features in %.1f s", result["samples"], result["dim"], time.perf_counter() - t0
    )
    return {
        "features": features,
        "normalize_rows": normalize_rows,
        "center": center,
        **result,
        "singular_values_head": [float(x) for x in s[:10]],
    }

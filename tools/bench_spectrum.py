"""Streaming spectrum vs full-matrix SVD: time and peak memory for M rows x D dims.

    python tools/bench_spectrum.py [--rows 10000 50000 200000] [--dims 512 2048] [--chunk 4096]

Each measurement runs in its own process, so peak memory is that process's peak RSS minus its RSS
after imports. The streaming path generates the features chunk by chunk (as a data loader would)
and never holds the matrix; the SVD path builds the float64 matrix and calls
``numpy.linalg.svd(compute_uv=False)``. Both must give the same spectrum (the max relative
difference of the singular values is printed). Prints JSON lines, then a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _chunks(m: int, d: int, chunk: int):
    import numpy as np

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(64, d))  # low-rank structure plus noise, like real features
    for a in range(0, m, chunk):
        n = min(chunk, m - a)
        yield rng.normal(size=(n, 64)) @ basis + 0.1 * rng.normal(size=(n, d))


def measure(method: str, m: int, d: int, chunk: int) -> dict:
    import numpy as np
    import torch

    from nml.metrics.spectrum import SpectrumAccumulator

    torch.set_num_threads(max(1, torch.get_num_threads()))
    base = _rss_mb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if method == "streaming":
        acc = SpectrumAccumulator()
        for x in _chunks(m, d, chunk):
            acc.update(torch.from_numpy(x))
        s = acc.singular_values(sync=False)
    else:
        x = np.concatenate(list(_chunks(m, d, chunk)))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x -= x.mean(0)
        s = np.linalg.svd(x, compute_uv=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(f"/tmp/nml_bench_spectrum_{method}_{m}_{d}.npy", s)
    return {
        "method": method,
        "rows": m,
        "dim": d,
        "seconds": round(seconds, 2),
        "peak_mb_above_baseline": round(max(peak, peak_before) - base, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--_one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        method, m, d, chunk = args._one
        print(json.dumps(measure(method, int(m), int(d), int(chunk))))
        return
    import numpy as np

    rows = []
    for d in args.dims:
        for m in args.rows:
            pair = {}
            for method in ("streaming", "svd"):
                out = subprocess.run(
                    [sys.executable, __file__, "--_one", method, str(m), str(d), str(args.chunk)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                pair[method] = json.loads(out.stdout.strip().splitlines()[-1])
            a = np.load(f"/tmp/nml_bench_spectrum_streaming_{m}_{d}.npy")
            b = np.load(f"/tmp/nml_bench_spectrum_svd_{m}_{d}.npy")
            k = min(len(a), len(b))
            diff = float(np.max(np.abs(a[:k] - b[:k])) / b[0])
            row = {
                "rows": m,
                "dim": d,
                "streaming_s": pair["streaming"]["seconds"],
                "streaming_peak_mb": pair["streaming"]["peak_mb_above_baseline"],
                "svd_s": pair["svd"]["seconds"],
                "svd_peak_mb": pair["svd"]["peak_mb_above_baseline"],
                "max_rel_diff": diff,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    sys.stderr.write(
        f"{'rows':>8} {'dim':>5} {'stream s':>9} {'stream MB':>10} {'svd s':>8} {'svd MB':>8} {'rel diff':>9}\n"
    )
    for r in rows:
        sys.stderr.write(
            f"{r['rows']:>8} {r['dim']:>5} {r['streaming_s']:>9.2f} {r['streaming_peak_mb']:>10.1f} "
            f"{r['svd_s']:>8.2f} {r['svd_peak_mb']:>8.1f} {r['max_rel_diff']:>9.1e}\n"
        )


if __name__ == "__main__":
    main()

"""Streaming spectrum vs a full SVD: time, peak memory and error for M rows x D dims.

    python -m benchmarks.spectrum [--rows 10000 50000 200000] [--dims 512 2048] [--repeats 3]

The features (low-rank plus noise, float32 as a model emits them) are written once per D to a
``.npy`` file before anything is timed, so every contender reads the same rows from the page cache
and no timing includes making them. Contenders, each measurement in its own process (peak memory
is that process's peak RSS above its RSS after imports), alternated ``--repeats`` times:

* ``streaming``: nml's :class:`~nml.metrics.spectrum.SpectrumAccumulator`, chunk by chunk;
* ``gram_float32``: the same Gram accumulated in float64 from float32 chunk products (measured
  for its error: faster, but not what nml ships);
* ``svd_torch`` / ``svd_numpy``: the whole float64 matrix, ``torch.linalg.svdvals`` /
  ``numpy.linalg.svd(compute_uv=False)``; the first is the reference spectrum.

Every row also gives the machine's float64 matmul rate and the rate the streaming Gram reaches
(its ``rows x D^2`` multiply-adds over its time), and, per D, the all-reduce of the accumulator's
state between 2 gloo ranks. Prints a JSON line per row, then a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPOSITORY, alternate

SELF = [sys.executable, "-m", "benchmarks.spectrum"]  # this script again, in a fresh process

CONTENDERS = ("streaming", "gram_float32", "svd_torch", "svd_numpy")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_features(path: Path, m: int, d: int, chunk: int) -> None:
    """``m x d`` float32 features, rank-64 signal plus noise, written chunk by chunk."""
    import numpy as np

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(64, d)).astype(np.float32)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (m, d)})
        for a in range(0, m, chunk):
            n = min(chunk, m - a)
            x = rng.normal(size=(n, 64)).astype(np.float32) @ basis
            x += 0.1 * rng.normal(size=(n, d)).astype(np.float32)
            f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())


def read_chunks(path: Path, m: int, chunk: int):
    """The first ``m`` rows of the file, ``chunk`` rows at a time, by plain reads (a memory map
    would count the file's pages in the reader's RSS)."""
    import numpy as np

    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape, _, _ = np.lib.format.read_array_header_1_0(f)
        d = shape[1]
        buf = np.empty((chunk, d), dtype=np.float32)
        for a in range(0, min(m, shape[0]), chunk):
            n = min(chunk, m - a)
            view = buf[:n]
            f.readinto(memoryview(view).cast("B"))
            yield view


def _normalised_centred(x):
    import numpy as np

    x = x.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x -= x.mean(0)
    return x


def measure(method: str, path: Path, m: int, chunk: int) -> dict:
    """One contender on the first ``m`` rows; returns seconds and peak MB, saves the spectrum."""
    import numpy as np
    import scipy.linalg.blas  # noqa: F401  (the streaming path's BLAS: imported before the clock)
    import torch

    from nml.metrics.spectrum import SpectrumAccumulator

    base = _rss_mb()
    t0 = time.perf_counter()
    if method == "streaming":
        acc = SpectrumAccumulator()
        for x in read_chunks(path, m, chunk):
            acc.update(torch.from_numpy(x))
        s = acc.singular_values(sync=False)
    elif method == "gram_float32":
        gram, colsum, count = None, None, 0
        for x in read_chunks(path, m, chunk):
            x = torch.from_numpy(x)
            x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
            if gram is None:
                gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
                colsum = torch.zeros(x.shape[1], dtype=torch.float64)
            gram += x.T @ x  # the product in float32, the running sum in float64
            colsum += x.sum(0, dtype=torch.float64)
            count += x.shape[0]
        ev = torch.linalg.eigvalsh(gram - torch.outer(colsum, colsum) / count).flip(0).clamp_min(0)
        s = ev[: min(count - 1, gram.shape[0])].sqrt().numpy()
    else:
        x = _normalised_centred(np.concatenate([c.copy() for c in read_chunks(path, m, chunk)]))
        if method == "svd_torch":
            s = torch.linalg.svdvals(torch.from_numpy(x)).numpy()
        else:
            s = np.linalg.svd(x, compute_uv=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(path.with_name(f"s_{method}_{m}.npy"), s)
    return {"seconds": seconds, "peak_mb": max(peak - base, 0.0)}


def float64_matmul_rate(d: int, chunk: int, repeats: int = 5) -> float:
    """GFLOP/s of a float64 ``(chunk x d)^T (chunk x d)`` product on this machine (all threads)."""
    import torch

    x = torch.randn(chunk, d, dtype=torch.float64)
    out = torch.empty(d, d, dtype=torch.float64)
    torch.mm(x.T, x, out=out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(x.T, x, out=out)
        times.append(time.perf_counter() - t0)
    return 2 * chunk * d * d / statistics.median(times) / 1e9


def allreduce_rank(rank: int, world: int, d: int, store: str, repeats: int) -> None:
    """One rank of the 2-process gloo measurement: the accumulator's reduction, ``repeats`` times."""
    import torch
    import torch.distributed as dist

    from nml.metrics.spectrum import SpectrumAccumulator

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    acc = SpectrumAccumulator()
    acc.update(torch.randn(64, d))
    acc._all_reduce(d)  # warm-up: the first collective sets up the connections
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        acc._all_reduce(d)  # the Gram, the column sums and the count, as compute() does once
        times.append(time.perf_counter() - t0)
    if rank == 0:
        print(json.dumps({"dim": d, "allreduce_s": statistics.median(times), "runs": times}))
    dist.destroy_process_group()


def allreduce_cost(d: int, repeats: int, tmp: Path) -> float:
    store = tmp / f"store_{d}"
    procs = [
        subprocess.Popen(
            [*SELF, "--_allreduce", str(r), "2", str(d), str(store), str(repeats)],
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"the gloo all-reduce at D={d} failed")
    return json.loads(outs[0].strip().splitlines()[-1])["allreduce_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    ap.add_argument("--_one", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--_allreduce", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        method, path, m, chunk = args._one
        print(json.dumps(measure(method, Path(path), int(m), int(chunk))))
        return
    if args._allreduce:
        rank, world, d, store, repeats = args._allreduce
        allreduce_rank(int(rank), int(world), int(d), store, int(repeats))
        return
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory(prefix="nml_bench_spectrum_") as tmp:
        tmp = Path(tmp)
        for d in args.dims:
            path = tmp / f"features_{d}.npy"
            write_features(path, max(args.rows), d, args.chunk)
            gflops = float64_matmul_rate(d, args.chunk)
            reduce_s = allreduce_cost(d, 5, tmp)
            for m in args.rows:
                extra: dict[str, list] = {c: [] for c in args.contenders}

                def run(method, m=m, extra=extra, path=path):
                    out = subprocess.run(
                        [*SELF, "--_one", method, str(path), str(m), str(args.chunk)],
                        cwd=REPOSITORY,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    extra[method].append(r["peak_mb"])
                    return r["seconds"]

                stats = alternate({c: (lambda c=c: run(c)) for c in args.contenders}, args.repeats)
                spectra = {c: np.load(tmp / f"s_{c}_{m}.npy") for c in args.contenders}
                ref_name = next((c for c in ("svd_torch", "svd_numpy") if c in spectra), args.contenders[0])
                ref = spectra[ref_name]
                row = {"rows": m, "dim": d, "reference": ref_name}
                for c in args.contenders:
                    k = min(len(spectra[c]), len(ref))
                    row[c] = {
                        "seconds": stats[c],
                        "peak_mb": statistics.median(extra[c]),
                        "max_error_over_s_max": float(np.max(np.abs(spectra[c][:k] - ref[:k])) / ref[0]),
                    }
                row["float64_matmul_gflops"] = gflops
                if "streaming" in stats:
                    t = stats["streaming"]["median"]
                    row["streaming_gram_gflops"] = m * d * d / t / 1e9  # syrk: rows x D^2 multiply-adds
                    row["allreduce_s_2_gloo_ranks"] = reduce_s
                    for peer in ("svd_torch", "svd_numpy", "gram_float32"):
                        if peer in stats:
                            row[f"{peer}_over_streaming"] = stats[peer]["median"] / t
                rows.append(row)
                print(json.dumps(row), flush=True)
    _table(rows, args.contenders)


def _table(rows: list[dict], contenders: list[str]) -> None:
    head = f"{'rows':>8} {'dim':>5} " + " ".join(f"{c + ' s / MB / err':>34}" for c in contenders)
    sys.stderr.write(head + "   speed-up vs svd_torch\n")
    for r in rows:
        cells = " ".join(
            f"{r[c]['seconds']['median']:>12.2f} {r[c]['peak_mb']:>9.0f} {r[c]['max_error_over_s_max']:>11.1e}"
            for c in contenders
        )
        ratio = r.get("svd_torch_over_streaming")
        sys.stderr.write(
            f"{r['rows']:>8} {r['dim']:>5} {cells}   {'' if ratio is None else f'{ratio:.2f}x'}\n"
        )


if __name__ == "__main__":
    main()

"""Spectral metrics: exact against numpy SVD, invariant to batching and ranks; `nml spectrum`."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from helpers import init_gloo, quiet_trainer, spawn_gloo

from nml.cli.main import main
from nml.metrics.spectrum import SpectrumAccumulator, spectrum_metrics


def _features(m: int, d: int, rank: int | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if rank is None:
        return rng.normal(size=(m, d)) * np.linspace(3, 0.1, d)  # anisotropic full rank
    return rng.normal(size=(m, rank)) @ rng.normal(size=(rank, d)) + 1e-3 * rng.normal(size=(m, d))


def _reference(f: np.ndarray, normalize_rows: bool, center: bool) -> np.ndarray:
    x = f / np.linalg.norm(f, axis=1, keepdims=True) if normalize_rows else f
    if center:
        x = x - x.mean(0)
    return np.linalg.svd(x, compute_uv=False)


@pytest.mark.parametrize("low_rank", [None, 5])
@pytest.mark.parametrize(
    "normalize_rows,center", [(True, True), (True, False), (False, True), (False, False)]
)
def test_streaming_spectrum_matches_numpy_svd(low_rank, normalize_rows, center):
    f = _features(700, 48, low_rank)
    acc = SpectrumAccumulator(normalize_rows, center)
    for a in range(0, 700, 128):
        acc.update(torch.from_numpy(f[a : a + 128]))
    res = acc.compute(k=5, sync=False)
    ref = _reference(f, normalize_rows, center)
    np.testing.assert_allclose(res["singular_values"], ref, rtol=0, atol=1e-8 * ref[0])
    expected = spectrum_metrics(ref)
    for key in ("sve", "lsvr", "p1", "top5_share", "effective_rank"):
        assert res[key] == pytest.approx(expected[key], rel=1e-8)
    assert res["samples"] == 700 and res["dim"] == 48


def test_metric_definitions_on_a_known_spectrum():
    m = spectrum_metrics(np.array([4.0, 2.0, 1.0, 1.0, 0.0]), k=2)
    p = np.array([0.5, 0.25, 0.125, 0.125])
    assert m["sve"] == pytest.approx(-(p * np.log(p)).sum())
    assert m["p1"] == 0.5 and m["lsvr"] == pytest.approx(np.log(2)) and m["top2_share"] == 0.75
    assert m["effective_rank"] == pytest.approx(np.exp(m["sve"]))


def test_invariant_to_batch_split_and_fewer_rows_than_dims():
    f = _features(300, 40)
    results = []
    for chunk in (1, 7, 300):
        acc = SpectrumAccumulator()
        for a in range(0, 300, chunk):
            acc.update(f[a : a + chunk])
        results.append(acc.compute(sync=False))
    for r in results[1:]:
        np.testing.assert_allclose(
            r["singular_values"], results[0]["singular_values"], rtol=1e-10, atol=1e-12
        )
    small = SpectrumAccumulator()
    small.update(f[:10])
    s = small.compute(sync=False)["singular_values"]
    np.testing.assert_allclose(s, _reference(f[:10], True, True)[:9], atol=1e-8)  # rank <= M - 1 when centred
    with pytest.raises(ValueError, match="NaN"):
        SpectrumAccumulator().update(np.full((2, 3), np.nan))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batches_of_varying_size_leave_the_callers_tensors_alone(dtype):
    f = _features(500, 32, rank=4).astype(dtype)
    batches = [torch.from_numpy(f[a:b].copy()) for a, b in ((0, 64), (64, 300), (300, 310), (310, 500))]
    before = [b.clone() for b in batches]
    acc = SpectrumAccumulator()
    for b in batches:  # the scratch buffer grows for the 236-row batch and is reused after
        acc.update(b)
    assert all(torch.equal(b, c) for b, c in zip(batches, before, strict=True))
    ref = _reference(f.astype(np.float64), True, True)
    np.testing.assert_allclose(acc.compute(sync=False)["singular_values"], ref, rtol=0, atol=1e-10 * ref[0])
    with pytest.raises(ValueError, match="NaN or inf"):
        acc.update(torch.tensor([[1.0] * 31 + [float("inf")]], dtype=batches[0].dtype))
    assert acc.count == 500  # the bad batch added nothing


def _spectrum_worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    f = _features(500, 24)
    acc = SpectrumAccumulator()
    rows = f[:350] if rank == 0 else f[350:]  # uneven shares
    for a in range(0, len(rows), 64):
        acc.update(rows[a : a + 64])
    res = acc.compute(sync=True)
    empty = SpectrumAccumulator()  # a rank with no rows still joins the reduction
    if rank == 0:
        empty.update(f)
    res_empty = empty.compute(sync=True, dim=24)
    torch.save(
        {
            "s": torch.from_numpy(res["singular_values"]),
            "s_empty": torch.from_numpy(res_empty["singular_values"]),
        },
        f"{out}/rank{rank}.pt",
    )
    torch.distributed.destroy_process_group()  # a gloo group left open can abort at interpreter exit


@pytest.mark.slow
def test_invariant_to_the_number_of_ranks(tmp_path):
    spawn_gloo(_spectrum_worker, 2, str(tmp_path))
    ref = _reference(_features(500, 24), True, True)
    for r in (0, 1):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        np.testing.assert_allclose(got["s"].numpy(), ref, atol=1e-8 * ref[0])
        np.testing.assert_allclose(got["s_empty"].numpy(), ref, atol=1e-8 * ref[0])


def test_nml_spectrum_cli_on_npy_npz_and_feature_shards(tmp_path, capsys):
    f = _features(2000, 32, rank=8).astype(np.float32)
    np.save(tmp_path / "x.npy", f)
    np.savez(tmp_path / "x.npz", embeddings=f, labels=np.arange(2000))
    with tarfile.open(tmp_path / "feats-0.tar", "w") as tar:
        for i, row in enumerate(f):
            buf = io.BytesIO()
            np.save(buf, row)
            info = tarfile.TarInfo(f"s{i:05d}.npy")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    ref = spectrum_metrics(_reference(f.astype(np.float64), True, True))
    outputs = []
    for args in (
        ["--features", str(tmp_path / "x.npy"), "--batch_size", "300", "--out", str(tmp_path / "o")],
        ["--features", str(tmp_path / "x.npz"), "--key", "embeddings"],
        ["--features", str(tmp_path / "feats-{0..0}.tar")],
    ):
        assert main(["spectrum", *args]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    for out in outputs:
        assert out["samples"] == 2000 and out["dim"] == 32
        for key in ("sve", "lsvr", "p1", "top5_share", "effective_rank"):
            assert out[key] == pytest.approx(ref[key], rel=1e-6)
    saved = np.load(tmp_path / "o" / "spectrum.npz")
    assert saved["singular_values"].shape == (32,) and float(saved["sve"]) == pytest.approx(
        ref["sve"], rel=1e-6
    )
    assert main(["spectrum", "--features", str(tmp_path / "x.npz"), "--key", "nope"]) == 1
    assert "no array 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_feature_spectrum_callback_matches_an_independent_computation(tiny_benchmark, tmp_path):
    from lightning.pytorch import seed_everything
    from lightning.pytorch.loggers import TensorBoardLogger

    from nml.callbacks.spectrum import FeatureSpectrum
    from nml.data.modules import ClassificationShards
    from nml.models.supervised import SupervisedPretraining

    seed_everything(0)
    dm = ClassificationShards(root=str(tiny_benchmark), loader={"batch_size": 16, "num_workers": 0})
    model = SupervisedPretraining("test_resnet", num_classes=44)
    cb = FeatureSpectrum(sets=["glyphs_heldout", "glyphs_noise_3"], top_k=3)
    quiet_trainer(
        max_steps=2,
        limit_val_batches=0,
        logger=TensorBoardLogger(tmp_path, name="run"),
        callbacks=[cb],
    ).fit(model, dm)
    assert set(cb.results) == {"glyphs_heldout/fit_end", "glyphs_noise_3/fit_end"}
    model.eval()
    with torch.no_grad():
        feats = torch.cat(
            [model.backbone.features(b["image"][b["valid"]]) for b in dm.eval_loader(dm.test_sets[0])]
        )
    ref = _reference(feats.double().numpy(), True, True)
    got = cb.results["glyphs_heldout/fit_end"]
    np.testing.assert_allclose(got["singular_values"], ref[: len(got["singular_values"])], atol=1e-6 * ref[0])
    assert got["top3_share"] == pytest.approx(spectrum_metrics(ref, 3)["top3_share"], rel=1e-6)
    saved = np.load(tmp_path / "run" / "version_0" / "spectrum" / "glyphs_noise_3_fit_end.npz")
    assert float(saved["samples"]) == 44 * 3

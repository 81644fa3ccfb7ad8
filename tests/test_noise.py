"""Noise models: fixed per sample, exact rates, correct transitions, clear errors (no torch needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nml.noise.config import NoiseConfig
from nml.noise.matrix import load_transition_matrix
from nml.noise.models import NoiseModel


def _shards(n: int, per_shard: int = 500, num_classes: int = 10, captions: bool = False) -> list[list[dict]]:
    """Synthetic records grouped in shards: key k-<i>, class i % C, caption 'cap <i // 2>' (pairs repeat)."""
    recs = [{"__key__": f"k-{i:06d}", "cls": i % num_classes} for i in range(n)]
    if captions:
        for i, r in enumerate(recs):
            r["caption"] = f"cap {i // 2}"
    return [recs[a : a + per_shard] for a in range(0, n, per_shard)]


def _apply(model: NoiseModel, shards: list[list[dict]]) -> dict[str, dict]:
    return {r["__key__"]: r for shard in shards for r in model.apply([dict(x) for x in shard])}


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.45])
def test_symmetric_rate_exact_and_never_true_class(rate):
    out = _apply(NoiseModel(NoiseConfig("symmetric", rate), 10, seed=1), _shards(12_000))
    noisy = [r for r in out.values() if r["is_noisy"]]
    assert abs(len(noisy) / len(out) - rate) <= 0.005
    assert all(r["target"] != r["cls"] for r in noisy)
    assert all(r["target"] == r["cls"] for r in out.values() if not r["is_noisy"])
    # wrong labels are uniform over the other 9 classes: offsets (target - cls) mod 10 in 1..9
    offsets = np.bincount([(r["target"] - r["cls"]) % 10 for r in noisy], minlength=10)
    expected = len(noisy) / 9
    assert offsets[0] == 0 and np.abs(offsets[1:] - expected).max() < 4 * np.sqrt(expected)


def test_noise_is_a_function_of_seed_and_shard_content_not_order():
    shards = _shards(3000, per_shard=300)
    model = NoiseModel(NoiseConfig("symmetric", 0.3), 10, seed=7)
    a = _apply(model, shards)
    b = _apply(model, list(reversed(shards)))  # another shard order, another "epoch"
    assert {k: (r["target"], r["is_noisy"]) for k, r in a.items()} == {
        k: (r["target"], r["is_noisy"]) for k, r in b.items()
    }
    c = _apply(NoiseModel(NoiseConfig("symmetric", 0.3, seed=8), 10, seed=7), shards)  # noise.seed wins
    assert sum(a[k]["target"] != c[k]["target"] for k in a) > 500


def test_pair_noise_and_class_map():
    out = _apply(NoiseModel(NoiseConfig("pair", 0.25), 10), _shards(10_000))
    noisy = [r for r in out.values() if r["is_noisy"]]
    assert abs(len(noisy) / len(out) - 0.25) <= 0.005
    assert all(r["target"] == (r["cls"] + 1) % 10 for r in noisy)
    cmap = [3, 0, 1, 2]
    out = _apply(NoiseModel(NoiseConfig("pair", 0.5, class_map=cmap), 4), _shards(2000, num_classes=4))
    assert all(r["target"] == cmap[r["cls"]] for r in out.values() if r["is_noisy"])
    with pytest.raises(ValueError, match=r"class_map\[1\] = 1"):
        NoiseModel(NoiseConfig("pair", 0.5, class_map=[1, 1, 0, 2]), 4)
    with pytest.raises(ValueError, match="3 entries, expected one per class"):
        NoiseModel(NoiseConfig("pair", 0.5, class_map=[1, 2, 0]), 4)


def test_matrix_noise_follows_the_transition_matrix(tmp_path):
    T = np.array([[0.7, 0.3, 0.0], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0]])
    np.save(tmp_path / "t.npy", T)
    out = _apply(
        NoiseModel(NoiseConfig("matrix", matrix=str(tmp_path / "t.npy")), 3), _shards(30_000, num_classes=3)
    )
    counts = np.zeros((3, 3))
    for r in out.values():
        counts[r["cls"], r["target"]] += 1
    realised = counts / counts.sum(1, keepdims=True)
    assert np.abs(realised - T).max() < 0.01
    rate = sum(r["is_noisy"] for r in out.values()) / len(out)
    assert abs(rate - (1 - np.diag(T)).mean()) <= 0.005
    # text formats read the same matrix
    (tmp_path / "t.csv").write_text("\n".join(",".join(map(str, row)) for row in T))
    (tmp_path / "t.json").write_text(json.dumps(T.tolist()))
    for f in ("t.csv", "t.json"):
        np.testing.assert_allclose(load_transition_matrix(tmp_path / f, 3), T)


def test_matrix_errors(tmp_path):
    np.save(tmp_path / "bad.npy", np.array([[0.5, 0.4], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"not row-stochastic: row 0 sums to 0.9"):
        load_transition_matrix(tmp_path / "bad.npy", 2)
    np.save(tmp_path / "small.npy", np.eye(2) * 0.5 + 0.25)
    with pytest.raises(ValueError, match=r"expected a 3 x 3 matrix .* got shape \(2, 2\)"):
        load_transition_matrix(tmp_path / "small.npy", 3)
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_transition_matrix(tmp_path / "nope.npy", 3)
    with pytest.raises(ValueError, match="rate must be 0 with noise.kind=matrix"):
        NoiseConfig("matrix", 0.2, matrix="x.npy")


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rate_outside_unit_interval_is_rejected(rate):
    with pytest.raises(ValueError, match=r"noise.rate must be in \[0, 1\)"):
        NoiseConfig("symmetric", rate)


def test_caption_swap_never_self_and_donor_in_same_block():
    shards = _shards(12_000, per_shard=1000, captions=True)
    model = NoiseModel(NoiseConfig("caption_swap", 0.3, block=64), seed=2)
    out = _apply(model, shards)
    noisy = [r for r in out.values() if r["is_noisy"]]
    assert abs(len(noisy) / len(out) - 0.3) <= 0.005
    for r in noisy:
        assert r["donor"] != r["__key__"]
        assert r["caption"] != r["clean_caption"]  # a different text was available in every block
        assert r["caption"] == out[r["donor"]]["clean_caption"]
        i, j = int(r["__key__"][2:]), int(r["donor"][2:])
        assert i // 1000 == j // 1000 and abs(i - j) < 2 * 64  # same shard, same block
    assert all(r["caption"] == r["clean_caption"] for r in out.values() if not r["is_noisy"])


def test_no_noise_passes_labels_through():
    out = _apply(NoiseModel(NoiseConfig("symmetric", 0.0), 10), _shards(100))
    assert all(r["target"] == r["cls"] and not r["is_noisy"] for r in out.values())


def test_a_transition_matrix_with_a_nan_is_refused(tmp_path):
    import numpy as np

    m = np.eye(3) * 0.8 + 0.1
    m[0, 1] = np.nan
    np.save(tmp_path / "t.npy", m)
    with pytest.raises(ValueError, match=r"entry \[0, 1\] = nan is not a finite number"):
        load_transition_matrix(tmp_path / "t.npy", 3)


@pytest.fixture
def reverse_kind():
    """A toy label noise registered for one test: class c -> C - 1 - c."""
    from nml.noise.kinds import NOISE_KINDS, LabelNoise, register_noise_kind

    @register_noise_kind
    class Reverse(LabelNoise):
        name = "reverse"

        def wrong_label(self, c: int, h: int) -> int:
            return self.num_classes - 1 - c

    yield Reverse
    del NOISE_KINDS["reverse"]


def test_a_registered_noise_kind_is_audited_and_trained_with(reverse_kind, tiny_benchmark, tmp_path, capsys):
    """A kind is a table entry: registered, it is validated, audited and trained with by name."""
    import json

    from nml.cli.main import main
    from nml.data.audit import audit_shards

    spec = json.loads((tiny_benchmark / "manifest.json").read_text())["pretraining"]["train"]
    report = audit_shards(str(tiny_benchmark / spec), NoiseConfig("reverse", 0.25))
    assert report["noise"]["kind"] == "reverse" and report["target_rate"] == 0.25
    assert abs(report["realised_rate"] - 0.25) < 0.01
    assert all(c["noisy"] == 43 - c["clean"] for c in report["top_confusions"])  # C - 1 - c, 44 classes
    with pytest.raises(ValueError, match="noise.class_map is only used with noise.kind=pair"):
        NoiseConfig("reverse", 0.2, class_map=[1, 0])
    args = ["--data.root", str(tiny_benchmark), "--data.loader.num_workers", "0", "--trainer.max_steps", "2"]
    args += ["--trainer.limit_val_batches", "1", "--trainer.logger", "false"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    noise = ["--data.noise.kind", "reverse", "--data.noise.rate", "0.25"]
    assert main(["fit", "--config", "pretrain_supervised.yaml", *noise, *args]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert 0.15 < fit["metrics"]["train/noise_rate_epoch"] < 0.35  # the training stream carried it
    bogus = ["--data.noise.kind", "bogus", "--trainer.default_root_dir", str(tmp_path / "b")]
    assert main(["fit", "--config", "pretrain_supervised.yaml", *args, *bogus]) == 1
    assert (
        "expected one of none, symmetric, pair, matrix, caption_swap, reverse, got 'bogus'"
        in capsys.readouterr().err
    )


def test_noise_kinds_are_compared_by_name_only_in_their_table():
    """No ``kind == "pair"`` outside nml/noise/kinds.py: a new kind touches one file."""
    import ast
    from pathlib import Path

    from nml.noise.kinds import NOISE_KINDS

    names = {n for n, k in NOISE_KINDS.items() if k.corrupts is not None}  # "none" is also just a word
    found = []
    for path in (Path(__file__).resolve().parents[1] / "nml").rglob("*.py"):
        if path.name == "kinds.py" and path.parent.name == "noise":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in (node.left, *node.comparators):
                    values = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
                    hits = [v.value for v in values if isinstance(v, ast.Constant) and v.value in names]
                    found += [f"{path.name}:{node.lineno}: {h}" for h in hits]
    assert not found, found

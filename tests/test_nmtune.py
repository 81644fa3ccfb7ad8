"""NMTune regularisers against a plain re-implementation of the formulas (values and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nml.models.nmtune import NMTuneHead, nmtune_regularizers


def _plain(z1, z2, f1, k=5):
    """The formulas of method.md §3, written the obvious (D x D) way."""
    z = torch.cat([z1, z2])
    n, d = z.shape
    mse = ((F.normalize(z2, dim=1) - F.normalize(f1.detach(), dim=1)) ** 2).mean()
    zc = z - z.mean(0)
    cov = zc.T @ zc / (n - 1)
    off = cov - torch.diag(torch.diag(cov))
    s = torch.linalg.svd(z).S
    p = s / s.sum()
    return {"mse": mse, "cov": (off**2).sum() / d, "svd": -p[:k].mean()}


@pytest.mark.parametrize(
    "b,d", [(8, 6), (4, 32), (2, 3)]
)  # D < 2B, D > 2B (the lean Gram path), smallest batch
def test_values_and_gradients_match_the_formulas(b, d):
    g = torch.Generator().manual_seed(b * 100 + d)
    base = [torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(3)]
    got_in = [t.clone().requires_grad_() for t in base]
    ref_in = [t.clone().requires_grad_() for t in base]
    got, ref = nmtune_regularizers(*got_in), _plain(*ref_in)
    for key in ("mse", "cov", "svd"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-10, atol=1e-12)
    w = {"mse": 1.0, "cov": 0.04, "svd": 0.001}
    sum(w[k] * got[k] for k in w).backward()
    sum(w[k] * ref[k] for k in w).backward()
    for a, r in zip(got_in[:2], ref_in[:2], strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-8, atol=1e-10)
    assert got_in[2].grad is None and ref_in[2].grad is None  # f1 is a detached target


def test_single_sample_batch_and_shape_mismatch_raise_clearly():
    x = torch.randn(1, 4)
    with pytest.raises(ValueError, match="at least 2 samples per batch, got 1"):
        nmtune_regularizers(x, x, x)
    with pytest.raises(ValueError, match="must be \\(B, D\\) of one shape"):
        nmtune_regularizers(torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 4))


def test_head_is_the_reference_architecture():
    head = NMTuneHead(dim=8, num_classes=3)
    kinds = [type(m).__name__ for m in head.h]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head.h[0].out_features == 32 and torch.equal(head.scale.detach(), torch.ones(8))
    f = torch.randn(5, 8)
    z, logits = head(f)
    assert z.shape == (5, 8) and logits.shape == (5, 3)
    head.eval()
    torch.testing.assert_close(head.transform(f), f + head.scale * head.h(f))


def test_classifier_initialisation_is_the_papers_by_default_or_torchs():
    from nml.models.tuning import DownstreamTuning

    torch.manual_seed(0)
    d = 512
    paper = NMTuneHead(dim=d, num_classes=100).classifier
    bound = (6 / d) ** 0.5  # the authors' kaiming-uniform bound, zero bias
    assert torch.equal(paper.bias.detach(), torch.zeros(100))
    assert paper.weight.abs().max() <= bound and paper.weight.abs().max() > 0.95 * bound
    torch_default = NMTuneHead(dim=d, num_classes=100, head_init="torch").classifier
    assert torch_default.weight.abs().max() <= (1 / d) ** 0.5 and torch_default.bias.abs().sum() > 0
    linear = DownstreamTuning("linear", num_classes=10, feature_dim=d)
    assert linear.hparams.head["head_init"] == "paper" and torch.equal(
        linear.head.bias.detach(), torch.zeros(10)
    )
    assert (
        DownstreamTuning("linear", num_classes=10, feature_dim=d, head={"head_init": "torch"})
        .head.bias.abs()
        .sum()
        > 0
    )
    with pytest.raises(ValueError, match="head_init: expected 'paper' or 'torch', got 'xavier'"):
        NMTuneHead(dim=4, num_classes=2, head_init="xavier")


def test_regulariser_weights_are_the_authors_at_2048_and_rescaled_elsewhere():
    from nml.models.nmtune import AUTHORS_WEIGHTS, scaled_weights

    assert scaled_weights(AUTHORS_WEIGHTS, 2048, 2048) == AUTHORS_WEIGHTS
    assert scaled_weights(AUTHORS_WEIGHTS, 256, None) == AUTHORS_WEIGHTS
    w = scaled_weights(AUTHORS_WEIGHTS, 256, 2048)
    assert w["mse"] == pytest.approx(1.0 * 256 / 2048) and w["svd"] == 0.001
    assert w["cov"] == pytest.approx(0.04 * 2047 / 255)
    with pytest.raises(ValueError, match="reference_dim"):
        scaled_weights(AUTHORS_WEIGHTS, 1, 2048)


def test_rescaled_terms_weigh_the_same_at_any_dimension():
    """Features with the same per-pair correlation and per-sample angle at D = 256 and D = 2048: the
    weighted COV and MSE terms agree within sampling error; unscaled, COV differs ~8x."""
    from nml.models.nmtune import AUTHORS_WEIGHTS, scaled_weights

    g = torch.Generator().manual_seed(0)
    terms = {}
    for d in (256, 2048):
        shared = torch.randn(4096, 1, generator=g, dtype=torch.float64)
        z = 0.3 * shared + torch.randn(4096, d, generator=g, dtype=torch.float64)  # pairwise r ~ 0.083
        f = z + 0.5 * torch.randn(4096, d, generator=g, dtype=torch.float64)
        regs = nmtune_regularizers(z[:2048], z[2048:], f[:2048])
        w = scaled_weights(AUTHORS_WEIGHTS, d, 2048)
        terms[d] = {k: w[k] * float(regs[k]) for k in ("mse", "cov")} | {"raw_cov": 0.04 * float(regs["cov"])}
    for k in ("mse", "cov"):
        assert terms[256][k] == pytest.approx(terms[2048][k], rel=0.15), (k, terms)
    assert terms[2048]["raw_cov"] / terms[256]["raw_cov"] > 5

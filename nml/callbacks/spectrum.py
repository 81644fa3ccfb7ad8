"""``FeatureSpectrum``: singular-value spectra of a model's features on named evaluation sets.

Works with any LightningModule that has ``spectrum_features(inputs) -> (B, D)`` and
``feature_dim`` (the pre-training modules: the backbone's features; tuning modules: their
transformed features) and a data module that is an :class:`~nml.data.loading.EvalSuite` (nml's
ClassificationShards / ImageTextShards / CachedFeatures). Each rank streams its share of every set into a
:class:`~nml.metrics.spectrum.SpectrumAccumulator`; one all-reduce per set at the end.

Logs ``spectrum/<set>/{sve,lsvr,p1,effective_rank,top<k>_share}`` to every logger, a histogram of
the singular values and a figure of the normalised spectrum (log scale) to TensorBoard, and saves
``<log_dir>/spectrum/<set>_<when>.npz``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback

from nml.data.loading import EvalSuite, batch_inputs, eval_suite, select_rows, to_device
from nml.metrics.spectrum import SpectrumAccumulator
from nml.shards.manifest import EvalSet

log = logging.getLogger(__name__)


class FeatureSpectrum(Callback):
    """Args:
    sets: Names of the data module's test sets to analyse (default: all, the ID and OOD sets).
    every_n_epochs: Also run after every n-th training epoch (0: only at the end of fit).
    at_fit_end: Run when fit ends.
    at_test_end: Run when test ends.
    normalize_rows: L2-normalise feature rows.
    center: Centre feature columns.
    top_k: k of the logged top-k share.
    """

    def __init__(
        self,
        sets: list[str] | None = None,
        every_n_epochs: int = 0,
        at_fit_end: bool = True,
        at_test_end: bool = True,
        normalize_rows: bool = True,
        center: bool = True,
        top_k: int = 5,
    ):
        self.sets, self.every_n_epochs = sets, every_n_epochs
        self.at_fit_end, self.at_test_end = at_fit_end, at_test_end
        self.normalize_rows, self.center, self.top_k = normalize_rows, center, top_k
        self.results: dict[str, dict] = {}

    # -- hooks ---------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        n = self.every_n_epochs
        if (
            n
            and (trainer.current_epoch + 1) % n == 0
            and trainer.current_epoch + 1 < (trainer.max_epochs or 0)
        ):
            self.run(trainer, pl_module, f"epoch{trainer.current_epoch}")

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.at_fit_end:
            self.run(trainer, pl_module, "fit_end")

    def on_test_end(self, trainer, pl_module) -> None:
        if self.at_test_end:
            self.run(trainer, pl_module, "test")

    # -- the pass ------------------------------------------------------------------------------
    def _sets(self, dm: EvalSuite) -> list[EvalSet]:
        sets = [s for s in dm.test_sets if self.sets is None or s.name in self.sets]
        missing = set(self.sets or []) - {s.name for s in dm.test_sets}
        if missing:
            raise ValueError(
                f"FeatureSpectrum: no test set named {sorted(missing)}; have {[s.name for s in dm.test_sets]}"
            )
        return sets

    @torch.no_grad()
    def run(self, trainer, pl_module, when: str) -> dict[str, dict]:
        was_training = pl_module.training
        pl_module.eval()
        out = {}
        suite = eval_suite(trainer)
        # trainer.log_dir is a collective under DDP (a broadcast from rank 0): ask on every rank, here,
        # never inside the rank-0-only report (rank 0 would wait in it while the others gather)
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        try:
            for s in self._sets(suite):
                acc = SpectrumAccumulator(self.normalize_rows, self.center)
                for batch in suite.eval_loader(s):
                    valid = batch["valid"]
                    if valid.any():
                        inputs = to_device(select_rows(batch_inputs(batch), valid), pl_module.device)
                        acc.update(pl_module.spectrum_features(inputs).float())
                res = acc.compute(self.top_k, sync=True, dim=pl_module.feature_dim)
                out[s.name] = res
                if trainer.is_global_zero:
                    self._report(trainer, log_dir, s.name, when, res)
        finally:
            pl_module.train(was_training)
        self.results.update({f"{name}/{when}": r for name, r in out.items()})
        return out

    def _report(self, trainer, log_dir: Path, name: str, when: str, res: dict) -> None:
        s = res["singular_values"]
        scalars = {
            f"spectrum/{name}/{k}": v
            for k, v in res.items()
            if k not in ("singular_values", "samples", "dim")
        }
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
            writer = getattr(logger, "experiment", None)
            if hasattr(writer, "add_histogram") and hasattr(writer, "add_figure"):
                writer.add_histogram(f"spectrum/{name}/singular_values", s, trainer.global_step)
                writer.add_figure(
                    f"spectrum/{name}/normalised", spectrum_figure(s, name, when), trainer.global_step
                )
        root = log_dir / "spectrum"
        root.mkdir(parents=True, exist_ok=True)
        np.savez(
            root / f"{name}_{when}.npz",
            singular_values=s,
            **{k: v for k, v in res.items() if k != "singular_values"},
        )
        log.info(
            "spectrum %s (%s): sve %.4f lsvr %.4f p1 %.4f over %d samples",
            name,
            when,
            res["sve"],
            res["lsvr"],
            res["p1"],
            res["samples"],
        )


def spectrum_figure(singular_values: np.ndarray, name: str, when: str):
    """Normalised singular values (p_i) against their rank, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = singular_values / singular_values.sum()
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    ax.semilogy(np.arange(1, len(p) + 1), np.clip(p, 1e-12, None), lw=1.5)
    ax.set_xlabel("rank i")
    ax.set_ylabel("p_i = s_i / sum s")
    ax.set_title(f"{name} ({when})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig

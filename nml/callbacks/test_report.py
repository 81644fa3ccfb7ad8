"""``TestReport``: after ``nml test``, a table of the ID/OOD metrics and ``metrics.json``.

The table (one row per test set, then the group means) goes to the log on stderr; ``metrics.json``
(``{"ckpt_path", "metrics"}``) is written next to the tested checkpoint (else into the log dir).
The ``nml test`` command adds this callback when a config does not list it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lightning.pytorch import Callback

log = logging.getLogger(__name__)


def test_metrics(trainer) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("test/")}


def format_test_table(metrics: dict[str, float], samples: dict[str, int] | None = None) -> str:
    """A plain-text table: one row per test set (top-1 and the samples evaluated), then one per
    group mean."""
    rows, samples = [], samples or {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == "top1":
            rows.append((parts[1], parts[2], value))
    means = [(k.split("/")[1], v) for k, v in metrics.items() if k.endswith("/mean_top1")]
    width = max([len(n) for _, n, _ in rows] + [len("dataset")])
    rule = "-" * (width + 24)
    lines = [f"{'group':<6} {'dataset':<{width}} {'top1':>7} {'N':>8}", rule]
    lines += [f"{g:<6} {n:<{width}} {100 * v:>6.2f}% {samples.get(n, ''):>8}" for g, n, v in rows]
    lines += [rule] + [f"{g:<6} {'mean':<{width}} {100 * v:>6.2f}%" for g, v in means]
    return "\n".join(lines)


class TestReport(Callback):
    """Writes ``metrics.json`` and logs the metrics table when a test run ends (global rank 0)."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.report: dict | None = None

    def on_test_end(self, trainer, pl_module) -> None:
        ckpt = trainer.ckpt_path
        directory = Path(ckpt).parent if ckpt and Path(ckpt).is_file() else Path(trainer.log_dir or ".")
        samples = dict(getattr(pl_module, "test_samples", {}) or {})
        self.report = {"ckpt_path": ckpt, "metrics": test_metrics(trainer), "samples": samples}
        if trainer.is_global_zero:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "metrics.json").write_text(json.dumps(self.report, indent=1) + "\n")
            log.info("test metrics:\n%s", format_test_table(self.report["metrics"], samples))
            log.info("wrote %s", directory / "metrics.json")

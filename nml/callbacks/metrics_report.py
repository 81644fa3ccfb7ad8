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
from lightning.pytorch.trainer.states import TrainerFn

from nml.models.base import BackboneModule

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
    """Writes ``metrics.json`` and logs the metrics table when a test run ends (global rank 0). When a
    single-process run fails on a set, the sets finished before it are still written, with
    ``"incomplete"`` naming the failed set and the error. A record is written only when something
    was scored, and an incomplete one never replaces a complete ``metrics.json``: it goes to
    ``metrics.incomplete.json`` beside it (removed by the next complete run)."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.report: dict | None = None

    @staticmethod
    def _directory(trainer) -> Path:
        ckpt = trainer.ckpt_path
        return Path(ckpt).parent if ckpt and Path(ckpt).is_file() else Path(trainer.log_dir or ".")

    def _write(self, trainer) -> None:
        if not self.report["samples"] and not self.report["metrics"]:
            log.warning("nothing was scored: no metrics.json written")
            return
        directory = self._directory(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        path, aside = directory / METRICS, directory / INCOMPLETE
        if "incomplete" in self.report and _is_complete(path):
            log.warning("%s holds a complete record: this run's incomplete one goes to %s", path, aside.name)
            path = aside
        elif "incomplete" not in self.report and aside.exists():
            aside.unlink()  # superseded by this complete record
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.report, indent=1) + "\n")
        tmp.replace(path)  # never a half-written record
        log.info("test metrics:\n%s", format_test_table(self.report["metrics"], self.report["samples"]))
        log.info("wrote %s", path)

    def on_test_end(self, trainer, pl_module) -> None:
        samples = dict(getattr(pl_module, "test_samples", {}) or {})
        self.report = {"ckpt_path": trainer.ckpt_path, "metrics": test_metrics(trainer), "samples": samples}
        if trainer.is_global_zero:
            self._write(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        testing = trainer.state.fn == TrainerFn.TESTING and isinstance(pl_module, BackboneModule)
        if not testing or trainer.world_size > 1 or not pl_module.test_sets:
            return  # in DDP a rank's own counts are only part of a set; or it failed before the sets
        metrics, samples = pl_module.finished_test_metrics()
        failed = pl_module.test_sets[pl_module.testing_set].name
        self.report = {
            "ckpt_path": trainer.ckpt_path,
            "metrics": metrics,
            "samples": samples,
            "incomplete": {"failed_set": failed, "error": f"{type(exception).__name__}: {exception}"},
        }
        log.warning("test set %r failed; writing the %d set(s) finished before it", failed, len(samples))
        self._write(trainer)


METRICS, INCOMPLETE = "metrics.json", "metrics.incomplete.json"


def _is_complete(path: Path) -> bool:
    """Whether ``path`` holds a complete test record (readable, with metrics, not marked incomplete)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and bool(record.get("metrics")) and "incomplete" not in record

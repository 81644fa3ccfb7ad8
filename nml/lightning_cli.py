"""LightningCLI entry for ``nml fit | validate | test | predict`` (subclass mode for model and data).

Any ``LightningModule`` / ``LightningDataModule`` importable by class path can be named in a config
(``model.class_path``, ``data.class_path``); nml's own modules and callbacks are used by their
short names once imported. Configs are saved next to the logs, overwriting on re-runs.

``nml test`` prints a table of ``test/<group>/<name>/top1`` and the group means on stderr, the
same metrics as JSON on stdout, and writes them to ``metrics.json`` next to the checkpoint.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

# imported so that configs can name nml's classes by their short names
import nml.callbacks.spectrum  # noqa: F401
import nml.data.feature_shards  # noqa: F401
import nml.data.modules  # noqa: F401
import nml.models.contrastive  # noqa: F401
import nml.models.supervised  # noqa: F401
import nml.models.tuning  # noqa: F401

log = logging.getLogger("nml")


class NMLCLI(LightningCLI):
    """LightningCLI with nml's defaults and the ``nml test`` report."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def before_test(self) -> None:
        self.config_init[self.subcommand]["verbose"] = (
            False  # our table instead of Lightning's (stdout is JSON)
        )

    def after_test(self) -> None:
        metrics = {
            k: float(v) for k, v in sorted(self.trainer.callback_metrics.items()) if k.startswith("test/")
        }
        ckpt = self.config_init["test"].get("ckpt_path")
        directory = Path(ckpt).parent if ckpt and Path(ckpt).is_file() else Path(self.trainer.log_dir or ".")
        report = {"ckpt_path": ckpt, "metrics": metrics}
        if self.trainer.is_global_zero:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
            sys.stderr.write(format_test_table(metrics) + "\n")
            log.info("wrote %s", directory / "metrics.json")
            json.dump(report, sys.stdout, indent=1)
            sys.stdout.write("\n")


def format_test_table(metrics: dict[str, float]) -> str:
    """A plain-text table: one row per test set, then one per group mean."""
    rows = []
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == "top1":
            rows.append((parts[1], parts[2], value))
    means = [(k.split("/")[1], v) for k, v in metrics.items() if k.endswith("/mean_top1")]
    width = max([len(n) for _, n, _ in rows] + [len("dataset")])
    lines = [f"{'group':<6} {'dataset':<{width}} {'top1':>7}", "-" * (width + 15)]
    lines += [f"{g:<6} {n:<{width}} {100 * v:>6.2f}%" for g, n, v in rows]
    lines += ["-" * (width + 15)] + [f"{g:<6} {'mean':<{width}} {100 * v:>6.2f}%" for g, v in means]
    return "\n".join(lines)


def run_lightning(argv: Sequence[str]) -> NMLCLI:
    return NMLCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=list(argv),
    )

"""LightningCLI entry for ``nml fit | validate | test | predict`` (subclass mode for model and data).

Any ``LightningModule`` / ``LightningDataModule`` importable by class path can be named in a config
(``model.class_path``, ``data.class_path``); nml's own modules are used by their short names once
imported. Configs are saved next to the logs, overwriting on re-runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

# imported so that configs can name nml's classes by their short names
import nml.data.modules  # noqa: F401
import nml.models.contrastive  # noqa: F401
import nml.models.supervised  # noqa: F401


class NMLCLI(LightningCLI):
    """LightningCLI with nml's defaults; later modules add arguments by overriding the hooks."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")


def run_lightning(argv: Sequence[str]) -> NMLCLI:
    return NMLCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=list(argv),
    )

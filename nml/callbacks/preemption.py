"""A checkpoint when the run is told to stop: SIGTERM (``docker stop``, a SLURM preemption or time
limit, ``kill``).

Lightning catches SIGTERM and stops every rank together at the end of the current training step
(``SIGTERMException``); this callback then saves that step, loader position included, as the run's
``last.ckpt``, where ``nml fit ... --ckpt_path last`` resumes it. On SLURM, Lightning also handles
the requeue signal (``#SBATCH --signal=SIGUSR1@90``: an ``hpc_ckpt_N.ckpt`` and ``scontrol
requeue``). Other exceptions save nothing: after a crash the ranks cannot be relied on to join
the save (the periodic step checkpoints are what survives a ``kill -9``).
"""

from __future__ import annotations

import logging
import os

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnSigterm(Callback):
    """Save ``last.ckpt`` in the first :class:`ModelCheckpoint`'s directory when SIGTERM stops the run."""

    def __init__(self):
        self.saved: str | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
        if not checkpoints:
            log.warning(
                "SIGTERM at step %d: no ModelCheckpoint directory, nothing saved", trainer.global_step
            )
            return
        path = os.path.join(
            checkpoints[0].dirpath, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
        )
        if trainer.is_global_zero and os.path.islink(path):
            os.remove(path)  # a link to an older checkpoint (save_last: link): write a file instead
        trainer.strategy.barrier("CheckpointOnSigterm")
        trainer.save_checkpoint(path)
        self.saved = path
        if trainer.is_global_zero:
            log.warning(
                "SIGTERM: stopped after step %d and saved it to %s; resume with the same command and "
                "--ckpt_path last",
                trainer.global_step,
                path,
            )

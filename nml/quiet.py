"""What nml keeps off the terminal by default, each with its reason; ``--verbose`` shows it all.

Two tables, applied by :func:`quiet_console` at the entry point (never at library import, so a
user importing nml keeps Python's and Lightning's defaults):

* :data:`HARMLESS_WARNINGS`: Python warnings that are expected by design in nml's use of its
  libraries (each names why it does not apply);
* :data:`LIBRARY_CHATTER`: Lightning and open_clip log lines that tell a user nothing about their
  run (advertising, a table with a FLOP column of zeros above nml's own FLOP count, open_clip's
  account of how it found its tokenizer, three lines per tokenizer built).

The study runs each stage with a quieter console still (:func:`stage_console`): everything a stage
logs goes to its ``log.txt``; the terminal gets warnings and the study's own line per stage.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings

# (message regex, matched from the start; why it is harmless for nml)
HARMLESS_WARNINGS: tuple[tuple[str, str], ...] = (
    (
        r"Your `IterableDataset` has `__len__` defined",
        "ShardLoader/FeatureLoader lengths are exact by construction",
    ),
    (
        r"Found \d+ module\(s\) in eval mode at the start of training",
        "a frozen backbone stays in eval mode on purpose: BatchNorm statistics must not move",
    ),
    (r"LightningCLI's args parameter is intended to run from within Python", "nml passes its own argv on"),
    (
        r"It is recommended to use `self\.log\(.*sync_dist=True\)` when logging on epoch level",
        "nml's epoch values are summed over ranks already (torchmetrics states, data counts with "
        "sync_dist); averaging them again would be wrong",
    ),
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        "inside Lightning's own pytree helper, raised by torch's newer API: nothing nml calls",
    ),
    (
        r"The number of training batches \(\d+\) is smaller than the logging interval",
        "nml's progress lines and epoch metrics do not depend on log_every_n_steps; small tuning "
        "epochs are normal",
    ),
    (
        r"The dirpath has changed from",
        "an evaluation of a checkpoint found under another path than it was saved at: only "
        "ModelCheckpoint's bookkeeping of a finished fit is not reloaded, which evaluation never uses",
    ),
    (
        r"skip_none parameter was deprecated",
        "inside LightningCLI's call to jsonargparse: nothing nml passes",
    ),
)

# (logger-name regex, message regex, both matched from the start; why it is noise)
LIBRARY_CHATTER: tuple[tuple[str, str, str], ...] = (
    (r"lightning", r"\s*💡 Tip:", "advertising for Lightning's cloud products"),
    (
        r"lightning\.pytorch\.callbacks\.model_summary",
        r"",
        "a table of three modules with a FLOP column of zeros; nml logs parameters and FLOPs itself",
    ),
    (
        r"lightning",
        r"Loading `train_dataloader` to estimate number of stepping batches",
        "an internal step of the trainer, not an event of the run",
    ),
    (
        r"root",
        r"(Parsing tokenizer identifier|Attempting to load config from built-in|Using default SimpleTokenizer)",
        "open_clip's account of resolving its built-in tokenizer (on the root logger), three lines "
        "for each tokenizer the CLIP model and its zero-shot heads build",
    ),
)


class _Chatter(logging.Filter):
    """Drops the records :data:`LIBRARY_CHATTER` lists (logger name and message matched from the
    start)."""

    def __init__(self) -> None:
        super().__init__()
        self.rules = [(re.compile(n), re.compile(m)) for n, m, _ in LIBRARY_CHATTER]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n.match(record.name) and m.match(message) for n, m in self.rules)


_CHATTER = _Chatter()


_verbose = False  # set by quiet_console: --verbose (or NML_VERBOSE=1) shows everything


def is_verbose() -> bool:
    """Whether this process shows everything (``--verbose``): what a study's worker processes take."""
    return _verbose


def _console_handlers() -> list[logging.Handler]:
    """The handlers that print on the terminal: nml's and (once imported) Lightning's own."""
    nml = [h for h in logging.getLogger().handlers if getattr(h, "_nml", False)]
    return nml + list(logging.getLogger("lightning").handlers)


def quiet_console(verbose: bool = False) -> None:
    """At the entry point: filter :data:`HARMLESS_WARNINGS` and, on nml's handler,
    :data:`LIBRARY_CHATTER` (nothing with ``verbose``). Lightning's own handler exists once
    Lightning is imported: the commands that import it call :func:`quiet_lightning`."""
    global _verbose
    _verbose = verbose
    if verbose:
        return
    for pattern, _ in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    quiet_lightning()


def quiet_lightning() -> None:
    """Put the :data:`LIBRARY_CHATTER` filter on the terminal's handlers (Lightning's included,
    when it is imported); a no-op under ``--verbose``."""
    if _verbose:
        return
    for handler in _console_handlers():
        if _CHATTER not in handler.filters:
            handler.addFilter(_CHATTER)


@contextlib.contextmanager
def stage_console(log_file: logging.Handler):
    """While a study stage runs: every record (nml's and Lightning's) goes to ``log_file``; the
    terminal shows warnings and errors only (everything under ``--verbose``)."""
    import lightning  # noqa: F401  (its handler exists from here on)

    quiet_lightning()
    console = _console_handlers()  # before the log file joins Lightning's handlers
    logger = logging.getLogger("lightning")
    logger.addHandler(log_file)  # Lightning's records do not propagate to the root logger
    raised = []
    if not _verbose:
        for handler in console:
            raised.append((handler, handler.level))
            handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield
    finally:
        logger.removeHandler(log_file)
        for handler, level in raised:
            handler.setLevel(level)

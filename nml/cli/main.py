"""The ``nml`` command.

``nml fit | validate | test | predict`` go to LightningCLI (subclass mode for model and data);
everything else is a typed function exposed through jsonargparse, listed in ``COMMANDS``. Heavy
imports (torch, lightning) happen only inside the command that needs them, so ``nml --help`` and
``nml data --help`` stay fast.

``--config NAME`` accepts a bare file name: when ``NAME`` is not a file in the working directory,
it resolves to the configs shipped inside the package (``nml/configs``); so do ``.yaml`` values of
``--data`` / ``--model`` / ``--trainer`` (``--data data/features.yaml``). The file used is logged.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import signal
import sys
import tarfile
from collections.abc import Callable, Sequence

from nml.cli.config_args import LIGHTNING_SUBCOMMANDS, resolve_config_args
from nml.configfiles import CONFIG_DIR, resolve_config  # noqa: F401  (for callers: nml.cli.main names them)
from nml.logs import setup_logging
from nml.quiet import quiet_console

# Plain subcommands: name -> "module:function", or group -> {name: "module:function"}. Each
# function's signature and docstring become its options and help; the modules stay light (heavy
# imports live inside the functions).
COMMANDS: dict[str, str | dict[str, str]] = {
    "data": {
        "embedded": "nml.cli.commands.data:embedded",
        "embedded_text": "nml.cli.commands.data:embedded_text",
        "write": "nml.cli.commands.data:write",
        "audit": "nml.data.audit:audit",
        "modalities": "nml.cli.commands.data:modalities",
    },
    "export": "nml.cli.commands.export:export",
    "features": "nml.features.task:features_command",
    "spectrum": "nml.cli.commands.spectrum:spectrum",
    # the study sits above the CLI (it drives `nml fit` / `nml features` itself): named, not imported
    "study": "nml.study.command:study",
    "report": "nml.study.command:report",
}
GROUP_HELP = {"data": "Build, write and inspect WebDataset shards"}

log = logging.getLogger("nml")


POSITIONAL = {"report": "--study_dir"}  # `nml report DIR` = `nml report --study_dir DIR`
# `nml features --data X`: X is the task or data file, the group's `source` (its other options are
# `--data.root`, `--data.loader.*`, spelled as in `nml fit`)
GROUP_VALUES = {"features": {"--data": "--data.source"}}


def group_values(argv: Sequence[str]) -> list[str]:
    """``--data X`` (or ``--data=X``) of a command whose ``data`` is an option group: its value
    option (:data:`GROUP_VALUES`)."""
    names = GROUP_VALUES.get(argv[0], {}) if argv else {}
    out = []
    for a in argv:
        option, eq, value = a.partition("=")
        out.append(f"{names[option]}={value}" if eq and option in names else names.get(a, a))
    return out


def boolean_flags(argv: Sequence[str]) -> set[str]:
    """``--name`` of every ``bool`` parameter of the plain command ``argv`` invokes (none for the
    Lightning subcommands)."""
    import inspect

    target = COMMANDS.get(argv[0]) if argv else None
    if isinstance(target, dict):
        target = target.get(argv[1]) if len(argv) > 1 else None
    if not isinstance(target, str):
        return set()
    params = inspect.signature(_load(target)).parameters.values()
    return {f"--{p.name}" for p in params if p.annotation in (bool, "bool")}


def expand_flags(argv: Sequence[str]) -> list[str]:
    """Bare boolean flags get ``true`` (``--strict`` = ``--strict true``); a command's positional
    argument gets its option name."""
    flags, out = boolean_flags(argv), []
    for i, a in enumerate(argv):
        if i == 1 and argv[0] in POSITIONAL and not a.startswith("-"):
            out.append(POSITIONAL[argv[0]])
        out.append(a)
        if a in flags and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out.append("true")
    return out


def _load(target: str) -> Callable:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def build_parser(argv: Sequence[str] = ()):
    """The jsonargparse parser. Only the function parsers on ``argv``'s path are built in full."""
    from jsonargparse import ActionConfigFile
    from jsonargparse import ArgumentParser as JsonArgumentParser

    from nml import __version__
    from nml.cli.options import EXACT, suggesting

    Suggesting = suggesting(JsonArgumentParser)

    def ArgumentParser(**kwargs):
        return Suggesting(**EXACT, **kwargs)

    parser = ArgumentParser(
        prog="nml",
        description="Noisy Model Learning with PyTorch Lightning",
        default_env=False,
        exit_on_error=False,  # errors reach main(): one line, not a usage dump
    )
    parser.add_argument("--version", action="version", version=f"nml {__version__}")
    sub = parser.add_subcommands(required=True, dest="command")
    for name, help_ in LIGHTNING_SUBCOMMANDS.items():
        sub.add_subcommand(name, ArgumentParser(description=help_), help=help_)

    def function_parser(path: list[str], target: str) -> ArgumentParser:
        fn = _load(target)  # command modules import nothing heavy at module level
        fp = ArgumentParser(
            prog=f"nml {' '.join(path)}",
            description=(fn.__doc__ or "").strip().split("\n\n")[0],
            exit_on_error=False,
        )
        if list(argv[: len(path)]) == path:  # only the invoked command is built in full
            fp.add_argument("--config", action=ActionConfigFile, help="YAML with these options")
            fp.add_function_arguments(fn, as_group=False)
        return fp

    for group, commands in COMMANDS.items():
        if isinstance(commands, str):
            fp = function_parser([group], commands)
            sub.add_subcommand(group, fp, help=fp.description.split("\n")[0])
            continue
        gp = ArgumentParser(description=GROUP_HELP.get(group, ""))
        sub.add_subcommand(group, gp, help=GROUP_HELP.get(group, ""))
        gsub = gp.add_subcommands(required=True, dest="subcommand")
        for cmd, target in commands.items():
            fp = function_parser([group, cmd], target)
            gsub.add_subcommand(cmd, fp, help=fp.description.split("\n")[0])
    return parser


# Errors that describe bad input (files, options, data): one line on stderr, exit status 1; the
# traceback with --debug or NML_DEBUG=1. Anything else is a bug and keeps its traceback.
USER_ERRORS = (
    argparse.ArgumentError,
    ValueError,
    TypeError,
    KeyError,
    OSError,
    EOFError,
    RuntimeError,
    tarfile.TarError,
)
_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":?$')
_UNION_NOISE = ("Does not validate", "Subtypes:", "Errors:", "Problem with given class_path", "Given value")


def error_line(e: BaseException) -> str:
    """The message of ``e`` on one line. A jsonargparse union dump (every type it tried, 60-115
    lines) becomes the dotted option and the first reason (``model.method: Expected a ...``)."""
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keys, reason = [], ""
    for ln in lines:
        m = _PARSER_KEY.match(ln)
        if m:
            keys.append(m.group(1))
        elif not ln.removeprefix("- ").startswith(_UNION_NOISE) and "<class 'NoneType'>" not in ln:
            reason = ln.removeprefix("- ")  # nested unions: the first line that is not their dump
            break
    if keys and reason:
        return f"--{'.'.join(keys)}: {reason}"
    if lines[0].startswith(_UNION_NOISE) and reason:  # a union that failed when instantiated
        return reason
    name = "" if isinstance(e, argparse.ArgumentError) else f"{type(e).__name__}: "
    if lines[0].startswith("Error(s) in loading state_dict for"):
        return f"{name}{state_dict_summary(lines)}"
    worker = _WORKER_ERROR.match(lines[0])
    if worker and len(lines) > 1:  # torch re-raises a worker's error with its traceback as the message:
        last = re.sub(r"^[\w.]+\.(\w+: )", r"\1", lines[-1])  # the worker's "ShardFormatError: shard ..."
        return f"{last} (in DataLoader worker {worker.group(1)})"
    return f"{name}{lines[0]}" + (" [...]" if len(lines) > 1 else "")


_WORKER_ERROR = re.compile(r"Caught \w+ in DataLoader worker process (\d+)\.")
_QUOTED = re.compile(r'"([^"]+)"')
_SIZE = re.compile(
    r"size mismatch for ([^:]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
    r"the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)


def state_dict_summary(lines: list[str]) -> str:
    """torch's ``Error(s) in loading state_dict`` (one line per kind, every key listed) as one line:
    the counts of missing, unexpected and differently shaped tensors, the first of each, and what
    it means (the checkpoint was saved from another model than the config builds)."""

    def first(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    missing, unexpected, shapes = [], [], []
    for ln in lines[1:]:
        if ln.startswith("Missing key(s)"):
            missing += _QUOTED.findall(ln)
        elif ln.startswith("Unexpected key(s)"):
            unexpected += _QUOTED.findall(ln)
        elif m := _SIZE.match(ln):
            shapes.append(f"{m.group(1)} {m.group(2)} in the checkpoint, {m.group(3)} in the model")
    parts = [
        f"{len(missing)} missing ({first(missing)})" if missing else "",
        f"{len(unexpected)} unexpected ({first(unexpected)})" if unexpected else "",
        f"{len(shapes)} of another shape ({first(shapes)})" if shapes else "",
    ]
    what = "; ".join(p for p in parts if p)
    return (
        f"{lines[0].rstrip(':')}: {what} -- the checkpoint was saved from another model than the "
        "config builds (check --config and --model against the run that wrote it)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("NML_DEBUG", "") not in ("", "0")
    verbose = "--verbose" in argv or os.environ.get("NML_VERBOSE", "") not in ("", "0")
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    setup_logging()
    quiet_console(verbose)  # nml.quiet: what stays off the terminal, and why
    try:
        return _main(argv)
    except SystemExit as e:  # a command's refusal (a message) gets the one error prefix; a status passes
        if not isinstance(e.code, str):
            raise
        print(f"nml: error: {e.code}", file=sys.stderr)
        return 1
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"nml: error: {error_line(e)}{_hint(e)}", file=sys.stderr)
        print("nml: the full traceback: add --debug (or set NML_DEBUG=1)", file=sys.stderr)
        return 1


def _hint(e: BaseException) -> str:
    """What to check, for errors whose message alone does not say (torch's rendezvous timeouts)."""
    if any(c.__name__ in ("DistNetworkError", "DistStoreError") for c in type(e).__mro__):
        where = f"MASTER_ADDR={os.environ.get('MASTER_ADDR', '(unset)')} MASTER_PORT={os.environ.get('MASTER_PORT', '(unset)')}"
        return (
            f" -- the DDP rendezvous at {where} was not reached: it must be node 0's address and a free port, "
            "reachable from every node, with node 0 started; the wait is bounded by the strategy's timeout "
            "(--trainer.strategy.timeout, e.g. 0:10:00)"
        )
    return ""


def _main(argv: list[str]) -> int:
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from nml.cli.lightning import run_lightning

        try:
            run_lightning(argv)
        except SIGTERMException:  # stopped by SIGTERM: the checkpoint is saved (logged above)
            from nml.data.loading import stop_worker_processes

            stop_worker_processes()  # loader workers an interrupted loop left: else the exit waits on them
            return 128 + signal.SIGTERM
        return 0
    argv = group_values(expand_flags(resolve_config_args(argv)))
    parser = build_parser(argv)
    cfg = parser.instantiate_classes(parser.parse_args(argv))  # dataclass options -> instances
    group = cfg.command
    if isinstance(COMMANDS[group], str):
        fn, args = _load(COMMANDS[group]), cfg[group]
    else:
        cmd = cfg[group].subcommand
        fn, args = _load(COMMANDS[group][cmd]), cfg[group][cmd]
    kwargs = {k: v for k, v in args.items(branches=True) if k not in ("config", "__path__")}
    result = fn(**kwargs)
    if result is not None:
        json.dump(result, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Config-file arguments of every ``nml`` command: ``--config NAME`` (and ``.yaml`` values of
``--data`` / ``--model`` / ``--trainer``) resolved to the shipped configs, and the names of the
Lightning subcommands. Below both the entry point (:mod:`nml.cli.main`) and the LightningCLI
(:mod:`nml.cli.lightning`), which each import it and not each other's names."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from nml.configfiles import read_config_file, resolve_config

log = logging.getLogger("nml")

LIGHTNING_SUBCOMMANDS = {
    "fit": "Train a model (LightningCLI): nml fit --config pretrain_clip.yaml",
    "validate": "Run one validation epoch (LightningCLI)",
    "test": "Evaluate on the test suites (LightningCLI): nml test --config C --ckpt_path P",
    "predict": "Run prediction (LightningCLI)",
}


CONFIG_OPTIONS = ("--config", "--data", "--model", "--trainer")


def _is_config_value(option: str, value: str) -> bool:
    return option == "--config" or value.endswith((".yaml", ".yml"))


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """Rewrite ``--config X`` (and ``--data X.yaml``, ``--model X.yaml``, ``--trainer X.yaml``, in
    both ``--opt X`` and ``--opt=X`` forms) so that bare names find the shipped configs. A
    ``--data`` / ``--model`` / ``--trainer`` file may be that section alone or a whole config that
    has it (``--data tune_nmtune.yaml`` takes its ``data:``), as ``nml features --data`` takes it:
    one file shape for every command."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        option, eq, value = a.partition("=")
        separate = not eq and a in CONFIG_OPTIONS and i + 1 < len(argv)  # "--data X", not "--data=X"
        if separate:
            option, value = a, argv[i + 1]
        if option in CONFIG_OPTIONS and value and _is_config_value(option, value):
            path = resolve_config(value)
            content = read_config_file(path)  # not a YAML mapping: named, its content never echoed
            log.info("using %s %s", option.lstrip("-"), path.resolve())
            lightning = bool(argv) and argv[0] in LIGHTNING_SUBCOMMANDS  # nml features reads files itself
            out.append(f"{option}={_section(option, path, content) if lightning else path}")
            i += 1 + separate
        else:  # not a config file (``--data glyphs_heldout``: a task name): passed on as typed
            out.append(a)
            i += 1
    return out


def _section(option: str, path: Path, content: dict) -> str:
    """``path``, or the JSON of its ``data:`` / ``model:`` / ``trainer:`` section when ``path`` (whose
    options are ``content``) is a whole config (the section is what LightningCLI expects after
    ``--data``)."""
    key = option.lstrip("-")
    if key == "config":
        return str(path)
    if isinstance(content.get(key), dict) and "class_path" not in content:
        log.info("--%s %s: its %s: section", key, path.name, key)
        return json.dumps(content[key])
    return str(path)

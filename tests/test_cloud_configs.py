"""Where a config's shards are: one rule (shard specs under ``data:`` are relative to ``data.root``
when it is set), stated in every cloud config's header, and the README's cluster and Docker commands
run as written against a stand-in data directory."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import braceexpand
import pytest
import yaml
from helpers import REPO, write_shards

from nml.configfiles import CONFIG_DIR
from nml.data.modules import ClassificationShards

CLOUD = sorted((CONFIG_DIR / "cloud").glob("*.yaml"))
PRETRAIN = [c for c in CLOUD if c.name.startswith("pretrain_")]
# what a GPU config needs to be built on this CPU (the data options are the config's own)
ON_CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1"]
ON_CPU += ["--trainer.precision", "32", "--trainer.strategy", "auto"]


def _specs(cfg: Path) -> list[str]:
    data = yaml.safe_load(cfg.read_text())["data"]["init_args"]
    return [data["train"], data["val"], *(t["shards"] for t in data.get("test") or [])]


def _stand_in(root: Path, specs: list[str]) -> None:
    """Every shard file the specs name, empty (the data module checks that they exist)."""
    for spec in specs:
        for path in braceexpand.braceexpand(spec):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).touch()


def test_relative_specs_are_relative_to_data_root_when_it_is_set(tmp_path, monkeypatch):
    """The same relative spec reads the shards under data.root (from any working directory), and
    under the working directory when data.root is unset; absolute specs are kept."""
    spec = write_shards(tmp_path / "data" / "sub", [6, 4], num_classes=3)
    relative = os.path.relpath(spec, tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    dm = ClassificationShards(
        root=str(tmp_path / "data"),
        train=relative,
        val=relative,
        test=[{"name": "held", "shards": relative, "group": "ood"}],
        loader={"num_workers": 0, "batch_size": 5},
    )
    assert dm.train_spec == spec and dm.val_spec == spec and dm.test_sets[0].shards == spec
    dm.setup("fit")
    assert sum(len(b["target"]) for b in dm.train_dataloader()) == 10
    assert ClassificationShards(root=str(tmp_path / "x"), train=spec, num_classes=3).train_spec == spec
    monkeypatch.chdir(tmp_path / "data")
    assert ClassificationShards(train=relative, num_classes=3).train_spec == relative
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "x" / "sub"))):
        ClassificationShards(root=str(tmp_path / "x"), train=relative, num_classes=3)


@pytest.mark.parametrize("cfg", CLOUD, ids=lambda c: c.name)
def test_every_cloud_config_states_where_its_shards_are(cfg):
    text = cfg.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert "Where the shards are (the rule of every config)" in header, cfg.name
    doc = yaml.safe_load(text)
    root = doc["benchmark"]["root"] if "benchmark" in doc else doc["data"]["init_args"]["root"]
    assert Path(root).is_absolute() and f"here {root}" in " ".join(header.split()), cfg.name
    if "data" in doc:  # every spec relative, so that --data.root moves them all
        assert all(not Path(s).is_absolute() for s in _specs(cfg)), cfg.name


def test_the_sbatch_header_command_trains_on_the_shards_under_its_data_root(tmp_path, monkeypatch):
    """tools/slurm/fit.sbatch's usage line, run as written with a stand-in srun and the shards at
    the --data.root it names moved to a stand-in directory: the command srun gets builds the
    config's data module on the stand-in shards."""
    from nml.cli.lightning import build_cli

    sbatch = REPO / "tools" / "slurm" / "fit.sbatch"
    usage = re.search(r"#   (sbatch .*?)\n#\n", sbatch.read_text(), re.S).group(1)
    words = shlex.split(usage.replace("\\\n#", " "))
    script = words.index("tools/slurm/fit.sbatch")
    args = words[script + 1 :]
    shown_root = args[args.index("--data.root") + 1]
    standin = tmp_path / "standin"
    args[args.index("--data.root") + 1] = str(standin)
    cfg = CONFIG_DIR / args[0]
    _stand_in(standin, _specs(cfg))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done > srun.args\n')
    (tmp_path / "bin" / "srun").chmod(0o755)
    env = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "8"}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    subprocess.run(["bash", str(sbatch), *args], env=env, cwd=tmp_path, check=True, timeout=30)
    got = (tmp_path / "srun.args").read_text().splitlines()
    assert got[:2] == ["nml", "fit"] and got[got.index("--data.root") + 1] == str(standin), got
    assert shown_root != str(standin)
    monkeypatch.chdir(tmp_path)
    fit = [a for a in got[2:] if a not in ("--ckpt_path", "last")]
    cli = build_cli([*fit, *ON_CPU, "--model.init_args.compile", "false"], run=False, save_config=False)
    dm = cli.datamodule
    specs = [dm.train_spec, dm.val_spec, *(s.shards for s in dm.test_sets)]
    assert specs == [str(standin / s) for s in _specs(cfg)]


def _docker_mounts(command: str) -> dict[str, str]:
    words = shlex.split(command)
    return dict(words[i + 1].split(":")[:2][::-1] for i, w in enumerate(words) if w == "-v")


def test_the_docs_multi_node_docker_command_mounts_the_configs_data_root(tmp_path):
    """The multi-node `docker run` of docs/scaling.md mounts a host directory at the path the cloud
    config's data.root names inside the container, so the config's shards are found as written: a
    stand-in host directory with the shards, mounted as the command says, serves every spec."""
    from nml.cli.lightning import build_cli

    text = (REPO / "docs" / "scaling.md").read_text()
    command = re.search(r"(docker run [^\n]*--network host.*?)\n(?!\s)", text, re.S).group(1)
    command = command.replace("\\\n", " ")
    mounts = _docker_mounts(command)  # container path -> host path
    cfg = CONFIG_DIR / re.search(r"--config (\S+)", command).group(1)
    root = yaml.safe_load(cfg.read_text())["data"]["init_args"]["root"]
    assert root in mounts, (root, mounts)
    standin = tmp_path / "host" / mounts[root].lstrip("/")  # the host directory, stand-in
    _stand_in(standin, _specs(cfg))
    cli = build_cli(
        ["--config", str(cfg), "--data.root", str(standin), *ON_CPU], run=False, save_config=False
    )
    assert cli.datamodule.train_spec == str(standin / _specs(cfg)[0])

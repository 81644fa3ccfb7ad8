from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import PYTHON, REPO, nml_in_one_process, nml_subprocess_env

from nml.cli.main import CONFIG_DIR, build_parser, main, resolve_config


def _run(*code_or_args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, *code_or_args],
        capture_output=True,
        text=True,
        env=nml_subprocess_env(),
        timeout=timeout,
        cwd=REPO,
    )


@pytest.mark.slow
def test_help_is_lazy_and_lists_subcommands():
    code = (
        "import sys\nfrom nml.cli.main import main\n"
        "for argv in (['--help'], ['data', '--help'], ['data', 'embedded', '--help'], ['data', 'write', '--help'], ['data', 'audit', '--help'], ['features', '--help'], ['study', '--help'], ['report', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning', 'webdataset', 'timm', 'open_clip') if m in sys.modules))"
    )
    r = _run("-c", code)
    assert r.returncode == 0, r.stderr
    for word in (
        "fit",
        "validate",
        "test",
        "predict",
        "data",
        "embedded",
        "write",
        "--out",
        "--shard_size",
        "--strict",
        "audit",
        "--noise.help",
        "--num_workers",
        "features",
        "--views",
        "--backbone",
        "study",
        "report",
    ):
        assert word in r.stdout
    assert "HEAVY []" in r.stdout


@pytest.mark.slow
def test_lightning_subcommands_reach_lightning_cli():
    r = _run("-m", "nml.cli", "fit", "--help")
    assert r.returncode == 0, r.stderr
    for word in ("--trainer", "--model", "--data", "--ckpt_path", "--config"):
        assert word in r.stdout


def test_bare_config_names_resolve_to_shipped_configs(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("embedded.yaml") == CONFIG_DIR / "data" / "embedded.yaml"
    (tmp_path / "embedded.yaml").write_text("out: here\n")
    assert resolve_config("embedded.yaml") == Path("embedded.yaml")  # a local file wins
    with pytest.raises(FileNotFoundError, match="neither a file here nor a shipped config"):
        resolve_config("nope.yaml")


@pytest.mark.slow
def test_data_embedded_from_a_bare_config_name_prints_json(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "data",
                "embedded",
                "--config",
                "embedded.yaml",
                "--size",
                "tiny",
                "--fonts",
                "fallback",
                "--num_workers",
                "0",
                "--progress",
                "false",
                "--out",
                "bench",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["size"] == "tiny" and out["images"] > 0 and (tmp_path / "bench" / "manifest.json").is_file()
    assert "using config" in caplog.text and "data/embedded.yaml" in caplog.text


def test_data_write_infers_the_format(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "tree" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "tree" / "a" / "x.png")
    assert (
        main(
            [
                "data",
                "write",
                "--source",
                str(tmp_path / "tree"),
                "--out",
                str(tmp_path / "s"),
                "--progress",
                "false",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["samples"] == 1
    assert main(["data", "write", "--source", str(tmp_path / "nothing"), "--out", str(tmp_path / "s2")]) == 1
    assert capsys.readouterr().err.startswith("nml: error: source ")  # the one error prefix


SHIPPED = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_shipped_configs_are_the_repo_configs():
    assert (REPO / "configs").resolve() == CONFIG_DIR.resolve()
    names = {str(c.relative_to(CONFIG_DIR)) for c in SHIPPED}
    assert {
        "pretrain_supervised.yaml",
        "pretrain_clip.yaml",
        "tune_nmtune.yaml",
        "data/features.yaml",
    } <= names
    assert any(n.startswith("cloud/") for n in names)


@pytest.mark.parametrize("cfg", SHIPPED, ids=lambda c: str(c.relative_to(CONFIG_DIR)))
def test_shipped_config_parses(cfg, capsys):
    """Each shipped YAML parses in process against what consumes it: configs/data/{embedded,write,audit}*
    against `nml data <command>`; data-module files (class_path) as `--data` of a tune config; all
    others against LightningCLI (`nml fit --print_config` parses and links without instantiating)."""
    if cfg.name.startswith("study_"):  # `nml study` options
        ns = build_parser(["study"]).parse_args(["study", "--config", str(cfg)])
        assert ns["study"]["name"] and ns["study"]["tasks"] and ns["study"]["grid"]["noise_rates"]
        return
    if cfg.parent.name == "data" and "class_path" not in cfg.read_text():
        command = next(c for c in ("embedded", "write", "audit") if cfg.stem.startswith(c))
        ns = build_parser(["data", command]).parse_args(["data", command, "--config", str(cfg)])
        assert ns["data"][command]["out"]
        return
    args = ["--config", str(cfg)]
    if cfg.parent.name == "data":
        args = ["--config", "tune_nmtune.yaml", "--data", str(cfg)]
    with pytest.raises(SystemExit) as e:
        main(["fit", *args, "--print_config"])
    printed = capsys.readouterr().out
    assert e.value.code in (0, None) and "class_path" in printed
    checkpoints = [
        c["init_args"]
        for c in yaml.safe_load(printed)["trainer"].get("callbacks") or []
        if c["class_path"].endswith("ModelCheckpoint")
    ]
    if any(c.get("monitor") for c in checkpoints):  # a monitored best-* needs an unconditional last.ckpt
        assert any(not c.get("monitor") and c.get("save_last") for c in checkpoints), cfg


def test_errors_are_one_line_naming_the_input_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NML_DEBUG", raising=False)
    assert main(["data", "audit", "--shards", str(tmp_path / "nothere-{0..1}.tar")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("nml: error: FileNotFoundError: shard spec") and "nothere-0.tar" in err[0]
    assert len(err) == 2 and "--debug" in err[1]
    assert main(["data", "audit", "--shards", "x.tar", "--bogus", "1"]) == 1
    assert "nml: error: unrecognized arguments: --bogus 1" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        main(["data", "audit", "--shards", str(tmp_path / "nothere.tar"), "--debug"])
    monkeypatch.setenv("NML_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["data", "audit", "--shards", str(tmp_path / "nothere.tar")])


@pytest.mark.slow
def test_lightning_errors_are_one_line_bad_options_and_broken_checkpoints(tmp_path):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("e" * 101)
    cases = {
        ("--model.init_args.method", "bogus"): "--model.method: Expected a typing.Literal['linear', 'mlp', "
        "'nmtune', 'finetune']. Got value: bogus",
        (
            "--ckpt_path",
            str(tmp_path / "empty.ckpt"),
        ): f"'{tmp_path / 'empty.ckpt'}' is not a PyTorch checkpoint (0 bytes, empty)",
        (
            "--ckpt_path",
            str(tmp_path / "text.ckpt"),
        ): "text.ckpt' is not a PyTorch checkpoint (101 bytes, starts with b'eeeeeeee')",
    }
    runs = [["test", "--config", "tune_linear.yaml", *args] for args in cases]
    results = nml_in_one_process(runs, tmp_path, expect=[1] * len(runs))  # each exits 1
    for message, (_, err) in zip(cases.values(), results, strict=True):
        lines = [ln for ln in err.splitlines() if ln.startswith("nml: ")]
        assert message in lines[0] and len(err.splitlines()) <= 4, err[-2000:]


def test_boolean_options_of_plain_commands_work_bare():
    from nml.cli.main import expand_flags

    argv = ["data", "write", "--source", "s", "--out", "o", "--strict", "--overwrite", "--shard_size", "5"]
    assert expand_flags(argv) == [*argv[:7], "true", "--overwrite", "true", "--shard_size", "5"]
    assert expand_flags(["data", "audit", "--strict", "false"]) == ["data", "audit", "--strict", "false"]
    assert expand_flags(["study", "--dry_run"]) == ["study", "--dry_run", "true"]
    assert expand_flags(["report", "runs/s"]) == ["report", "--study_dir", "runs/s"]
    assert expand_flags(["fit", "--ckpt_path", "x"]) == ["fit", "--ckpt_path", "x"]  # LightningCLI's own


@pytest.mark.slow
def test_setup_gives_each_checkout_its_own_environment_over_one_shared_stack(tmp_path):
    """Two clones set up one after the other each run their own code (a shared editable install ran
    whichever clone was set up last), while the ~6 GB stack stays one shared venv: the second
    clone's setup installs no dependency."""
    import hashlib
    import shutil

    deps = Path(os.environ.get("NML_VENV", Path.home() / ".cache/nml/venv-py311"))
    pinned = (REPO / "pyproject.toml").read_bytes() + (REPO / "tools/constraints.txt").read_bytes()
    stamps = [  # as tools/setup.sh names them: the pins and the extras installed (--text: dev,text)
        deps / f".nml-deps-{hashlib.sha256(pinned + extras).hexdigest()[:16]}"
        for extras in (b"dev\n", b"dev,text\n")
    ]
    assert any(s.exists() for s in stamps), f"run tools/setup.sh first ({deps})"
    clones = [tmp_path / "a", tmp_path / "b"]
    for root in clones:
        (root / "tools").mkdir(parents=True)
        for name in ("pyproject.toml", "README.md", "LICENSE", "tools/setup.sh", "tools/constraints.txt"):
            shutil.copy(REPO / name, root / name)
        shutil.copytree(REPO / "nml", root / "nml", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("NML_ENV", "VIRTUAL_ENV", "PYTHONPATH")}
    env |= {"NML_VENV": str(deps), "NML_FONTS": "skip"}
    for root in clones:
        r = subprocess.run(
            ["bash", "tools/setup.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr
        assert "installing dependencies" not in r.stderr, r.stderr
    for root in clones:  # from /, so that no working directory answers `import nml`
        r = subprocess.run(
            [str(root / ".venv/bin/python"), "-c", "import nml, torch; print(nml.__file__)"],
            cwd="/",
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(root / "nml" / "__init__.py")
        assert (root / ".venv/bin/nml").exists() and (root / ".venv/bin/pytest").exists()
    # a second run is a no-op
    r = subprocess.run(
        ["bash", "tools/setup.sh"], cwd=clones[0], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and "installing" not in r.stderr, r.stderr


def test_ckpt_path_takes_a_run_directory(tmp_path):
    import torch

    from nml.cli.lightning import check_ckpt_args

    run = tmp_path / "runs" / "pretrain_supervised" / "noisy"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}}, run / "checkpoints" / "last.ckpt")
    last = str(run / "checkpoints" / "last.ckpt")
    assert check_ckpt_args(["test", "--ckpt_path", str(run)]) == ["test", "--ckpt_path", last]
    assert check_ckpt_args(["test", f"--ckpt_path={run}"]) == ["test", f"--ckpt_path={last}"]
    assert check_ckpt_args(["fit", "--ckpt_path", "last"]) == ["fit", "--ckpt_path", "last"]
    with pytest.raises(FileNotFoundError, match="has no checkpoints/last.ckpt"):
        check_ckpt_args(["test", "--ckpt_path", str(tmp_path)])


def test_data_model_trainer_files_may_be_whole_configs(capsys, caplog):
    """`--data FILE` takes a data-module file or a whole config with a `data:` section (what
    `nml features --data` takes): `nml fit --config pretrain_supervised.yaml --data tune_nmtune.yaml`
    trains on the tune config's data."""
    import yaml

    with caplog.at_level("INFO"), pytest.raises(SystemExit) as e:
        main(["fit", "--config", "pretrain_supervised.yaml", "--data", "tune_nmtune.yaml", "--print_config"])
    assert e.value.code in (0, None)
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["class_path"] == "nml.data.modules.ClassificationShards"
    assert (
        data["init_args"]["task"] == "glyphs_heldout"
        and data["init_args"]["loader"]["eval_batch_size"] == 256
    )
    assert "--data tune_nmtune.yaml: its data: section" in caplog.text


def test_a_run_that_fails_before_its_first_step_leaves_no_run_directory(
    tmp_path, monkeypatch, caplog, capsys
):
    """A label outside the declared classes stops the run at its first batch: one error line, and no
    empty version_N beside the real runs."""
    import json as _json

    from helpers import write_shards

    spec = write_shards(tmp_path / "bad", [20], num_classes=12)
    info = tmp_path / "bad" / "_info.json"
    info.write_text(
        _json.dumps({**_json.loads(info.read_text()), "num_classes": 10, "classes": list("abcdefghij")})
    )
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO"):
        code = main(
            [
                "fit",
                "--config",
                "pretrain_supervised.yaml",
                "--data.train",
                spec,
                "--data.val",
                spec,
                "--data.loader.num_workers",
                "0",
                "--data.loader.batch_size",
                "16",
                "--data.image.image_size",
                "16",
                "--trainer.accelerator",
                "cpu",
                "--trainer.max_steps",
                "2",
                "--trainer.logger.init_args.save_dir",
                str(tmp_path / "runs"),
            ]
        )
    assert code == 1
    err = capsys.readouterr().err
    assert "nml: error:" in err and "is outside [0, 10)" in err  # one line naming the label
    assert not list((tmp_path / "runs").rglob("version_*")), list((tmp_path / "runs").rglob("*"))
    assert "removed" in caplog.text and "the run failed before its first step" in caplog.text


def test_an_option_group_refuses_unknown_keys_naming_them():
    from nml.data.modules import ClassificationShards

    with pytest.raises(ValueError, match=r"data.loader: unknown keys \['bogus'\]"):
        ClassificationShards(train="x-{0..1}.tar", loader={"bogus": 1})


def test_nml_features_refuses_a_data_file_with_an_unknown_option_naming_it(tmp_path):
    from nml.features.task import task_data_module

    bad = tmp_path / "data.yaml"
    bad.write_text(
        "data:\n  class_path: nml.data.modules.ClassificationShards\n  init_args:\n    image_size: 16\n"
    )
    with pytest.raises(
        ValueError,
        match=r"data.yaml: the data module .*ClassificationShards: Option 'image_size' is not accepted",
    ):
        task_data_module(str(bad), None, 8, 0)


def test_an_error_raised_in_a_dataloader_worker_keeps_its_own_message():
    """torch re-raises a worker's exception as "Caught X in DataLoader worker process 0." with the
    worker's traceback as the message: the one-line error is the worker's own line."""
    import sys

    from torch._utils import ExceptionWrapper

    from nml.cli.main import error_line
    from nml.shards.members import ShardFormatError

    try:
        raise ShardFormatError("shard 'x.tar', sample 'k1': cls 7 is outside [0, 5)")
    except ShardFormatError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 1")
    with pytest.raises(ShardFormatError) as caught:
        wrapped.reraise()
    assert error_line(caught.value) == (
        "ShardFormatError: shard 'x.tar', sample 'k1': cls 7 is outside [0, 5) (in DataLoader worker 1)"
    )


def test_a_bad_value_inside_a_nested_union_is_named_by_its_own_reason():
    """``--data.noise.rate 1.5`` fails inside two jsonargparse unions (the data module, then the
    noise): the one-line error is the noise's own reason, not "Does not validate ..."."""
    from nml.cli.main import error_line

    dump = """Does not validate against any of the Union subtypes
Subtypes: [<class 'lightning.pytorch.core.datamodule.LightningDataModule'>, <class 'NoneType'>]
Errors:
  - Does not validate against any of the Union subtypes
    Subtypes: [<class 'nml.noise.config.NoiseConfig'>, <class 'NoneType'>]
    Errors:
      - noise.rate must be in [0, 1), got 1.5
      - Expected a <class 'NoneType'>
    Given value type: <class 'jsonargparse._namespace.Namespace'>
  - Expected a <class 'NoneType'>"""
    assert error_line(ValueError(dump)) == "noise.rate must be in [0, 1), got 1.5"


def test_ckpt_path_last_names_a_damaged_newest_checkpoint(tmp_path):
    from jsonargparse import Namespace

    from nml.cli.run_directory import continue_last_run

    run = tmp_path / "runs" / "tune" / "version_0" / "checkpoints"
    run.mkdir(parents=True)
    (run / "epoch=0.ckpt").write_bytes(b"PK\x03\x04 an older one")
    (run / "step-step=9.ckpt").write_bytes(b"")  # the newest: cut off by a kill
    os.utime(run / "epoch=0.ckpt", ns=(1_000_000_000, 1_000_000_000))
    logger = Namespace(
        class_path="lightning.pytorch.loggers.TensorBoardLogger",
        init_args=Namespace(save_dir=str(tmp_path / "runs"), name="tune", version=None),
    )
    fit = Namespace(trainer=Namespace(logger=logger), ckpt_path="last")
    with pytest.raises(ValueError, match=r"step-step=9.ckpt' is not a PyTorch checkpoint \(0 bytes, empty\)"):
        continue_last_run(fit)


def test_damaged_inputs_are_named_with_their_cause(tmp_path):
    """A corrupt encoder.json, a truncated results.csv and a mistyped shard path each name the file
    and the cause (they used to surface as a bare JSONDecodeError, a TypeError in float(), and
    "num_classes not given")."""
    from nml.data.modules import ClassificationShards
    from nml.models.backbones import create_backbone
    from nml.study.results import COLUMNS, read_results

    export = tmp_path / "export"
    export.mkdir()
    (export / "encoder.json").write_text('{"backbone": {"library": "timm"')
    with pytest.raises(
        ValueError, match=r"encoder.json: not a readable nml export description \(JSONDecodeError"
    ):
        create_backbone(str(export))
    results = tmp_path / "results.csv"
    results.write_text(",".join(COLUMNS) + "\nsupervised,pretrained,0.0,0,linear,t\n")
    with pytest.raises(ValueError, match=r"results.csv, line 2: expected \d+ columns, got a row of 6"):
        read_results(results)
    with pytest.raises(FileNotFoundError, match=r"1 shard file\(s\) missing, first .*trian-0000.tar"):
        ClassificationShards(train=str(tmp_path / "trian-{0000..0000}.tar"))


def test_a_config_option_whose_value_is_not_a_file_is_passed_on_as_typed():
    """``nml features --data glyphs_heldout`` (a task, space-separated) lost its value: the resolver
    took it as a config file's place and then dropped it."""
    from nml.cli.main import resolve_config_args

    argv = ["features", "--backbone", "x", "--data", "glyphs_heldout", "--out", "o"]
    assert resolve_config_args(argv) == argv
    assert resolve_config_args(["features", "--data=glyphs_heldout"]) == ["features", "--data=glyphs_heldout"]
    resolved = resolve_config_args(["features", "--data", "tune_nmtune.yaml", "--views", "2"])
    assert resolved[1].startswith("--data=") and resolved[1].endswith("tune_nmtune.yaml")
    assert resolved[2:] == ["--views", "2"]


def test_lightnings_sync_dist_advice_is_expected_for_nmls_exact_epoch_values():
    """nml's epoch values are summed over ranks already; Lightning's advice (the text of its
    logger connector) is silenced at the entry point, and only it."""
    import re

    from nml.quiet import HARMLESS_WARNINGS

    EXPECTED_WARNINGS = [p for p, _ in HARMLESS_WARNINGS]
    advice = (
        "It is recommended to use `self.log('train/loss_epoch', ..., sync_dist=True)` when logging on epoch "
        "level in distributed setting to accumulate the metric across devices."
    )
    assert sum(bool(re.match(p, advice)) for p in EXPECTED_WARNINGS) == 1
    assert not any(re.match(p, "It is recommended to use a GPU") for p in EXPECTED_WARNINGS)


def test_progress_lines_after_a_mid_epoch_resume_time_the_resumed_part(caplog):
    """A resume mid-epoch gets no epoch start from Lightning: the lines used to time the epoch from
    the clock's origin ("0 samples/s | ETA 2:26:06", "epoch 1 done in 51:12" for 6-minute epochs)."""
    import time
    from types import SimpleNamespace

    from nml.callbacks.progress import ProgressLines

    class Lines(ProgressLines):
        total_train_batches = 40  # what Lightning's property reads from a trainer

    bar = Lines(every_n_steps=5)
    bar._trainer = SimpleNamespace(is_global_zero=True, current_epoch=1, global_step=30, world_size=1)
    bar.get_metrics = lambda trainer, module: {}
    batch = {"valid": [True] * 16}
    with caplog.at_level("INFO", logger="nml.progress"):
        bar.on_train_batch_start(bar._trainer, None, batch, 25)  # resumed at batch 25 of 40
        for i in range(25, 30):
            time.sleep(0.01)
            bar.on_train_batch_end(bar._trainer, None, None, batch, i)
        bar.on_train_epoch_end(bar._trainer, None)
    step = next(r.getMessage() for r in caplog.records if "step 30/40" in r.getMessage())
    rate = float(step.split(" samples/s")[0].rsplit("| ", 1)[1])
    assert 500 < rate < 16 * 5 / 0.04  # 80 samples in about 0.05 s, not ~0
    assert "ETA 0:00" in step  # 10 batches at ~0.01 s each, not hours
    done = next(r.getMessage() for r in caplog.records if "done in" in r.getMessage())
    assert "done in 0:00 (resumed at batch 25)" in done


def test_an_optional_grouped_option_can_be_set_to_null_on_the_command_line():
    """``--data.stream.train_shards null`` (a 1-shard corpus under pretrain_text.yaml, which reads the
    first 5) works as it does in YAML, in every spelling, and keeps the group's other options."""
    from nml.cli.lightning import _ParseOnlyCLI, build_cli

    def parse_recipe(argv: list[str]):  # the command line as nml fit parses it, nothing built
        return build_cli(argv, run=False, save_config=False, cli_class=_ParseOnlyCLI).config

    for args in (
        ["--data.stream.train_shards", "null"],
        ["--data.init_args.stream.train_shards=null"],
        ["--data.stream.train_shards", "7", "--data.stream.train_shards", "none"],
    ):
        data = parse_recipe(["--config", "pretrain_text.yaml", "--data.loader.batch_size", "32", *args]).data
        assert data.init_args.stream.train_shards is None, args
        assert data.init_args.loader.batch_size == 32 and data.init_args.noise.kind == "symmetric"
    later = parse_recipe(
        [
            "--config",
            "pretrain_text.yaml",
            "--data.stream.train_shards",
            "null",
            "--data.stream.train_shards",
            "3",
        ]
    )
    assert later.data.init_args.stream.train_shards == 3  # applied in order


def test_a_config_that_is_not_yaml_options_is_named_and_its_content_never_echoed(tmp_path, capsys):
    from nml.cli.main import main

    secret = "root:x:0:0:root:/root:/bin/bash"
    account = tmp_path / "passwd"
    account.write_text(f"{secret}\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_epochs: [1, 2\n")
    binary = tmp_path / "key.bin"
    binary.write_bytes(bytes(range(256)))
    for command in (["fit"], ["report"], ["study"]):
        for path, expected in (
            (account, "expected a YAML mapping of options"),
            (broken, "not a YAML config ("),
            (binary, "not a text file"),
        ):
            assert main([*command, "--config", str(path)]) == 1
            err = capsys.readouterr().err
            assert f"{path}: {expected}" in err, err
            assert "root:x" not in err and "daemon" not in err and "max_epochs" not in err


def test_a_state_dict_mismatch_is_one_line_with_counts_and_the_first_keys():
    import torch

    from nml.cli.main import error_line

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    saved = torch.nn.Sequential(torch.nn.Linear(3, 5)).state_dict() | {
        f"extra.{i}": torch.zeros(1) for i in range(5)
    }
    with pytest.raises(RuntimeError) as e:
        model.load_state_dict(saved)
    line = error_line(e.value)
    assert "\n" not in line and "[...]" not in line
    assert line.startswith(
        "RuntimeError: Error(s) in loading state_dict for Sequential: 2 missing (1.weight, 1.bias)"
    )
    assert "5 unexpected (extra.0, extra.1, extra.2 and 2 more)" in line
    assert "2 of another shape (0.weight [5, 3] in the checkpoint, [4, 3] in the model" in line
    assert "saved from another model than the config builds" in line


def test_the_terminal_is_spared_library_chatter_unless_verbose():
    """nml.quiet: Lightning's tips and model-summary table and open_clip's tokenizer lines are
    dropped from the terminal's handlers, nml's own lines are not; --verbose keeps everything."""
    import logging

    import nml.quiet as quiet

    def shown(handler, name, message):
        return handler.filter(logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None))

    handler = logging.StreamHandler()
    handler._nml = True
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        quiet.quiet_console(verbose=True)
        assert shown(handler, "lightning.pytorch.trainer.connectors.logger_connector", "💡 Tip: try")
        quiet.quiet_console(verbose=False)
        tip = "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"
        assert not shown(handler, "lightning.pytorch.trainer.connectors.logger_connector", tip)
        assert not shown(handler, "lightning.pytorch.callbacks.model_summary", "\n  | Name | Type")
        assert not shown(handler, "root", "Parsing tokenizer identifier. Schema: None, Identifier: ViT-B-32")
        assert shown(handler, "lightning.pytorch.utilities.rank_zero", "GPU available: False, used: False")
        assert shown(handler, "nml.cli.lightning", "fit: 2 epoch(s), 4 steps in 9 s")
        assert shown(handler, "root", "Parsing the shards")  # only the listed lines
    finally:
        root.removeHandler(handler)
        quiet._verbose = False


@pytest.mark.parametrize(
    "argv,given,suggested",
    [
        (
            ["fit", "--config", "pretrain_supervised.yaml", "--trainer.max_epoch", "1"],
            3,
            "--trainer.max_epochs",
        ),
        (
            ["fit", "--config", "pretrain_supervised.yaml", "--trainer.max_epoks", "1"],
            3,
            "--trainer.max_epochs",
        ),
        (["export", "--ckpt", "runs/x", "--out", "y"], 1, "--ckpt_path"),
        (["study", "--confi", "study_quickstart.yaml"], 1, "--config"),
        (
            ["features", "--backbone", "b", "--out", "o", "--root", "r"],
            5,
            "--data.root",
        ),  # as nml fit spells it
    ],
)
def test_an_option_is_its_whole_name_and_a_typo_gets_a_suggestion(argv, given, suggested, capsys):
    """No prefix matching (``--trainer.max_epoch`` used to be taken as ``max_epochs``): a mistyped
    or shortened option is refused, naming the closest options."""
    from nml.cli.main import main

    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {argv[given]}" in err and f"did you mean {suggested}" in err, err

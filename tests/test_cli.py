from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, nml_subprocess_env

from nml.cli import CONFIG_DIR, build_parser, main, resolve_config


def _run(*code_or_args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, *code_or_args],
        capture_output=True,
        text=True,
        env=nml_subprocess_env(),
        timeout=timeout,
        cwd=REPO,
    )


def test_help_is_lazy_and_lists_subcommands():
    code = (
        "import sys\nfrom nml.cli import main\n"
        "for argv in (['--help'], ['data', '--help'], ['data', 'embedded', '--help'], ['data', 'write', '--help'], ['data', 'audit', '--help'], ['features', '--help']):\n"
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
    ):
        assert word in r.stdout
    assert "HEAVY []" in r.stdout


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
    with pytest.raises(SystemExit, match="neither a file here nor a shipped config"):
        resolve_config("nope.yaml")


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
    with pytest.raises(SystemExit, match="does not exist"):
        main(["data", "write", "--source", str(tmp_path / "nothing"), "--out", str(tmp_path / "s2")])


def test_every_shipped_config_parses():
    """configs/data/*.yaml parse against `nml data <command>`; all others (pre-training, cloud ...)
    against LightningCLI (`nml fit --print_config`, which parses and links without instantiating)."""
    configs = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert configs
    assert (REPO / "configs").resolve() == CONFIG_DIR.resolve()
    lightning = [c for c in configs if c.parent.name != "data"]
    modules = [c for c in configs if c.parent.name == "data" and "class_path" in c.read_text()]
    for cfg in configs:
        if cfg in lightning or cfg in modules:
            continue
        command = next(c for c in ("embedded", "write", "audit") if cfg.stem.startswith(c))
        parser = build_parser(["data", command])
        ns = parser.parse_args(["data", command, "--config", str(cfg)])
        assert ns["data"][command]["out"], cfg
    assert {"pretrain_supervised.yaml", "pretrain_clip.yaml", "tune_nmtune.yaml"} <= {
        c.name for c in lightning
    }
    assert modules  # data-module configs (data/features.yaml) replace a tune config's data section
    runs = [["--config", str(c)] for c in lightning]
    runs += [["--config", "tune_nmtune.yaml", "--data", str(c)] for c in modules]
    assert any(c.parent.name == "cloud" for c in lightning)
    code = (
        "import contextlib, io, json, sys\nfrom nml.cli import main\nout = {}\n"
        f"for args in {runs!r}:\n"
        "    buf, cfg = io.StringIO(), args[-1]\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(buf):\n"
        "            main(['fit', *args, '--print_config'])\n"
        "        out[cfg] = 'no exit'\n"
        "    except SystemExit as e:\n"
        "        out[cfg] = 'ok' if not e.code and 'class_path' in buf.getvalue() else f'exit {e.code}'\n"
        "print(json.dumps(out))"
    )
    r = _run("-c", code)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert results == {str(c): "ok" for c in lightning + modules}, r.stderr[-3000:]

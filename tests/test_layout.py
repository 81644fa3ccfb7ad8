"""The layout's promises: imports point down the layers, the bottom layers import no torch, and
library modules change no global state at import."""

from __future__ import annotations

import importlib.util
import subprocess

from helpers import PYTHON, REPO, nml_subprocess_env

NML = REPO / "nml"


def _check_layers():
    spec = importlib.util.spec_from_file_location("check_layers", REPO / "tools" / "check_layers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_points_up_a_layer():
    check = _check_layers()
    assert check.violations() == []
    assert check.main() == 0  # also: every package of nml/ has a layer


def test_the_checker_catches_an_upward_import(tmp_path):
    check = _check_layers()
    pkg = tmp_path / "nml"
    for name, body in {
        "shards": "from nml.models.base import BackboneModule\n",
        "models": "",
        "cli": "",
    }.items():
        (pkg / name).mkdir(parents=True)
        (pkg / name / "x.py").write_text(body)
    (pkg / "models" / "y.py").write_text("def f():\n    from ..cli import x\n")
    found = check.violations(pkg)
    assert found == [
        "nml/models/y.py:2: models (layer 3) imports nml.cli (layer 5)",
        "nml/shards/x.py:1: shards (layer 1) imports nml.models.base (layer 3)",
    ]


def test_no_two_modules_import_each_other_and_the_checker_catches_it(tmp_path):
    check = _check_layers()
    assert check.cycles() == []
    pkg = tmp_path / "nml" / "cli"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text("def run():\n    from nml.cli.lightning import build\n")
    (pkg / "lightning.py").write_text("from nml.cli.main import NAMES\n")
    (pkg / "other.py").write_text("from nml.cli import main\n")
    assert check.cycles(tmp_path / "nml") == ["nml.cli.lightning <-> nml.cli.main"]


def test_shards_noise_and_benchmark_import_no_torch():
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for pkg in ("shards", "noise", "benchmark")
        for p in (NML / pkg).glob("*.py")
    )
    modules += ["nml.seeding", "nml.checksums"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n    importlib.import_module(m)\n"
        "print(sorted(m for m in ('torch', 'lightning', 'webdataset', 'timm', 'open_clip') if m in sys.modules))"
    )
    r = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, env=nml_subprocess_env(), cwd=REPO
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert len(modules) >= 14


def test_library_modules_set_no_warning_filters_at_import():
    offenders = [
        str(p.relative_to(REPO))
        for p in NML.rglob("*.py")
        if p.parent.name != "cli"
        for line in p.read_text().splitlines()
        if line.startswith("warnings.filterwarnings") or line.startswith("warnings.simplefilter")
    ]
    assert offenders == []


def test_backbone_families_are_branched_on_only_inside_their_adapters():
    """A family is one adapter class (nml/models/backbones/): no other module compares a library
    name, so adding a family touches no other file."""
    import re

    branch = re.compile(r"""library\s*[!=]=|[!=]=\s*["'](timm|open_clip)["']""")
    offenders = [
        f"{p.relative_to(REPO)}:{i}"
        for p in NML.rglob("*.py")
        if "backbones" not in p.parts
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert offenders == []


def test_the_study_takes_only_the_cli_builder_from_the_cli():
    check = _check_layers()
    from_cli = {
        (path.name, name)
        for path in (NML / "study").glob("*.py")
        for _, name in check.imports_of(path)
        if name.startswith("nml.cli")
    }
    assert from_cli == {("stages.py", "nml.cli.lightning"), ("estimate.py", "nml.cli.lightning")}
    assert "from nml.cli.lightning import build_recipe" in (NML / "study" / "stages.py").read_text()
    # the plan's estimate parses recipes with the same builder, and builds nothing
    assert (
        "from nml.cli.lightning import parse_recipe, recipe_data_module"
        in (NML / "study" / "estimate.py").read_text()
    )


def test_option_groups_keep_the_constructors_small():
    import inspect

    from nml.data.modules import ShardDataModule
    from nml.models.tuning import DownstreamTuning

    assert len(inspect.signature(ShardDataModule.__init__).parameters) - 1 <= 12
    assert len(inspect.signature(DownstreamTuning.__init__).parameters) - 1 <= 13


def test_the_formatter_and_the_linter_pass_on_every_file():
    import shutil
    import sys
    from pathlib import Path

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    paths = ["nml", "tests", "tools", "benchmarks"]
    for args in (["format", "--check", *paths], ["check", *paths]):
        r = subprocess.run([ruff, *args], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    skips = [
        f"{p.relative_to(REPO)}:{i}"
        for d in paths
        for p in (REPO / d).rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if line.rstrip().endswith("# fmt: skip")  # a skip needs its reason after it: "# fmt: skip  (why)"
    ]
    assert skips == []


def test_every_import_of_an_nml_name_resolves():
    """Lazy imports inside functions (``from nml.x import y``) fail only when their code path runs:
    check every one of them, in the package, the tests, the tools and the benchmarks."""
    import ast
    import importlib

    broken = []
    scripts = [*(REPO / "tools").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
    for path in [*NML.rglob("*.py"), *(REPO / "tests").glob("*.py"), *scripts]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("nml")
            ):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if (
                    not hasattr(module, alias.name)
                    and importlib.util.find_spec(f"{node.module}.{alias.name}") is None
                ):
                    broken.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.module}.{alias.name}")
    assert broken == []


def test_the_benchmarks_are_one_package_that_reaches_no_sibling_by_path():
    """``python -m benchmarks.<name>``: the scripts share ``benchmarks.common`` by import, not by
    ``sys.path`` edits or each other's private names."""
    import ast

    bench = REPO / "benchmarks"
    assert (bench / "__init__.py").is_file() and not list((REPO / "tools").glob("bench_*.py"))
    found = []
    for path in bench.glob("*.py"):
        text = path.read_text()
        if "sys.path" in text:
            found.append(f"{path.name}: sys.path")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks"):
                found += [
                    f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                ]
    assert found == []


def test_study_stages_hand_the_cli_builder_nested_options_and_build_no_trainer():
    """The study talks to training in typed options (nested dicts for ``build_recipe``), never in
    command-line strings, and builds no Trainer of its own (the recipes' trainers run)."""
    import ast

    tree = ast.parse((NML / "study" / "stages.py").read_text())
    argv = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and str(n.value).startswith("--")]
    calls = {
        getattr(n.func, "id", getattr(n.func, "attr", "")) for n in ast.walk(tree) if isinstance(n, ast.Call)
    }
    assert argv == [] and "Trainer" not in calls and "build_recipe" in calls

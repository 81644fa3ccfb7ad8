"""The documentation's promises: links resolve, the README is a front page, the architecture page
names only modules that exist, and the repository carries no stray binaries."""

from __future__ import annotations

import importlib
import re
import subprocess

import pytest
from helpers import REPO

PAGES = sorted([REPO / "README.md", REPO / "BENCHMARKS.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"(?m)^#+\s+(.*)$", page.read_text(encoding="utf-8"))
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_of_the_docs_resolves(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert broken == [], broken


def test_the_readme_is_a_front_page_without_history():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    user_docs = [REPO / "README.md", *(REPO / "docs").glob("*.md")]  # BENCHMARKS.md names its commits
    commits = set(
        subprocess.run(["git", "log", "--format=%h"], cwd=REPO, capture_output=True, text=True).stdout.split()
    )
    for page in user_docs:
        words = set(re.findall(r"\b[0-9a-f]{7,40}\b", page.read_text(encoding="utf-8")))
        assert not {w[:7] for w in words} & {c[:7] for c in commits}, f"{page.name} cites a commit"
        assert not re.search(
            r"\b(this session|in an earlier|has not been re-?run|not re-run since)\b", page.read_text()
        )


def test_the_architecture_page_names_only_modules_that_exist():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    files = set(re.findall(r"`(nml/[\w/]+\.py)", text))
    dotted = set(re.findall(r"`(nml(?:\.\w+)+)", text))
    assert len(files) >= 10
    missing = [f for f in files if not (REPO / f).is_file()]
    assert missing == []
    for name in sorted(dotted):  # a module, or an attribute of one (nml.study.stages.STAGE_KINDS)
        module, attr = name, None
        while module:
            try:
                mod = importlib.import_module(module)
                break
            except ModuleNotFoundError:
                module, _, attr = module.rpartition(".")
        assert module, name
        if attr is not None:
            assert hasattr(mod, attr), name


def test_no_large_binaries_are_tracked_outside_the_results():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    large = [p for p in tracked if (REPO / p).is_file() and (REPO / p).stat().st_size > 1_000_000]
    assert [p for p in large if not p.startswith("docs/results/")] == []
    assert not [p for p in tracked if p.endswith((".whl", ".ckpt", ".pt"))]


def _documented_audits() -> list[tuple[str, list[str]]]:
    """Every ``nml data audit`` command line the docs and the benchmarks page give (backslash
    continuations joined; inline code on the benchmarks page), as (page, argv after ``nml``)."""
    import shlex

    found = []
    for page in (REPO / "docs" / "data.md", REPO / "BENCHMARKS.md"):
        text = page.read_text(encoding="utf-8").replace("\\\n", " ")
        lines = re.findall(r"(?m)^\s*(nml data audit [^\n`]*)$", text) + re.findall(
            r"`(nml data audit [^`]*)`", text
        )
        found += [(page.name, shlex.split(line)[1:]) for line in lines if "..." not in line]
    return found


@pytest.mark.slow
def test_the_documented_audit_commands_run_on_the_benchmark(tiny_benchmark):
    """The audit commands the docs give name the built benchmark's training shards exactly (its
    manifest's spec) and run as typed: on the tiny benchmark, with its own spec substituted."""
    import json

    from helpers import nml_in_one_process

    audits = _documented_audits()
    assert {page for page, _ in audits} == {"data.md", "BENCHMARKS.md"} and len(audits) >= 3
    documented = "data/embedded/glyphs/train-{000000..000017}.tar"  # the small benchmark's 18 shards
    runs = []
    for page, argv in audits:
        shards = argv[argv.index("--shards") + 1]
        assert shards == documented, (page, shards)
        tiny = json.loads((tiny_benchmark / "manifest.json").read_text())["pretraining"]["train"]
        argv[argv.index("--shards") + 1] = str(tiny_benchmark / tiny)
        runs.append(argv)
    for out, _ in nml_in_one_process(runs, REPO):
        assert json.loads(out)  # each prints its JSON report

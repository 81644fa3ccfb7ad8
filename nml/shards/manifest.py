"""The benchmark manifest and the ``_info.json`` beside shards: one schema, read and written here.

``manifest.json`` (written by ``nml data embedded``) names datasets (splits as shard specs, classes),
the pre-training corpus and the downstream tasks (train / val / test sets and their group: ``id``
when train and test share a distribution, ``ood`` when they do not). Shard specs inside it are
relative to the manifest's directory; :func:`task_sets` returns them rebased onto it, so callers
never join paths themselves (see the path rule in :mod:`nml.shards.spec`).

``_info.json`` (timm style, beside a dataset's shards) holds ``classes`` (or only
``num_classes``), the shard sizes, and optionally ``prompts``: what a CLIP model needs for zero-shot
classification, so that models need no knowledge of the data::

    "prompts": {"templates": ["a printed {name}", ...],
                "classes": [[{"name": "digit 0", "ch": "0"}, {"name": "uppercase O", "ch": "O"}], ...]}

Each class lists the fields its members fill the templates with; the class's prompts are every
template formatted with every member. Torch-free.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nml.names import check_name
from nml.shards.remote import index_directory, read_index_file
from nml.shards.spec import local_directory, rebase_spec

MANIFEST = "manifest.json"
INFO = "_info.json"
DEFAULT_ROOT = "data/embedded"
DEFAULT_TEXT_ROOT = "data/embedded_text"
# Zero-shot prompts when the data has class names but no prompts of its own (CLIP's plainest template).
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {name}.",)


@dataclass
class EvalSet:
    """A named evaluation set: ``group`` is ``id`` (same distribution as tuning) or ``ood``."""

    name: str
    shards: str
    group: Literal["id", "ood"] = "id"
    num_classes: int | None = None

    def __post_init__(self):
        check_name(self.name, "test set name")


def default_root() -> str:
    """Where the benchmark lives unless ``data.root`` says otherwise: ``$NML_DATA`` or data/embedded."""
    return os.environ.get("NML_DATA", DEFAULT_ROOT)


def default_text_root() -> str:
    """Where the text benchmark lives unless ``data.root`` says otherwise: ``$NML_TEXT_DATA`` or
    data/embedded_text."""
    return os.environ.get("NML_TEXT_DATA", DEFAULT_TEXT_ROOT)


def load_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no benchmark manifest at {str(path)!r}: build the embedded benchmark with "
            f"`nml data embedded --out {root}` (or `bash tools/quickstart.sh`), point data.root at it "
            "(or set $NML_DATA), or give data.train / data.val / data.test shard specs"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    for i, t in enumerate(manifest.get("tasks", []) if isinstance(manifest, dict) else []):
        if isinstance(t, dict):  # names become file names: checked where they come from
            check_name(t.get("name"), f"{path}: tasks[{i}].name")
            for name in t.get("test") or {}:
                check_name(name, f"{path}: tasks[{i}].test")
    return manifest


def write_manifest(root: str | Path, manifest: dict) -> Path:
    path = Path(root) / MANIFEST
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return path


def task_names(manifest: dict) -> list[str]:
    return ["pretraining", *(t["name"] for t in manifest["tasks"])]


def task_sets(manifest: dict, task: str, root: str | Path) -> dict[str, Any]:
    """train / val / test sets and classes of a manifest task (``pretraining`` included); shard
    specs rebased onto ``root`` (the manifest's directory).

    A downstream task's test suite also holds the test sets of every other task trained on the same
    split (ID + OOD suites of one head); pre-training gets every test set over its classes."""
    datasets, tasks = manifest["datasets"], {t["name"]: t for t in manifest["tasks"]}

    def rebased(spec: str) -> str:
        return rebase_spec(spec, root)

    if task == "pretraining":
        pre = manifest["pretraining"]
        classes = datasets[pre["data"]]["classes"]
        tests, seen = [], set()
        for t in manifest["tasks"]:
            if datasets[t["data"]]["classes"] != classes:
                continue
            for name, spec in t["test"].items():
                if spec not in seen:
                    seen.add(spec)
                    tests.append(EvalSet(name, rebased(spec), t["group"], len(classes)))
        return {"train": rebased(pre["train"]), "val": rebased(pre["val"]), "test": tests, "classes": classes}
    if task not in tasks:
        raise ValueError(
            f"task {task!r} is not in the benchmark manifest; expected one of {task_names(manifest)}"
        )
    t = tasks[task]
    classes = datasets[t["data"]]["classes"]
    tests = [EvalSet(n, rebased(s), t["group"], t["num_classes"]) for n, s in t["test"].items()]
    names = {s.name for s in tests}
    for other in manifest["tasks"]:
        if other["name"] != task and other["train"] == t["train"]:
            for n, spec in other["test"].items():
                if n not in names:
                    names.add(n)
                    tests.append(EvalSet(n, rebased(spec), other["group"], other["num_classes"]))
    return {"train": rebased(t["train"]), "val": rebased(t["val"]), "test": tests, "classes": classes}


# -- _info.json -------------------------------------------------------------------------------------
def read_info(spec: str) -> dict | None:
    """The ``_info.json`` beside the first shard of ``spec`` (a dict), or None if there is none;
    local, or read from where remote shards live (``https://``, ``s3://`` ...; for ``pipe:``, beside
    the ``.tar`` the command names)."""
    directory = local_directory(spec)
    if directory is not None:
        info = directory / INFO
        if not info.is_file():
            return None
        text = info.read_bytes()
    else:
        folder, _ = index_directory(str(spec).split("::")[0].strip())
        info = f"{folder}/{INFO}"
        text = read_index_file(info)
        if text is None:
            return None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{info}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{info}: not a timm _info.json (expected a JSON object)")
    return data


def info_num_classes(info: dict | None) -> int | None:
    """The class count an ``_info.json`` gives: its ``classes`` list's length, else ``num_classes``
    (timm's ImageNet shards: a count, no names), else None."""
    if not info:
        return None
    if isinstance(info.get("classes"), list) and info["classes"]:
        return len(info["classes"])
    return int(info["num_classes"]) if info.get("num_classes") else None


def resolve_classes(
    task_classes: list[str] | None,
    specs: list[str | None],
    named: tuple[list[str], dict] | None,
    num_classes: int | None,
) -> tuple[list[str] | None, dict | None, int | None]:
    """The training data's (class names, ``_info.json``, class count), from the first that has them:
    the benchmark task's classes; the ``_info.json`` of the first of ``specs`` (train, val) that has
    classes or a count; ``named`` (a ``class_names`` option: (names, an ``_info``-style dict)) when
    its length fits ``num_classes``. A given ``num_classes`` wins over every count."""
    info = None
    for spec in specs:
        candidate = read_info(spec) if spec else None
        if candidate is not None and info_num_classes(candidate):
            info = candidate
            break
    classes = task_classes
    if classes is None and info is not None and info.get("classes"):
        classes = [str(c) for c in info["classes"]]
    if classes is None and named is not None and num_classes in (None, len(named[0])):
        classes, info = named
    if num_classes is None:
        num_classes = len(classes) if classes is not None else info_num_classes(info)
    return classes, info, num_classes


def prompt_fields(info: dict | None, classes: list[str]) -> tuple[tuple[str, ...], list[list[dict]]]:
    """(templates, per-class template fields) for zero-shot prompts: the data's own ``prompts`` when
    ``info`` has them for these classes, else :data:`DEFAULT_TEMPLATES` with each class name."""
    prompts = (info or {}).get("prompts")
    if isinstance(prompts, dict) and len(prompts.get("classes") or []) == len(classes):
        return tuple(prompts["templates"]), [list(c) for c in prompts["classes"]]
    return DEFAULT_TEMPLATES, [[{"name": c}] for c in classes]


def class_prompts(templates: tuple[str, ...] | list[str], fields: list[list[dict]]) -> list[list[str]]:
    """Prompts per class: every template filled with every member's fields."""
    out = []
    for c, members in enumerate(fields):
        try:
            out.append([t.format(**f) for t in templates for f in members])
        except (KeyError, IndexError) as e:
            raise ValueError(
                f"zero-shot prompt templates {list(templates)} use a field {e} that class {c} does not have "
                f"(its fields: {sorted({k for f in members for k in f})})"
            ) from None
    return out

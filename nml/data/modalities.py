"""The table of modalities: what differs between image and text data, in one place.

A modality is a name (what a benchmark's ``manifest.json`` says in ``"modality"``, what a study's
``benchmark.modality`` and a backbone family's ``modality`` say) and, per name: the data module
of its classification tasks, where its benchmark lives by default, the tasks a build of it has and
the function that builds it, the sizes it is built at, and whether its inputs can be mixed
(mixup / cutmix). Every choice between modalities reads this table (a test counts the string
comparisons of a modality elsewhere: none); adding a modality is one :func:`register_modality`
(docs/development.md). Torch-free: the study's config reads it for ``--help``. Its entries name
their classes and builders as ``module:attribute`` strings, imported when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nml.shards.manifest import MANIFEST, default_root, default_text_root, load_manifest


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Modality:
    """One modality (see the module docstring).

    Args:
        name: Its name in manifests, study configs and backbone families.
        data_module: ``module:Class`` of its classification data module.
        default_root: Where its benchmark is when ``data.root`` is unset (reads the environment).
        tasks: ``module:NAMES``, the downstream tasks a build of its benchmark has.
        builder: ``module:function(root, seed=, size=, **options)`` that builds its benchmark.
        sizes: The sizes its benchmark is built at.
        build_options: The options of a build its builder takes besides root, seed and size.
        mixable: Whether mixup / cutmix apply to its inputs.
        description: One line for ``nml data modalities``.
    """

    name: str
    data_module: str
    default_root: Callable[[], str]
    tasks: str
    builder: str
    sizes: tuple[str, ...]
    build_options: tuple[str, ...]
    mixable: bool
    description: str

    def data_module_class(self) -> type:
        return _load(self.data_module)

    def task_names(self) -> list[str]:
        return list(_load(self.tasks))

    def check_size(self, size: str) -> None:
        if size not in self.sizes:
            raise ValueError(
                f"benchmark.size: the {self.name} benchmark is built {' or '.join(self.sizes)} (got {size})"
            )

    def build(self, root: str, seed: int, size: str, **options) -> Any:
        """Build the modality's benchmark into ``root``, with those of ``options`` its builder takes
        (:attr:`build_options`)."""
        self.check_size(size)
        taken = {k: v for k, v in options.items() if k in self.build_options}
        return _load(self.builder)(root, seed=seed, size=size, **taken)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "data_module": self.data_module,
            "default_root": self.default_root(),
            "sizes": list(self.sizes),
            "description": self.description,
        }


MODALITIES: dict[str, Modality] = {}


def register_modality(modality: Modality) -> Modality:
    """Add a modality to the table (a name already there is refused: one entry per name)."""
    if modality.name in MODALITIES:
        raise ValueError(f"modality {modality.name!r} is already registered")
    MODALITIES[modality.name] = modality
    return modality


def get_modality(name: str) -> Modality:
    """The table's entry for ``name``; an unknown name is refused listing the known ones."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"modality: expected one of {sorted(MODALITIES)}, got {name!r}") from None


def modality_of(root: str | Path) -> Modality:
    """The modality of the benchmark at ``root``: its manifest's ``"modality"`` (image when it names
    none, as the image benchmark's manifest does)."""
    manifest = load_manifest(root)
    name = manifest.get("modality", "image")
    try:
        return get_modality(name)
    except ValueError as e:
        raise ValueError(f"{Path(root) / MANIFEST}: {e}") from None


register_modality(
    Modality(
        name="image",
        data_module="nml.data.modules:ClassificationShards",
        default_root=default_root,
        tasks="nml.benchmark.plan:TASK_NAMES",
        builder="nml.benchmark.build:build_embedded",
        sizes=("tiny", "small", "full"),
        build_options=("fonts", "progress"),
        mixable=True,
        description="the glyph benchmark (nml data embedded): images of letters, digits and symbols",
    )
)
register_modality(
    Modality(
        name="text",
        data_module="nml.data.modules:TextClassificationShards",
        default_root=default_text_root,
        tasks="nml.benchmark.text:TASK_NAMES",
        builder="nml.benchmark.text:build_text_benchmark",
        sizes=("tiny", "small"),
        build_options=(),
        mixable=False,
        description="the text benchmark (nml data embedded_text): topic documents and two ID/OOD heads",
    )
)

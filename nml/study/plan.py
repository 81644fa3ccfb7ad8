"""The stage graph of a study, keyed by content hashes (what makes it resumable and incremental).

Stages, per cell (objective, noise rate, seed) and per downstream task::

    pretrain (or random_init)  ->  features (+ spectra of the frozen features)  ->  tune (x method x seed)
    encoder (a frozen encoder)  ->  features  ->  tune (x method x seed, per replicate)

Each stage's key is a hash of everything its output depends on: its own settings, the text of the
recipe's config file, the benchmark manifest, and the keys of the stages it reads. Its output lives
in ``OUT/stages/<kind>/<label>-<key>``; a finished stage has a ``done.json``. A re-run skips every
finished stage; a changed setting changes the keys of the stages that depend on it and only those.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nml.configfiles import resolve_config
from nml.study.config import Encoder, Features, Grid, Recipe, TaskPlan, Tuning
from nml.study.stages import (
    STAGE_KINDS,
    EncoderParams,
    FeaturesParams,
    PretrainParams,
    RecipeParams,
    TuneParams,
)

log = logging.getLogger("nml.study")


def content_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def keyed(params) -> dict:
    """The parameters a stage's key hashes: all of them, but a field marked ``key_when_set`` only
    when it differs from its default (an option added later keeps the keys of studies without it)."""
    out = asdict(params)
    for f in fields(params):
        if f.metadata.get("key_when_set") and out[f.name] == (
            f.default_factory() if f.default_factory is not MISSING else f.default
        ):
            del out[f.name]
    return out


@dataclass
class Stage:
    kind: str  # a key of STAGE_KINDS: pretrain | random_init | features | tune
    label: str
    params: Any  # the kind's parameter dataclass (STAGE_KINDS[kind].params)
    deps: list[Stage] = field(default_factory=list)
    key: str = ""

    def __post_init__(self) -> None:
        expected = STAGE_KINDS[self.kind].params
        if type(self.params) is not expected:
            raise TypeError(
                f"stage {self.label}: {self.kind} takes {expected.__name__}, got {type(self.params).__name__}"
            )
        self.key = content_hash(
            {"kind": self.kind, "params": keyed(self.params), "deps": [d.key for d in self.deps]}
        )

    def directory(self, out: Path) -> Path:
        return out / "stages" / self.kind / f"{self.label}-{self.key}"

    def done(self, out: Path) -> dict | None:
        """The stage's record, its paths resolved against the study directory ``out``; None when the
        stage has not finished, or when its record is damaged (named in a warning: it runs again)."""
        path = self.directory(out) / "done.json"
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        except (ValueError, UnicodeDecodeError) as e:
            log.warning(
                "%s is damaged (%s): the stage %s runs again", path, str(e)[:120] or "empty", self.label
            )
            return None
        for key in PATH_KEYS:
            if isinstance(record.get(key), str):
                record[key] = resolve_recorded_path(out, record[key])
        return record


PATH_KEYS = ("export", "cache")  # the paths a stage records for the stages after it


def resolve_recorded_path(out: Path, value: str) -> str:
    """A recorded path back under ``out``. Records of older versions held paths relative to the
    working directory (or absolute): those are kept when nothing is found under ``out``."""
    candidate = Path(out) / value
    if Path(value).is_absolute() or (not candidate.exists() and Path(value).exists()):
        return value
    return str(candidate)


@dataclass
class Cell:
    objective: str  # or the name of a frozen encoder
    noise_rate: float | None  # None: random init, or a frozen encoder
    seed: int  # a frozen encoder: the replicate
    fixed: bool = False  # a frozen encoder of the study's encoders

    @property
    def init(self) -> str:
        return "fixed" if self.fixed else "random" if self.noise_rate is None else "pretrained"

    @property
    def label(self) -> str:
        if self.fixed:
            return f"{self.objective}-r{self.seed}"
        if self.noise_rate is None:
            return f"{self.objective}-random-s{self.seed}"
        return f"{self.objective}-g{self.noise_rate:g}-s{self.seed}"


@dataclass
class Plan:
    cells: list[Cell]
    stages: list[Stage]  # in dependency order
    backbone: dict[str, Stage]  # cell label -> its pretrain / random_init stage
    features: dict[tuple[str, str], Stage]  # (cell label, task) -> features stage
    tunes: dict[tuple[str, str, str], list[Stage]]  # (cell label, task, method) -> one per tuning seed


def tuning_recipe(method: str) -> str:
    """The shipped tuning recipe a study's tune stage of ``method`` runs."""
    return f"tune_{method}.yaml"


def recipe_text(config: str) -> str:
    """The recipe config's text (its content, not its path, is part of the pretraining key)."""
    return resolve_config(config).read_text()


FILE_SUFFIXES = (".yaml", ".yml", ".json", ".txt", ".csv", ".tsv", ".npy")  # what a recipe may read


def referenced_files(config: str, overrides: dict) -> dict[str, str]:
    """``{reference: sha256}`` of every file a recipe reads besides its config: the files its
    config's values and the study's ``overrides`` of it name (a noise matrix, class names, an extra
    config). Their content, not their name, is part of the pre-training stage's key: editing one
    re-runs the stage."""
    import yaml

    from nml.checksums import file_sha256

    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    values = [*strings(overrides), *strings(yaml.safe_load(recipe_text(config)) or {})]
    found = {}
    for value in values:
        if (
            not value.endswith(FILE_SUFFIXES) or "{" in value
        ):  # shard specs are the benchmark's (its manifest)
            continue
        path = Path(value)
        if not path.is_file() and value.endswith((".yaml", ".yml")):
            try:
                path = resolve_config(value)
            except (FileNotFoundError, ValueError):
                continue
        if path.is_file():
            found[value] = file_sha256(path)
    return found


def check_tuning_recipes(tuning: Tuning) -> None:
    """Build each method's tuning module with its ``tuning.recipes`` options once (no data, no
    backbone): a bad value fails before any stage runs, naming the method and the option."""
    from nml.models.tuning import DownstreamTuning

    for method, options in tuning.recipes.items():
        try:
            DownstreamTuning(method, **(options or {}))
        except (ValueError, TypeError) as e:
            raise ValueError(f"tuning.recipes.{method}: {e}") from None


def build_plan(
    grid: Grid,
    recipes: dict[str, Recipe],
    tasks: dict[str, TaskPlan],
    features: Features,
    tuning: Tuning,
    manifest_sha256: str,
    encoders: dict[str, Encoder] | None = None,
) -> Plan:
    check_tuning_recipes(tuning)
    cells = [Cell(o, float(g), s) for o in grid.objectives for g in grid.noise_rates for s in grid.seeds]
    if grid.random_init:
        cells += [Cell(o, None, grid.seeds[0]) for o in grid.objectives]  # the floor: one untrained backbone
    stages: list[Stage] = []
    backbone, feats, tunes = {}, {}, {}
    texts = {o: recipe_text(recipes[o].config) for o in grid.objectives}
    files = {o: referenced_files(recipes[o].config, recipes[o].overrides) for o in grid.objectives}
    tune_texts = {m: recipe_text(tuning_recipe(m)) for p in tasks.values() for m in p.methods}

    def tune_params(method: str, seed: int) -> TuneParams:
        return TuneParams(
            method,
            seed,
            tuning.epochs,
            tuning.batch_size,
            tuning.view_noise,
            tuning_recipe(method),
            tune_texts[method],
            tuning.threads,
            dict(tuning.recipes.get(method) or {}),
        )

    for cell in cells:
        recipe = recipes[cell.objective]
        common = {
            "objective": cell.objective,
            "seed": cell.seed,
            "config": recipe.config,
            "config_text": texts[cell.objective],
            "overrides": dict(recipe.overrides),
            "files": files[cell.objective],
            "benchmark": manifest_sha256,
            "threads": recipe.threads,
        }
        if cell.noise_rate is None:
            b = Stage("random_init", cell.label, RecipeParams(**common))
        else:
            b = Stage("pretrain", cell.label, PretrainParams(**common, noise_rate=cell.noise_rate))
        backbone[cell.label] = b
        stages.append(b)
        for task, plan in tasks.items():
            f = Stage(
                "features",
                f"{cell.label}-{task}",
                FeaturesParams(task, plan.test_sets, **asdict(features)),
                [b],
            )
            feats[(cell.label, task)] = f
            stages.append(f)
            for method in plan.methods:
                runs = [
                    Stage("tune", f"{cell.label}-{task}-{method}-t{t}", tune_params(method, t), [f])
                    for t in tuning.seeds
                ]
                tunes[(cell.label, task, method)] = runs
                stages += runs
    for name, enc in (encoders or {}).items():  # frozen encoders: one stage, features shared by replicates
        e = Stage("encoder", name, EncoderParams(name, dict(enc.backbone)))
        stages.append(e)
        shared = {}
        for task, plan in tasks.items():
            params = FeaturesParams(task, plan.test_sets, **{**asdict(features), "views": 0})
            shared[task] = Stage("features", f"{name}-{task}", params, [e])
            stages.append(shared[task])
        for seed in grid.seeds:
            cell = Cell(name, None, seed, fixed=True)
            cells.append(cell)
            backbone[cell.label] = e
            for task, plan in tasks.items():
                feats[(cell.label, task)] = shared[task]
                for method in plan.methods:
                    runs = [
                        Stage(
                            "tune",
                            f"{cell.label}-{task}-{method}-t{t}",
                            tune_params(method, 1000 * seed + t),
                            [shared[task]],
                        )
                        for t in tuning.seeds
                    ]
                    tunes[(cell.label, task, method)] = runs
                    stages += runs
    return Plan(cells, stages, backbone, feats, tunes)

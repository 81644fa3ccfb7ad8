"""What a study is: the grid, the recipes, the tasks and methods. Torch-free (read for ``--help``).

A study YAML fills the options of ``nml study`` (``nml study --config study_quickstart.yaml``), so
every setting can also be overridden on the command line (``--grid.seeds [0]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Objective = Literal["supervised", "clip"]
Method = Literal["linear", "mlp", "nmtune"]
OBJECTIVES = ("supervised", "clip")
METHODS = ("linear", "mlp", "nmtune")


THREADS = """A stage computes with a fixed number of torch threads on a CPU, set by the study and part
of the stage's key: a reduction's float order follows the thread count (tuning results moved by up
to 0.22 points between one and two threads), so a stage's numbers must depend on its settings, not
on the machine's cores or on how many stages run beside it. The defaults are what a 2-core machine
gives each stage: pre-training and extraction leave a core to their loader workers (1 thread),
tuning reads cached features in the main process (2 threads)."""


@dataclass
class Grid:
    """The cells: objective x noise rate x pre-training seed, plus a random-init floor per objective.

    Args:
        objectives: supervised (timm, label noise) and/or clip (open_clip, caption swap).
        noise_rates: Noise rates gamma in [0, 1); include 0 for the clean row.
        seeds: Pre-training seeds (model init, data order and the noise draw).
        random_init: Add an untrained backbone per objective (the floor; the first seed's init).
    """

    objectives: list[Objective] = field(default_factory=lambda: ["supervised"])
    noise_rates: list[float] = field(default_factory=lambda: [0.0, 0.3])
    seeds: list[int] = field(default_factory=lambda: [0])
    random_init: bool = True


@dataclass
class Recipe:
    """How one objective pre-trains: an ``nml fit`` config and the study's options of it.

    Args:
        config: A LightningCLI config (a path, or a bare name of a shipped config).
        overrides: Options of the config, nested as in the config itself, e.g.
            ``{trainer: {max_epochs: 5}, data: {init_args: {loader: {batch_size: 128}}}}``; applied
            after it, parsed and checked by the same parser as ``nml fit``'s.
        threads: torch's intra-op threads of the pre-training on a CPU (:data:`THREADS`).
    """

    config: str
    overrides: dict = field(default_factory=dict)
    threads: int = 1

    def __post_init__(self) -> None:
        _at_least("pretrain", threads=(self.threads, 1))
        if not isinstance(self.overrides, dict):
            raise ValueError(
                f"pretrain.<objective>.overrides: expected a mapping of the config's options "
                f"(as nested in the config), got {self.overrides!r}"
            )


@dataclass
class TaskPlan:
    """One downstream task of the benchmark (tuned on its train split, tested on its suite).

    Args:
        methods: Tuning methods on the frozen features: linear, mlp, nmtune.
        test_sets: The test sets of its suite to report (default: all of them).
    """

    methods: list[Method] = field(default_factory=lambda: ["linear"])
    test_sets: list[str] | None = None


@dataclass
class Benchmark:
    """The embedded benchmark the study runs on (built first when it is missing).

    Args:
        root: Its directory (default: $NML_DATA or data/embedded; text: $NML_TEXT_DATA or
            data/embedded_text).
        modality: A modality of :mod:`nml.data.modalities` (``nml data modalities``): image (the glyph
            benchmark, ``nml data embedded``) or text (``nml data embedded_text``).
        size: small, full (image only) or tiny (built only when missing).
        seed: Seed of a build.
        fonts: auto, debian or fallback (image only).
    """

    root: str | None = None
    modality: str = "image"
    size: Literal["tiny", "small", "full"] = "small"
    seed: int = 0
    fonts: Literal["auto", "debian", "fallback"] = "auto"

    def __post_init__(self) -> None:
        from nml.data.modalities import get_modality

        try:
            get_modality(self.modality).check_size(self.size)
        except ValueError as e:
            raise ValueError(f"benchmark.{e}" if str(e).startswith("modality") else str(e)) from None


@dataclass
class Encoder:
    """A frozen encoder tuned as a black box beside the grid (no pre-training stage): a
    sentence-embedding model, a model2vec static encoder, an embedding API, any backbone factory
    dict. Each grid seed is one replicate: its tuning seeds are ``1000 * seed + t`` for t in
    ``tuning.seeds``, so replicates differ only in the tuned head, the one source of variation of a
    frozen encoder's results.

    Args:
        backbone: A backbone factory dict: {library, name, kwargs} (``nml features --backbone``).
    """

    backbone: dict = field(default_factory=dict)


@dataclass
class Features:
    """Frozen-feature extraction per (cell, task).

    Args:
        views: Augmented views of the training split stored for NMTune (0: none).
        batch_size: Images per forward pass.
        num_workers: Data loading workers.
        limit: At most this many samples per split (default: all).
        seed: Seeds the stored augmented views (per sample and view).
        threads: torch's intra-op threads of the extraction on a CPU (:data:`THREADS`).
    """

    views: int = 2
    batch_size: int = 256
    num_workers: int = 2
    limit: int | None = None
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        _at_least(
            "features",
            views=(self.views, 0),
            batch_size=(self.batch_size, 1),
            num_workers=(self.num_workers, 0),
            limit=(self.limit, 1),
            threads=(self.threads, 1),
        )


TUNING_METHODS = ("linear", "mlp", "nmtune", "finetune")
# the DownstreamTuning options a study may set per method (the rest: the study's own settings)
RECIPE_OPTIONS = ("head", "loss", "views", "warmup", "min_lr_ratio")


@dataclass
class Tuning:
    """Tuning on the cached features (cheap: several seeds are affordable).

    Args:
        epochs: Epochs per run (the last epoch is reported).
        seeds: Tuning seeds per (cell, task, method); results are their mean.
        batch_size: Training batch size.
        view_noise: NMTune without stored views: std of Gaussian noise on the second view.
        threads: torch's intra-op threads of each tuning run on a CPU (:data:`THREADS`).
        recipes: Per method, options of its tuning module (``DownstreamTuning``: ``head``,
            ``loss``, ``views``, ``warmup``, ``min_lr_ratio``), e.g. ``{nmtune: {loss: {mse_weight:
            0.5}}}`` for an ablation; part of those stages' keys, so only they run again.
    """

    epochs: int = 30
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 64
    view_noise: float = 0.0
    threads: int = 2
    recipes: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for method, options in self.recipes.items():
            if method not in TUNING_METHODS:
                raise ValueError(
                    f"tuning.recipes: {method!r} is not a method; expected some of {TUNING_METHODS}"
                )
            unknown = sorted(set(options or {}) - set(RECIPE_OPTIONS))
            if unknown:
                raise ValueError(
                    f"tuning.recipes.{method}: unknown options {unknown}; expected some of {list(RECIPE_OPTIONS)}"
                )
        _at_least(
            "tuning",
            epochs=(self.epochs, 1),
            batch_size=(self.batch_size, 1),
            view_noise=(self.view_noise, 0),
            threads=(self.threads, 1),
        )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"tuning.seeds: expected distinct seeds, at least one, got {self.seeds}")


def _at_least(section: str, **values: tuple) -> None:
    """Each ``name=(value, minimum)`` of ``section`` is None or at least its minimum."""
    for name, (value, minimum) in values.items():
        if value is not None and value < minimum:
            raise ValueError(f"{section}.{name}: expected >= {minimum}, got {value}")


@dataclass
class Launcher:
    """Where the stages run. ``local`` (default): on this machine, side by side in worker processes
    as the cores allow (``parallel``; 1, the default on 2 cores: one after another in this
    process). ``slurm``: each
    stage is a SLURM job submitted through submitit (``pip install 'noisy-model-learning[slurm]'``), a stage's
    dependencies are job dependencies (``afterok``), and this process waits for the jobs and then
    writes the results and the report (run it again to collect, once the jobs have finished).
    ``submitit_local``: the same job objects as processes on this machine (submitit's local executor).

    Args:
        kind: local, slurm or submitit_local.
        parallel: local and submitit_local: at most this many stages at once (None: one per two
            usable cores; 1 where a GPU is visible, which the stages would share). A stage starts while the threads of the running stages plus its own fit in
            the usable cores; its numbers do not depend on what runs beside it (:data:`THREADS`).
        folder: submitit's job folder (scripts, pickles, stdout/stderr per job; default OUT/submitit).
        partition: SLURM partition.
        account: SLURM account.
        time_min: Time limit per job, minutes.
        gpus_per_node: GPUs per job (one node, one task).
        cpus_per_task: CPUs per job.
        mem_gb: Memory per job, GB.
        slurm_parameters: More sbatch options, e.g. {"qos": "high", "constraint": "h100"}.
        poll_s: Seconds between checks of the running jobs (SLURM: sacct).
    """

    kind: Literal["local", "slurm", "submitit_local"] = "local"
    parallel: int | None = None
    folder: str | None = None
    partition: str | None = None
    account: str | None = None
    time_min: int = 240
    gpus_per_node: int = 1
    cpus_per_task: int = 10
    mem_gb: int = 64
    slurm_parameters: dict[str, str] = field(default_factory=dict)
    poll_s: float = 30.0

    def __post_init__(self) -> None:
        if self.parallel is not None:
            _at_least("launcher", parallel=(self.parallel, 1))

    def stages_at_once(self, cores: int, gpu: bool = False) -> int:
        """How many stages run at once on a machine with ``cores`` usable cores: ``parallel``, else
        one per two cores (a stage keeps about two busy: its thread and its loader workers, or its
        two tuning threads), or one where a GPU is visible (the stages would share it)."""
        if self.parallel is not None:
            return self.parallel
        return 1 if gpu else max(1, cores // 2)


DEFAULT_RECIPES = {
    "supervised": Recipe("pretrain_supervised_study.yaml"),
    "clip": Recipe("pretrain_clip.yaml", {"trainer": {"max_epochs": 25}}),
}


def validate(
    grid: Grid,
    recipes: dict[str, Recipe],
    tasks: dict[str, TaskPlan],
    task_names: list[str],
    test_sets: dict[str, list[str]] | None = None,
    encoders: dict[str, Encoder] | None = None,
) -> None:
    """Every error a study config can have, raised before any work starts (``test_sets``: each
    task's test suite, when the benchmark is there to read it)."""
    for name, enc in (encoders or {}).items():
        if name in OBJECTIVES:
            raise ValueError(f"encoders.{name}: the name of an objective; name the encoder otherwise")
        if not isinstance(enc.backbone, dict) or not enc.backbone.get("name"):
            raise ValueError(
                f"encoders.{name}.backbone: expected a backbone factory dict with a name, e.g. "
                "{library: sentence_transformers, name: all-minilm-l6-v2}, got " + repr(enc.backbone)
            )
    if not grid.objectives or not grid.noise_rates or not grid.seeds:
        raise ValueError(
            f"the grid has no cells: objectives={grid.objectives}, noise_rates={grid.noise_rates}, "
            f"seeds={grid.seeds} (each needs at least one value)"
        )
    for o in grid.objectives:
        if o not in OBJECTIVES:
            raise ValueError(f"grid.objectives: unknown objective {o!r}; expected one of {list(OBJECTIVES)}")
        if o not in recipes:
            raise ValueError(f"pretrain: no recipe for objective {o!r} (have {sorted(recipes)})")
    for r in grid.noise_rates:
        if not (0.0 <= float(r) < 1.0):
            raise ValueError(f"grid.noise_rates: {r} is outside [0, 1)")
    if len(set(grid.noise_rates)) != len(grid.noise_rates) or len(set(grid.seeds)) != len(grid.seeds):
        raise ValueError(f"grid: repeated noise rates or seeds ({grid.noise_rates}, {grid.seeds})")
    if len(set(grid.objectives)) != len(grid.objectives):  # each would repeat every row of the other
        raise ValueError(f"grid.objectives: repeated objectives {grid.objectives}")
    if not tasks:
        raise ValueError("tasks: the study has no downstream task")
    for name, plan in tasks.items():
        if name not in task_names:
            raise ValueError(f"tasks: unknown task {name!r}; the benchmark has {task_names}")
        if not plan.methods:
            raise ValueError(f"tasks.{name}.methods: no tuning method")
        if len(set(plan.methods)) != len(plan.methods):
            raise ValueError(f"tasks.{name}.methods: repeated methods {list(plan.methods)}")
        if plan.test_sets and len(set(plan.test_sets)) != len(plan.test_sets):
            raise ValueError(f"tasks.{name}.test_sets: repeated test sets {list(plan.test_sets)}")
        unknown = sorted(set(plan.test_sets or []) - set((test_sets or {}).get(name, plan.test_sets or [])))
        if unknown:
            raise ValueError(
                f"tasks.{name}.test_sets: {unknown} not in the task's test suite {test_sets[name]}"
            )
        for m in plan.methods:
            if m not in METHODS:
                raise ValueError(
                    f"tasks.{name}.methods: unknown method {m!r}; expected one of {list(METHODS)}"
                )

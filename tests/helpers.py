"""Helpers shared by the tests (imported as ``from helpers import ...``; fixtures live in conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "pretraining_losses.json"
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def nml_subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable


def png_bytes(seed: int, size: int = 8) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def run_tool(name: str, argv: list[str]) -> str:
    """What ``python -m benchmarks.<name> ARGV`` prints on stdout, run in this process (its
    ``main()``), which saves the start of a second interpreter with torch and Lightning."""
    import contextlib
    import importlib
    import io

    module = importlib.import_module(f"benchmarks.{name}")  # the repository root is on pytest's path
    out, saved = io.StringIO(), sys.argv
    sys.argv = [f"benchmarks.{name}", *argv]
    try:
        with contextlib.redirect_stdout(out):
            rc = module.main()
    finally:
        sys.argv = saved
    assert rc in (0, None), f"benchmarks.{name} {argv}: exit {rc}"
    return out.getvalue()


def write_pattern_shards(out: Path, n: int, width: int, height: int, png_every: int = 0) -> str:
    """``n`` images of colour stripes (JPEG quality 95; every ``png_every``-th a PNG), class
    ``i % 4``, 16 per shard: returns the shard spec."""
    import io

    import numpy as np
    from PIL import Image

    from nml.shards.writer import ShardWriter, shard_spec

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    with ShardWriter(out / "s-%06d.tar", max_count=16) as writer:
        for i in range(n):
            a, b = rng.uniform(0.5, 3, 2)
            pixels = np.stack([(x * a) % 256, (y * b) % 256, ((x + y) * a) % 256], -1).astype(np.uint8)
            png = png_every and i % png_every == 0
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "PNG" if png else "JPEG", quality=95)
            writer.write({"__key__": f"{i:04d}", "png" if png else "jpg": buf.getvalue(), "cls": i % 4})
    return str(out / shard_spec(writer.shards))


def write_shards(
    directory: Path,
    sizes: list[int],
    num_classes: int = 5,
    prefix: str = "train",
    captions: bool = True,
    sizes_json: bool = True,
    start: int = 0,
) -> str:
    """Tiny classification + caption shards with the given per-shard sizes; returns the spec.

    Sample i (over all shards) has key ``<prefix>-<i>``, class ``i % num_classes`` and caption
    ``caption <i>``; images are 8x8 random PNGs.
    """
    from nml.shards.writer import ShardWriter, write_index_files

    directory.mkdir(parents=True, exist_ok=True)
    written, i = [], start
    for s, n in enumerate(sizes):
        with ShardWriter(directory / f"{prefix}-{s:04d}-%d.tar", n) as w:
            for _ in range(n):
                sample = {"__key__": f"{prefix}-{i:06d}", "png": png_bytes(i), "cls": i % num_classes}
                if captions:
                    sample["txt"] = f"caption {i}"
                w.write(sample)
                i += 1
        for path, count in w.shards:
            target = directory / f"{prefix}-{s:04d}.tar"
            Path(path).rename(target)
            written.append((str(target), count))
    if sizes_json:
        write_index_files(
            directory,
            {prefix: written},
            prefix,
            {"num_classes": num_classes, "classes": [f"c{c}" for c in range(num_classes)]},
        )
    last = len(sizes) - 1
    return str(directory / (f"{prefix}-{{0000..{last:04d}}}.tar" if last else f"{prefix}-0000.tar"))


def spawn_gloo(fn, nprocs: int, *args) -> None:
    """Run ``fn(rank, world, port, *args)`` in ``nprocs`` spawned processes (they init gloo themselves)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(fn, args=(nprocs, port, *args), nprocs=nprocs, start_method="spawn")


def init_gloo(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


class LossRecorder(Callback):
    """Records every training loss; stops the run after global step ``stop_at`` (resume tests)."""

    def __init__(self, stop_at: int | None = None):
        self.losses, self.stop_at = [], stop_at

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        if self.stop_at is not None and trainer.global_step >= self.stop_at:
            trainer.should_stop = True


def train_tiny(
    kind: str,
    root: Path,
    out: Path,
    steps: int,
    stop_at=None,
    ckpt_path=None,
    accelerator: str = "cpu",
    max_epochs: int | None = None,
    num_workers: int = 0,
    callbacks: list | None = None,
) -> list[float]:
    """The golden-loss run: ``steps`` steps of the tiny supervised or CLIP model on the tiny
    benchmark (noise 0.3), checkpointing every ``stop_at`` steps; returns the per-step losses."""
    from functools import partial

    import torch
    from lightning.pytorch import seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint

    from nml.data.modules import ClassificationShards, ImageTextShards
    from nml.models.contrastive import ContrastivePretraining
    from nml.models.supervised import SupervisedPretraining
    from nml.noise.config import NoiseConfig

    seed_everything(0)
    common = {"root": str(root), "loader": {"batch_size": 16, "num_workers": num_workers}, "seed": 1}
    if kind == "supervised":
        dm = ClassificationShards(noise=NoiseConfig("symmetric", 0.3), **common)
        model = SupervisedPretraining(
            "test_resnet", optimizer=partial(torch.optim.AdamW, lr=3e-3), warmup=0.25
        )
    else:
        dm = ImageTextShards(noise=NoiseConfig("caption_swap", 0.3), context_length=16, **common)
        model = ContrastivePretraining(
            "tiny", TINY_CLIP, optimizer=partial(torch.optim.AdamW, lr=1e-3), warmup=0.25
        )
    losses = LossRecorder(stop_at)
    callbacks = [losses, *(callbacks or [])]
    if stop_at is not None:
        callbacks.append(ModelCheckpoint(dirpath=out, every_n_train_steps=stop_at, save_top_k=-1))
    trainer = quiet_trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps if steps else -1,  # with max_epochs too: both bounds
        max_epochs=max_epochs,
        limit_val_batches=0,
        enable_checkpointing=stop_at is not None,
        callbacks=callbacks,
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return losses.losses


_SEQUENCE = """
import sys
from nml.cli.main import main
expect = [int(c) for c in sys.argv[1].split(",")]
for i, argv in enumerate(sys.argv[2:]):
    print(f"@@{i}@@", flush=True)
    print(f"@@{i}@@", file=sys.stderr, flush=True)
    try:
        code = main(argv.split("\x1f"))
    except SystemExit as e:
        code = e.code or 0
    if code != expect[i]:
        sys.exit(code or 99)
"""


def quiet_trainer(**overrides):
    """A Lightning ``Trainer`` for tests: on the CPU, no logger, no checkpoints, no progress bar, no
    model summary, unless ``overrides`` says otherwise."""
    from lightning.pytorch import Trainer

    kwargs = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return Trainer(**{**kwargs, **overrides})


def nml_in_one_process(
    runs: list[list[str]], cwd: Path, timeout: float = 600, expect: list[int] | None = None
) -> list[tuple[str, str]]:
    """Run several ``nml`` commands one after another in ONE fresh interpreter (one cold import of
    torch/Lightning instead of one per command); (stdout, stderr) of each. Fails naming the first
    command whose exit status is not the expected one (``expect``, default 0 for each)."""
    codes = ",".join(str(c) for c in (expect or [0] * len(runs)))
    r = subprocess.run(
        [PYTHON, "-c", _SEQUENCE, codes, *("\x1f".join(map(str, a)) for a in runs)],
        capture_output=True,
        text=True,
        env=nml_subprocess_env(),
        cwd=cwd,
        timeout=timeout,
    )
    outs = [r.stdout.split(f"@@{i}@@\n", 1)[-1].split(f"@@{i + 1}@@\n", 1)[0] for i in range(len(runs))]
    errs = [r.stderr.split(f"@@{i}@@\n", 1)[-1].split(f"@@{i + 1}@@\n", 1)[0] for i in range(len(runs))]
    done = r.stdout.count("@@") // 2
    assert r.returncode == 0, (runs[done - 1] if done else runs[0], r.stderr[-3000:])
    return list(zip(outs, errs, strict=True))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

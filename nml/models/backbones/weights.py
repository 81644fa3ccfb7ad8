"""Reading weights from local files: checkpoints (``weights_only``: never unpickles code), state
dicts, ``.safetensors`` files, nml export directories; loading them into a model strictly, or partially with a listing."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
EXPORT_WEIGHTS, EXPORT_META = "encoder.pt", "encoder.json"


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` (never unpickles code) with an error that names the file."""
    import pickle
    import zipfile

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ValueError(
            f"{str(path)!r} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200] or 'empty'})"
        ) from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file (how timm and open_clip weights are published): tensors only, no code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is not a readable .safetensors file ({e})") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (``runs/<name>/<version>``): its ``checkpoints/last.ckpt``
    (or ``last.ckpt``), the final epoch of that run."""
    p = Path(path)
    if not p.is_dir():
        return p
    for candidate in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
        if candidate.is_file():
            log.info("checkpoint of run %s: %s", p, candidate)
            return candidate
    raise FileNotFoundError(f"run directory {str(path)!r} has no checkpoints/last.ckpt (nor last.ckpt)")


def check_checkpoint_file(path: str | Path) -> None:
    """Fail early, naming ``path``, when it is not a checkpoint ``torch.save`` / Lightning could have
    written (a zip archive): before a run spends minutes setting up to load it."""
    import zipfile

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    if not zipfile.is_zipfile(p):
        size = p.stat().st_size
        raise ValueError(
            f"{str(path)!r} is not a PyTorch checkpoint ({size} bytes, "
            + ("empty" if size == 0 else f"starts with {p.open('rb').read(8)!r}")
            + "): expected a .ckpt/.pt file written by Lightning or torch.save"
        )


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file or export directory (``weights_only``: never unpickles code)."""
    p = Path(path)
    if p.is_dir():
        p = p / EXPORT_WEIGHTS
    if not p.is_file():
        raise FileNotFoundError(
            f"pretrained weights {str(path)!r} not found: give a local state dict, checkpoint or nml export "
            "directory (nml never downloads weights)"
        )
    state = read_safetensors(p) if p.suffix == ".safetensors" else read_checkpoint(p)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def strip_prefix(state: dict[str, torch.Tensor], own: dict) -> dict[str, torch.Tensor]:
    """Keys as the model names them: without DDP's ``module.`` or an nml/Lightning checkpoint's
    ``backbone.model.`` (whichever makes more of them match)."""
    best = state
    for prefix in ("module.", "backbone.model.", "model."):
        cut = {k.removeprefix(prefix): v for k, v in state.items()}
        if sum(k in own for k in cut) > sum(k in own for k in best):
            best = cut
    return best


def head_keys(head_names: list[str]) -> set[str]:
    return {f"{n}.{p}" for n in head_names for p in ("weight", "bias")}


def load_into(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    head_names: list[str],
    partial: bool = False,
) -> None:
    """Load ``state`` into ``model``: all of it (the classifier head ``head_names`` excepted: it is
    new when the class count differs), or with ``partial`` what matches, listing what was skipped."""
    own = model.state_dict()
    state = strip_prefix(state, own)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    kept = {k: v for k, v in state.items() if k in own and k not in mismatched}
    missing = [k for k in own if k not in kept]
    unexpected = [k for k in state if k not in own]
    if not kept:
        raise ValueError(f"{source}: none of its {len(state)} tensors match the model's parameter names")
    head = head_keys(head_names)
    problems = {
        "missing": [k for k in missing if k not in head],
        "unexpected": [k for k in unexpected if k not in head],
        "shape-mismatched": [
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched if k not in head
        ],
    }
    listing = "; ".join(
        f"{len(v)} {name}: {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}"
        for name, v in problems.items()
        if v
    )
    if listing and not partial:
        raise ValueError(
            f"{source} does not fit the model ({listing}): another architecture? Load what matches with "
            "partial: true (the skipped tensors keep their random init)"
        )
    model.load_state_dict(kept, strict=False)
    log.log(
        logging.WARNING if listing else logging.INFO,
        "loaded %d of the model's %d tensors from %s%s",
        len(kept),
        len(own),
        source,
        f"; skipped ({listing})" if listing else "",
    )

"""Where configs are: a path you give, else a config shipped in the package (``nml/configs/``), so
that bare names (``pretrain_clip.yaml``, ``data/features.yaml``) work from any directory."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_config(name: str) -> Path:
    """A ``--config`` value as a path: the file itself if it exists, else a shipped config."""
    p = Path(name)
    if p.is_file():
        return p
    candidates = [CONFIG_DIR / name] if (CONFIG_DIR / name).is_file() else sorted(CONFIG_DIR.rglob(p.name))
    if len(candidates) == 1:
        return candidates[0]
    shipped = sorted(str(c.relative_to(CONFIG_DIR)) for c in CONFIG_DIR.rglob("*.yaml"))
    if not candidates:
        raise FileNotFoundError(
            f"config {name!r} is neither a file here nor a shipped config; shipped: {', '.join(shipped)}"
        )
    raise ValueError(f"config {name!r} is ambiguous among shipped configs: {', '.join(map(str, candidates))}")

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


def read_config_file(path: Path) -> dict:
    """The mapping of options in the YAML config ``path``. An error names the file and what is wrong
    with it (not text, not YAML and where, not a mapping) and never echoes its content: a mistyped
    path may point at a file that is nobody's business (an account file, a key)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; expected a YAML config") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ValueError(f"{path}: not a YAML config ({problem}{where})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ValueError(
            f"{path}: expected a YAML mapping of options (keys such as trainer:, model:, data:), "
            f"got a {type(content).__name__}"
        )
    return content

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """The embedded benchmark at size=tiny with the fallback fonts, built once per session."""
    from nml.data.embedded import build_embedded

    out = tmp_path_factory.mktemp("embedded") / "tiny"
    build_embedded(out, seed=3, size="tiny", fonts="fallback", shard_size=16, num_workers=2, progress=False)
    return out


def nml_subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable

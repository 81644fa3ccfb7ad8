from __future__ import annotations

from pathlib import Path

import pytest


def pytest_configure(config):
    # the nml entry point filters these (nml.quiet.HARMLESS_WARNINGS), but
    # pytest restores the warning filters after every test
    config.addinivalue_line("filterwarnings", "ignore:Your `IterableDataset` has `__len__` defined")
    # nml.models.tuning: a frozen backbone stays in eval mode on purpose
    config.addinivalue_line("filterwarnings", r"ignore:Found \d+ module\(s\) in eval mode")


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """The embedded benchmark at size=tiny with the fallback fonts, built once per session."""
    from nml.benchmark.build import build_embedded

    out = tmp_path_factory.mktemp("embedded") / "tiny"
    build_embedded(out, seed=3, size="tiny", fonts="fallback", shard_size=16, num_workers=2, progress=False)
    return out

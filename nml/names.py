"""Names that become file or directory names (test sets, tasks): letters, digits and ``._-``, not
starting with a dot, so a name from a config or a downloaded manifest cannot climb out of the
directory it is written under (``../../x``) or hide (``.x``)."""

from __future__ import annotations

import re

SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def check_name(name: object, where: str) -> str:
    """``name`` if it is safe as a path component; else a ValueError naming it and ``where`` it came
    from (a config key, a manifest file and key)."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ValueError(
            f"{where}: {name!r} is not a valid name (expected letters, digits and ._- not starting "
            "with a dot: it becomes a file name)"
        )
    return name

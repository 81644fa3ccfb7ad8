"""The Docker image's entry point: check that the mounted directories are writable, then run ``nml``.

Docker creates a bind mount's missing host directory as root, which the image's user (``nml``, uid
1000) cannot write: the first command would then fail deep inside (a ``PermissionError`` from the
shard writer or the logger). This entry point checks the directories first (``NML_WRITABLE``,
colon-separated; default ``/work/data:/work/runs``; empty: no check) and, for each one the user
cannot write, names it, its owner and the two ways on (create the host directories before the
first run, or run as your own user with ``--user "$(id -u):$(id -g)"``).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

WRITABLE = "/work/data:/work/runs"
NO_CHECK = ("--help", "-h", "--version")  # what runs without writing anything


def can_write(path: Path, uid: int, gids: Sequence[int]) -> bool:
    """Whether the user ``uid`` (in the groups ``gids``) may create files in the directory ``path``
    (the permission bits, as the kernel reads them; root may always)."""
    st = path.stat()
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR and st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IWGRP and st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IWOTH and st.st_mode & stat.S_IXOTH)


def unwritable(paths: Sequence[str], uid: int, gids: Sequence[int]) -> list[str]:
    """One message per existing directory of ``paths`` that ``uid`` cannot write."""
    problems = []
    for p in (Path(x) for x in paths if x):
        if p.is_dir() and not can_write(p, uid, gids):
            st = p.stat()
            problems.append(
                f"{p} is not writable by this container's user (uid {uid}); it belongs to uid {st.st_uid} "
                f"(mode {stat.filemode(st.st_mode)}): Docker creates a missing bind-mount directory as root"
            )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in NO_CHECK:
        paths = os.environ.get("NML_WRITABLE", WRITABLE).split(":")
        problems = unwritable(paths, os.geteuid(), os.getgroups() + [os.getegid()])
        if problems:
            for p in problems:
                print(f"nml: error: {p}", file=sys.stderr)
            print(
                "nml: create the host directories before the first run (mkdir -p data runs), or run as your "
                'own user: docker run --user "$(id -u):$(id -g)" ...; NML_WRITABLE= skips this check',
                file=sys.stderr,
            )
            return 1
    os.execvp("nml", ["nml", *argv])
    return 0  # pragma: no cover  (execvp does not return)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

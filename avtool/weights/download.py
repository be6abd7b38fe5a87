"""Fetch, check and lay out the files of registry components; verify them later; build tiny checkpoints.

Per component folder, under a lock (`<weights>/.locks/<folder>.lock`) so that two processes never
write the same folder at once:

1. list the wanted files: the hub listing at the requested revision (commit, sizes, sha256 / git blob
   ids), or, offline or when the hub cannot be reached, the listing of the Hugging Face cache;
2. for each file: keep it if it is already there, else take it from the Hugging Face cache
   (hard link, or copy), else download it through huggingface_hub into `<folder>/.partial/`, where an
   interrupted download stays and is resumed with an HTTP Range request the next time;
3. hash it; only a file whose size and hash match the listing is renamed to its final name;
4. once every file is in place, write the folder's manifest (see `manifest.py`).

Problems (a hash mismatch, a file only a person can fetch, an unreachable hub) are collected in the
Report so that one run does everything it can, and the command then exits 3 naming each one.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avtool.errors import WeightsError
from avtool.weights.manifest import (
    MANIFEST_NAME,
    Digests,
    digests,
    digests_against,
    folder_files,
    matches,
    read_manifest,
    sizes_match,
    verify_folder,
    write_manifest,
)
from avtool.weights.registry import Component, Model

PARTIAL_DIR = ".partial"
_WEIGHT_FILE = re.compile(r"\.(safetensors|bin|pt|pth|ckpt)$|\.index(\.\w+)?\.json$")
_VARIANT_TAG = re.compile(r"(?:^|[.-])(fp16|bf16|fp32)(?=[.-]|$)")
_COMMIT = re.compile(r"[0-9a-f]{40}")

Say = Callable[[str], None]


@dataclass(frozen=True)
class RemoteFile:
    """A file a component wants: its path in the repository (= under the folder), size and expected hash."""

    path: str
    size: int | None
    digest: str | None  # sha256 (LFS files) or git blob sha1; None when the source gives none


@dataclass
class Report:
    """What one run did, for the human summary, `--json` and the exit code."""

    fetched: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    verified: list[dict[str, Any]] = field(default_factory=list)
    planned: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)

    def problem(self, model: str, path: str | Path, message: str, hint: str | None = None) -> None:
        self.problems.append({"model": model, "path": str(path), "problem": message, "hint": hint})

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def select_files(paths: list[str], allow: tuple[str, ...], variant: str | None = None) -> list[str]:
    """The repository paths a component wants, in diffusers/transformers terms.

    `allow` patterns (fnmatch, `*` crosses folders) pick the files. Then, per folder, weight files of
    one variant are kept: `variant`'s (e.g. `model.bf16.safetensors`) where the folder has them, else the
    untagged ones; and where a folder has safetensors weights, its `.bin` weights are dropped.
    """
    wanted = [p for p in paths if not allow or any(fnmatch.fnmatchcase(p, pattern) for pattern in allow)]
    by_folder: dict[str, list[str]] = {}
    for path in wanted:
        by_folder.setdefault(posixpath.dirname(path), []).append(path)
    selected = []
    for files in by_folder.values():
        weights = [p for p in files if _WEIGHT_FILE.search(posixpath.basename(p))]
        tags = {p: _tag(p) for p in weights}
        present = set(tags.values())
        keep_tag = variant if variant in present else None if None in present else min(present, default=None)
        weights = [p for p in weights if tags[p] == keep_tag]
        if any(p.endswith(".safetensors") or ".safetensors.index" in p for p in weights):
            weights = [p for p in weights if not (p.endswith(".bin") or ".bin.index" in p)]
        selected += [p for p in files if p not in tags] + weights
    return sorted(selected)


def _tag(path: str) -> str | None:
    match = _VARIANT_TAG.search(posixpath.basename(path))
    return match.group(1) if match else None


@contextlib.contextmanager
def folder_lock(weights_dir: Path, folder: str, say: Say) -> Iterator[None]:
    """Hold `<weights>/.locks/<folder>.lock`; if another process holds it, say so and wait for it."""
    from filelock import FileLock, Timeout

    lock_dir = weights_dir / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_dir / f"{folder}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"waiting: another avtool download-weights is writing {weights_dir / folder} (lock {lock.lock_file})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


class Installer:
    """Installs registry components into one weights folder (see the module docstring)."""

    def __init__(self, weights_dir: Path, report: Report, say: Say, quiet: bool = True, variant: str | None = None) -> None:
        self.weights_dir = weights_dir
        self.report = report
        self.say = say
        self.quiet = quiet
        self.variant = variant

    # -- entry points -------------------------------------------------------------------------------

    def install(self, model: Model, dry_run: bool = False, revision: str | None = None) -> None:
        """Fetch (or, with `dry_run`, plan) every component of `model`.

        `revision` replaces the registry's for the model's own repository (its first component) only:
        the shared components (wav2vec2, CLIP, ...) stay at theirs.
        """
        if model.unavailable:
            self.report.problem(model.id, self.weights_dir, f"{model.id}: {model.unavailable}", hint="avtool download-weights lists the models that can be fetched")
            return
        for index, component in enumerate(model.components):
            component_revision = (revision if index == 0 else None) or component.revision
            if dry_run:
                self._component(model.id, component, component_revision, dry_run=True)
                continue
            with folder_lock(self.weights_dir, component.folder, self.say):
                self._component(model.id, component, component_revision, dry_run=False)

    def _component(self, model_id: str, component: Component, revision: str, dry_run: bool) -> None:
        folder = self.weights_dir / component.folder
        manifest = read_manifest(folder)
        if component.kind == "hub":
            listing = self._hub_listing(model_id, component, revision, manifest)
            if listing is None:
                return
            source, files = listing
        elif component.kind == "url":
            source, files = {"kind": "url", "url": component.url}, [RemoteFile(component.files[0], None, None)]
        else:
            source, files = {"kind": "manual"}, [RemoteFile(name, None, None) for name in component.files]

        if manifest is not None and _same_source(manifest["source"], source) and sizes_match(folder, manifest) \
                and set(manifest["files"]) == {f.path for f in files}:
            for name in manifest["files"]:
                self.report.skipped.append({"model": model_id, "folder": component.folder, "file": name, "reason": "up to date"})
            return
        if dry_run:
            for remote in files:
                self.report.planned.append({"model": model_id, "folder": component.folder, "file": remote.path,
                                            "bytes": remote.size, "action": self._plan_action(component, source, folder, remote)})
            return

        (folder / MANIFEST_NAME).unlink(missing_ok=True)  # the folder is about to change: unfinished until rewritten
        done: dict[str, Digests] = {}
        with self._progress() as progress:
            for remote in files:
                found = self._file(model_id, component, source, folder, remote, manifest, progress)
                if found is not None:
                    done[remote.path] = found
        if len(done) == len(files):
            write_manifest(folder, {**source, "model": model_id}, done)
            shutil.rmtree(folder / PARTIAL_DIR, ignore_errors=True)

    # -- listing ------------------------------------------------------------------------------------

    def _hub_listing(self, model_id: str, component: Component, revision: str,
                     manifest: dict | None) -> tuple[dict, list[RemoteFile]] | None:
        """(source, wanted files) from the hub, else from the Hugging Face cache; None after reporting why not."""
        from huggingface_hub import constants

        unreachable = "offline mode (HF_HUB_OFFLINE=1)" if constants.is_offline_mode() else None
        listing = None
        if unreachable is None:
            try:
                listing = _hub_files(component.repo, revision)
            except WeightsError as e:
                self.report.problem(model_id, self.weights_dir / component.folder, e.message, e.hint)
                return None
            except ConnectionError as e:
                unreachable = f"cannot reach {constants.ENDPOINT} ({e})"
        if listing is None:
            if manifest is not None and manifest["source"].get("revision") == revision \
                    and manifest["source"].get("variant") == self._variant(component):
                return manifest["source"], [RemoteFile(name, e["size"], e["sha256"]) for name, e in manifest["files"].items()]
            listing = _cached_files(component.repo, revision)
            if listing is None:
                self.report.problem(model_id, self.weights_dir / component.folder,
                                    f"{component.repo}@{revision}: {unreachable}, and it is not in the Hugging Face cache "
                                    f"({constants.HF_HUB_CACHE})", hint="run again with network access, or set HF_ENDPOINT to a mirror")
                return None
        commit, files = listing
        by_path = {f.path: f for f in files}
        selected = select_files(list(by_path), component.allow, self._variant(component))
        if not selected:
            self.report.problem(model_id, self.weights_dir / component.folder,
                                f"{component.repo}@{revision}: no files match {', '.join(component.allow)}")
            return None
        source = {"kind": "hub", "repo": component.repo, "revision": revision, "commit": commit,
                  "variant": self._variant(component)}
        if unreachable is not None:
            return source, [by_path[p] for p in selected]
        try:
            return source, [_with_metadata(component.repo, commit, by_path[p]) for p in selected]
        except WeightsError as e:
            self.report.problem(model_id, self.weights_dir / component.folder, e.message, e.hint)
            return None

    def _variant(self, component: Component) -> str | None:
        return self.variant if self.variant in component.variants else None

    # -- one file -----------------------------------------------------------------------------------

    def _plan_action(self, component: Component, source: dict, folder: Path, remote: RemoteFile) -> str:
        dest = folder / remote.path
        if dest.is_file() and (remote.size is None or dest.stat().st_size == remote.size):
            return "check the file already there"
        if component.kind == "manual":
            return f"place by hand: {component.manual}"
        if component.kind == "url":
            return f"download {component.url}"
        if _cache_path(source, remote.path) is not None:
            return "link from the Hugging Face cache"
        return "download from the hub"

    def _file(self, model_id: str, component: Component, source: dict, folder: Path, remote: RemoteFile,
              manifest: dict | None, progress: Any) -> Digests | None:
        """Put one file in place; return its digests, or None after reporting the problem."""
        dest = folder / remote.path
        entry = {"model": model_id, "folder": component.folder, "file": remote.path}
        previous = (manifest or {}).get("files", {}).get(remote.path)
        if previous and dest.is_file() and dest.stat().st_size == previous["size"] == remote.size \
                and remote.digest == previous["sha256"]:
            self.report.skipped.append({**entry, "reason": "same content in the previous manifest"})
            return Digests(previous["size"], previous["sha256"])
        if dest.is_file():
            found = digests_against(dest, remote.digest)
            if matches(found, remote.size, remote.digest):
                self.report.skipped.append({**entry, "reason": "already present"})
                return found
        if component.kind == "manual":
            self.report.problem(model_id, dest, f"{dest}: missing; put the file there by hand",
                                hint=component.manual)
            return None

        cached = _cache_path(source, remote.path) if component.kind == "hub" else None
        if cached is not None:
            found = self._take_from_cache(cached, dest, remote)
            if found is not None:
                self.report.fetched.append({**entry, "bytes": found.size, "sha256": found.sha256, "from": "cache"})
                return found
            self.say(f"warning: {cached} in the Hugging Face cache does not match the hub listing; downloading instead")
        if _offline():
            where = "not in the Hugging Face cache" if component.kind == "hub" else f"to be downloaded from {component.url}"
            self.report.problem(model_id, dest, f"{dest}: missing, {where}, and offline mode is on (HF_HUB_OFFLINE=1)",
                                hint="run again with network access" + (f", or put the file at {dest} by hand"
                                                                        if component.kind == "url" else ""))
            return None

        part = folder / PARTIAL_DIR / (f"{remote.digest}.part" if remote.digest else f"{remote.path.replace('/', '__')}.part")
        url, headers = self._url(component, source, remote)
        try:
            _download(url, part, remote.size, headers, progress, remote.path)
        except WeightsError as e:
            hint = f"put the file at {dest} by hand (from {component.url})" if component.kind == "url" else e.hint
            self.report.problem(model_id, dest, e.message, hint)
            return None
        found = digests_against(part, remote.digest)
        if not matches(found, remote.size, remote.digest):
            part.unlink()
            self.report.problem(model_id, dest, f"{dest}: downloaded file does not match the hub listing "
                                f"(size {found.size}, expected {remote.size}; hash expected {remote.digest}); it was deleted",
                                hint=f"run avtool download-weights {model_id} again")
            return None
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        self.report.fetched.append({**entry, "bytes": found.size, "sha256": found.sha256, "from": component.kind})
        return found

    def _take_from_cache(self, cached: Path, dest: Path, remote: RemoteFile) -> Digests | None:
        """Hard-link (or copy) a cached blob into place if it matches the listing."""
        blob = Path(os.path.realpath(cached))
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.parent / f".{dest.name}.from-cache"
        staging.unlink(missing_ok=True)
        try:
            os.link(blob, staging)
        except OSError:
            shutil.copyfile(blob, staging)
        found = digests_against(staging, remote.digest)
        if not matches(found, remote.size, remote.digest):
            staging.unlink()
            return None
        os.replace(staging, dest)
        return found

    def _url(self, component: Component, source: dict, remote: RemoteFile) -> tuple[str, dict[str, str]]:
        if component.kind == "url":
            return component.url, {}  # never send a Hugging Face token to another host
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        return hf_hub_url(component.repo, remote.path, revision=source["commit"]), build_hf_headers()

    def _progress(self) -> Any:
        from avtool.ui import progress

        return progress(self.quiet, transfer=True)


def _same_source(recorded: dict, wanted: dict) -> bool:
    keys = ("kind", "repo", "commit", "variant", "url")
    return all(recorded.get(k) == wanted.get(k) for k in keys if k in wanted)


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _hub_files(repo: str, revision: str) -> tuple[str, list[RemoteFile]]:
    """(commit, files) of a hub repository at `revision`, with sizes and hashes.

    WeightsError for a missing, gated or private repository or revision; ConnectionError when the hub
    cannot be reached (the caller then looks in the cache).
    """
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except GatedRepoError:
        raise WeightsError(f"{repo}: gated repository", hint="accept its terms on the hub and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise WeightsError(f"{repo}: no revision {revision!r}", hint="check --revision") from None
    except RepositoryNotFoundError:
        raise WeightsError(f"{repo}: repository not found (or private)", hint="check HF_ENDPOINT, or set HF_TOKEN") from None
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code >= 500:
            raise ConnectionError(f"server error {e.response.status_code}") from None
        raise WeightsError(f"{repo}@{revision}: {e}") from None
    except httpx2.TransportError as e:
        raise ConnectionError(str(e) or type(e).__name__) from None
    files = [RemoteFile(s.rfilename, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else s.blob_id)
             for s in info.siblings or []]
    return info.sha, files


def _with_metadata(repo: str, commit: str, remote: RemoteFile) -> RemoteFile:
    """Fill in size and hash from the file's HEAD response (ETag) when the listing did not give them."""
    import httpx2
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    if remote.size is not None and remote.digest is not None:
        return remote
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, remote.path, revision=commit))
    except (HfHubHTTPError, httpx2.HTTPError, ConnectionError) as e:
        raise WeightsError(f"{repo}/{remote.path}: no size or hash available ({e})") from None
    return RemoteFile(remote.path, meta.size, meta.etag)


def _storage_folder(repo: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def _cached_files(repo: str, revision: str) -> tuple[str, list[RemoteFile]] | None:
    """(commit, files) of a repository snapshot in the Hugging Face cache, without any network call.

    A cached blob is named by its etag: the sha256 of an LFS file or the git blob id of any other, so
    the expected hash of each file is known offline too.
    """
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    storage = _storage_folder(repo)
    ref = storage / "refs" / revision
    commit = revision if _COMMIT.fullmatch(revision) else ref.read_text().strip() if ref.is_file() else None
    snapshot = storage / "snapshots" / str(commit)
    if commit is None or not snapshot.is_dir():
        return None
    try:
        paths = [f.path for f in get_cached_repo_tree(repo, revision=commit)]
    except CachedRepoTreeNotFoundError:
        paths = folder_files(snapshot)
    files = []
    for path in paths:
        cached = snapshot / path
        if cached.is_file():
            files.append(RemoteFile(path, cached.stat().st_size, Path(os.path.realpath(cached)).name))
        else:
            files.append(RemoteFile(path, None, None))
    return commit, files


def _cache_path(source: dict, path: str) -> Path | None:
    """The file in the Hugging Face cache snapshot of `source`'s commit, if it is there."""
    cached = _storage_folder(source["repo"]) / "snapshots" / source["commit"] / path
    return cached if cached.is_file() else None


def _download(url: str, part: Path, size: int | None, headers: dict[str, str], progress: Any, name: str) -> None:
    """Download `url` into `part`, resuming from what `part` already holds; WeightsError if it fails."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get

    part.parent.mkdir(parents=True, exist_ok=True)
    resume = part.stat().st_size if part.is_file() else 0
    if size is not None and resume > size:
        part.unlink()
        resume = 0
    try:
        with open(part, "ab") as f:
            http_get(url, f, resume_size=resume, headers=headers, expected_size=size, displayed_filename=name,
                     tqdm_class=_bar_class(progress, name))
    except (httpx2.HTTPError, HfHubHTTPError, ConnectionError) as e:
        kept = part.stat().st_size
        raise WeightsError(f"{name}: download failed ({type(e).__name__}: {e})" + (f"; {kept} bytes kept in {part}" if kept else ""),
                           hint="run the same command again to resume") from None
    except OSError as e:  # http_get's size consistency check
        if size is not None and part.stat().st_size > size:
            part.unlink()
        raise WeightsError(f"{name}: {str(e).splitlines()[0]}", hint="run the same command again") from None


def _bar_class(progress: Any, description: str) -> type:
    """A tqdm stand-in for huggingface_hub's http_get that drives one rich progress task."""

    class Bar:
        def __init__(self, total: int | None = None, initial: int = 0, **_: Any) -> None:
            self.task = progress.add_task(description, total=total, completed=initial)

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: Any) -> None:
            progress.remove_task(self.task)

        def update(self, n: int = 1) -> None:
            progress.advance(self.task, n)

    return Bar


# -- verification, status, tiny ---------------------------------------------------------------------


def verify(weights_dir: Path, folders: dict[str, str], report: Report) -> None:
    """Re-hash each folder (`{folder: model id}`) against its manifest."""
    for folder, model_id in folders.items():
        path = weights_dir / folder
        if not path.is_dir():
            report.problem(model_id, path, f"{path}: not downloaded", hint=f"run: avtool download-weights {model_id}")
            continue
        problems = verify_folder(path)
        for file, problem in problems:
            report.problem(model_id, file, f"{file}: {problem}", hint=f"run: avtool download-weights {model_id}")
        manifest = read_manifest(path)
        report.verified.append({"model": model_id, "folder": folder, "ok": not problems,
                                "files": len(manifest["files"]) if manifest else 0})


def folders_with_manifest(weights_dir: Path) -> dict[str, str]:
    """`{folder: model id}` for every folder under `weights_dir` that has a manifest."""
    if not weights_dir.is_dir():
        return {}
    found = {}
    for path in sorted(weights_dir.iterdir()):
        manifest = read_manifest(path) if path.is_dir() else None
        if manifest is not None:
            found[path.name] = manifest["source"].get("model", path.name)
    return found


def listing(weights_dir: Path) -> list[dict[str, Any]]:
    """Every registry model with its sizes, licences, and the state of its folders under `weights_dir`."""
    from avtool.weights.registry import MODELS
    from avtool.weights.tiny import BUILDERS

    return [{"id": m.id, "needed_by": list(m.needed_by), "approx_gb": round(m.approx_gb, 2), "note": m.unavailable or m.note,
             "licences": sorted({c.licence for c in m.components}), "tiny": m.id in BUILDERS,
             "components": [{**folder_status(weights_dir, c.folder), "source": c.source} for c in m.components]}
            for m in MODELS.values()]


def folder_status(weights_dir: Path, folder: str) -> dict[str, Any]:
    """Whether a component folder is complete (manifest present, sizes right) and how much it holds."""
    path = weights_dir / folder
    manifest = read_manifest(path) if path.is_dir() else None
    on_disk = sum((path / f).stat().st_size for f in folder_files(path)) if path.is_dir() else 0
    state = "missing" if not path.is_dir() else "present" if manifest and sizes_match(path, manifest) else "incomplete"
    return {"folder": folder, "state": state, "bytes": on_disk}


def install_tiny(weights_dir: Path, model_ids: list[str], report: Report, say: Say) -> None:
    """Run each model's tiny builder under the locks of its folders, then give each folder a manifest."""
    from avtool.weights import tiny
    from avtool.weights.registry import MODELS

    for model_id in model_ids:
        registered = [c.folder for c in MODELS[model_id].components] if model_id in MODELS else []
        before = {p.name for p in weights_dir.iterdir()} if weights_dir.is_dir() else set()
        with contextlib.ExitStack() as locks:
            for folder in sorted(registered):
                locks.enter_context(folder_lock(weights_dir, folder, say))
                (weights_dir / folder / MANIFEST_NAME).unlink(missing_ok=True)
            tiny.build_tiny(weights_dir, [model_id])
            created = {p.name for p in weights_dir.iterdir() if p.is_dir() and not p.name.startswith(".")} - before
            for folder in sorted(set(registered) | created):
                path = weights_dir / folder
                if not path.is_dir():
                    continue
                files = {name: digests(path / name) for name in folder_files(path)}
                write_manifest(path, {"kind": "tiny", "builder": tiny.BUILDERS[model_id], "model": model_id}, files)
                for name, d in files.items():
                    report.fetched.append({"model": model_id, "folder": folder, "file": name, "bytes": d.size,
                                           "sha256": d.sha256, "from": "tiny"})

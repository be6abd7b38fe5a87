"""`avtool download-weights`: list, fetch, verify or build (tiny) the weights of the registry's models.

The command's whole logic is here; the CLI only parses options and prints what `download_weights` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avtool.errors import BadInput, WeightsError


@dataclass(frozen=True)
class WeightsRequest:
    models: list[str]  # model ids; none: list every model and what is present
    weights_dir: Path | None = None  # None: $AVTOOL_WEIGHTS or ./weights (with --tiny, its tiny/ subfolder)
    dry_run: bool = False
    verify: bool = False
    revision: str | None = None
    variant: str | None = None
    tiny: bool = False


def download_weights(request: WeightsRequest, echo: Callable[[str], None], quiet: bool = False) -> dict[str, Any]:
    """Do what the request asks; return the report (`{"weights_dir", "models"}` for a listing).

    Problems that let the run go on (a hash mismatch, a file only a person can fetch) are in `problems`;
    `raise_problems` turns them into the exit code.
    """
    from avtool.weights import download, registry
    from avtool.weights.layout import default_weights_dir
    from avtool.weights.tiny import BUILDERS

    chosen = [registry.get_model(m) for m in dict.fromkeys(request.models)]
    if request.tiny and (unknown := [m.id for m in chosen if m.id not in BUILDERS]):
        raise BadInput(f"--tiny {unknown[0]}: no tiny builder registered", hint=f"registered: {', '.join(BUILDERS) or 'none'}")
    if request.revision is not None and len(chosen) != 1:
        raise BadInput("--revision needs exactly one model to fetch")
    if request.variant is not None and not any(request.variant in c.variants for m in chosen for c in m.components):
        offered = ", ".join(f"{m.id} ({'/'.join(c.variants)})" for m in registry.MODELS.values() for c in m.components if c.variants)
        raise BadInput(f"--variant {request.variant}: not offered by the models named", hint=f"offered: {offered}")
    from avtool.media.files import ensure_output_dir

    root = request.weights_dir or (default_weights_dir() / "tiny" if request.tiny else default_weights_dir())
    report = download.Report()
    if root.exists() and not root.is_dir():
        raise BadInput(f"--dir {root}: is a file, not a folder")
    if not request.verify and not request.dry_run and (request.tiny or chosen):
        ensure_output_dir(root)

    if request.verify:
        if not root.is_dir():
            raise BadInput(f"--dir {root}: no such folder, nothing to verify")
        folders = {c.folder: m.id for m in chosen for c in m.components} if chosen else download.folders_with_manifest(root)
        if not folders:
            raise BadInput(f"{root}: no downloaded model folder (with a manifest) to verify",
                           hint="avtool download-weights MODEL fetches one; avtool download-weights lists them")
        download.verify(root, folders, report)
    elif request.tiny:
        built = [m.id for m in chosen] or list(BUILDERS)
        if request.dry_run:
            report.planned += [{"model": m, "folder": str(root), "file": None, "bytes": None, "action": f"build tiny {m}"}
                               for m in built]
        else:
            download.install_tiny(root, built, report, echo)
    elif chosen:
        installer = download.Installer(root, report, echo, quiet=quiet, variant=request.variant)
        for model in chosen:
            installer.install(model, dry_run=request.dry_run, revision=request.revision)
    else:
        return {"weights_dir": str(root), "models": download.listing(root)}
    return {"weights_dir": str(root), **report.as_dict()}


def summary_lines(request: WeightsRequest, result: dict[str, Any], quiet: bool = False) -> list[str]:
    """The human summary of `download_weights`' result, one line each (`quiet`: only the listing or the plan)."""
    if "models" in result:
        lines = []
        for entry in result["models"]:
            states = ", ".join(f"{c['folder']}/ {c['state']} ({c['bytes'] / 1e9:.2f} GB)" for c in entry["components"])
            lines.append(f"{entry['id']:<16} ~{entry['approx_gb']:.1f} GB  for {', '.join(entry['needed_by'])}: {states or entry['note']}")
        return lines
    lines = []
    for item in result["planned"]:
        target = f"{item['folder']}/{item['file']}" if item["file"] else item["folder"]
        lines.append(f"would {item['action']}: {target}" + (f" ({item['bytes']} bytes)" if item["bytes"] else ""))
    root = result["weights_dir"]
    if quiet:
        return lines
    if request.verify:
        lines.append(f"{root}: verified {sum(v['ok'] for v in result['verified'])} of {len(result['verified'])} folder(s)")
    elif not request.dry_run:
        fetched_bytes = sum(item["bytes"] for item in result["fetched"])
        verb = "built" if request.tiny else "fetched"
        lines.append(f"{root}: {verb} {len(result['fetched'])} file(s) ({fetched_bytes / 1e6:.1f} MB), "
                     f"{len(result['skipped'])} already present")
    return lines


def raise_problems(result: dict[str, Any]) -> None:
    """Print every problem but the last, and raise the last as a WeightsError (exit 3)."""
    from avtool.ui import print_error

    problems = result.get("problems", [])
    for problem in problems[:-1]:
        print_error(problem["problem"], problem["hint"])
    if problems:
        raise WeightsError(problems[-1]["problem"], hint=problems[-1]["hint"])

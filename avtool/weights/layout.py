"""Where each model's files live under a weights folder, and the check pipelines run before loading.

Every model has one folder directly under the weights folder, named by its local folder name (the
registry maps model ids to these), holding the upstream repository's files with their upstream names.
`weights/tiny/` holds the same layout with small random checkpoints.

A pipeline lists what its loaders will read through a `WeightsCheck` before anything is imported or
loaded; every missing file of every model is then reported in one error whose hint names every model
to download. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from avtool.errors import BadInput, WeightsError
from avtool.weights.loading import shortlist

# MusicInfuser (`avtool dance`): Mochi-1 in the diffusers layout, the adapter file, wav2vec2.
MOCHI_FOLDER = "mochi-1-preview"
ADAPTER_FOLDER = "musicinfuser"
ADAPTER_FILE = "musicinfuser.safetensors"
WAV2VEC_FOLDER = "wav2vec2-base-960h"
# VidMuse (`avtool score`): the audiocraft export, transformers' EnCodec 32 kHz, CLIP ViT-B/32's configs.
VIDMUSE_FOLDER = "vidmuse"
ENCODEC_FOLDER = "encodec_32khz"
CLIP_FOLDER = "clip-vit-base-patch32"
# TempoTokens (`avtool tokens`): zeroscope in the diffusers layout, the BEATs checkpoint, one mapper per dataset.
ZEROSCOPE_FOLDER = "zeroscope_v2_576w"
BEATS_FOLDER = "beats"
BEATS_FILE = "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"
TEMPOTOKENS_FOLDER = "tempotokens"
MAPPER_FILE = "learned_embeds.pth"
MAPPERS = ("vggsound", "landscape", "audioset_drum")  # upstream's models/<dataset>/learned_embeds.pth
# MuseV (`avtool animate`): the TMElyralab/MuseV repository's own folders under one folder.
MUSEV_FOLDER = "musev"
MUSEV_BASE_MODEL = "t2i/sd1.5/majicmixRealv6Fp16"  # the SD1.5 model whose spatial weights go over the motion UNet
CONTROLNET_FOLDER = "control_v11p_sd15_openpose"  # the openpose ControlNet of `animate --pose-video`
D2M_FOLDER = "d2m"  # a trained Dance2Music-Diffusion: `avtool train configs/d2m.yaml` writes these files
D2M_DIFFUSION_FILE = "dancecondation_test_final.pt"  # upstream's names
D2M_MOT_FILE = "MOT_final.pt"
D2M_CONFIG_FILE = "d2m.json"  # avtool's: the sizes (absent from upstream's runs: upstream's sizes)
DMAE_FOLDER = "dmae1d-ATC32-v3"  # archinetai's audio autoencoder, as published on the hub
VARIANTS = ("bf16", "fp16")


def default_weights_dir() -> Path:
    """`$AVTOOL_WEIGHTS`, else `./weights`."""
    return Path(os.environ.get("AVTOOL_WEIGHTS", "weights"))


def download_hint(models: list[str], weights_dir: str | os.PathLike | None = None) -> str:
    """`run: avtool download-weights A B [--dir W] [--tiny]`, repeating the user's own weights folder."""
    command = ["run: avtool download-weights", *dict.fromkeys(models)]
    if weights_dir is not None:
        weights_dir = Path(weights_dir)
        if weights_dir != default_weights_dir():
            command.append(f"--dir {weights_dir}")
        if _holds_tiny_weights(weights_dir):
            command.append("--tiny")
    return " ".join(command)


def _holds_tiny_weights(weights_dir: Path) -> bool:
    if weights_dir.name == "tiny":
        return True
    for manifest in weights_dir.glob("*/avtool-manifest.json"):
        try:
            return json.loads(manifest.read_text()).get("source", {}).get("kind") == "tiny"
        except (OSError, ValueError, AttributeError):
            continue
    return False


def weights_variant(folder: Path) -> str | None:
    """The diffusers variant tag ("bf16", then "fp16") of a folder holding only tagged weight files
    (`download-weights --variant`), or None when untagged files are there."""
    names = [path.name for path in folder.glob("*.safetensors")]
    if any(not any(f".{tag}" in name for tag in VARIANTS) for name in names):
        return None
    return next((tag for tag in VARIANTS if any(f".{tag}" in name for name in names)), None)


def parameter_count(files: list[Path]) -> int:
    """Tensor elements in safetensors files, from their JSON headers (nothing else is read); other files by size / 4."""
    count = 0
    for path in files:
        if path.suffix != ".safetensors":
            count += path.stat().st_size // 4 if path.suffix != ".json" else 0
            continue
        try:
            with path.open("rb") as file:
                header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
        except (OSError, ValueError) as error:
            raise WeightsError(f"{path}: unreadable safetensors header ({error})") from None
        for name, entry in header.items():
            if name != "__metadata__":
                count += math.prod(entry["shape"])
    return count


class WeightsCheck:
    """The files a run will read, checked together: `missing` collects every absent one per model."""

    def __init__(self, weights_dir: str | os.PathLike) -> None:
        self.root = Path(weights_dir)
        if self.root.exists() and not self.root.is_dir():
            raise BadInput(f"--weights-dir {self.root}: is a file, not a folder",
                               hint="give the folder that holds the model folders (default ./weights)")
        self.missing: dict[str, list[str]] = {}
        self.files: dict[str, list[Path]] = {}  # model id -> files that will be read (for the sidecar's hashes)

    def file(self, model: str, relative: str, *alternatives: str) -> Path:
        """`root/relative` (or the first existing of the alternatives), recorded as needed by `model`."""
        for name in (relative, *alternatives):
            path = self.root / name
            if path.is_file() and path.stat().st_size > 0:
                self.files.setdefault(model, []).append(path)
                return path
        others = f" (or {', '.join(Path(name).name for name in alternatives)})" if alternatives else ""
        self.missing.setdefault(model, []).append(str(self.root / relative) + others)
        return self.root / relative

    def safetensors(self, model: str, folder: str, stem: str) -> list[Path]:
        """A diffusers/transformers weights file set: `stem[.variant].safetensors`, or its shards by index."""
        directory = self.root / folder
        variant = weights_variant(directory) if directory.is_dir() else None
        tag = f".{variant}" if variant else ""
        index = directory / f"{stem}.safetensors.index{tag}.json"
        if not index.is_file():
            return [self.file(model, f"{folder}/{stem}{tag}.safetensors")]
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
            raise WeightsError(f"{index}: unreadable shard index ({error})", hint=download_hint([model], self.root)) from None
        return [self.file(model, f"{folder}/{index.name}"), *(self.file(model, f"{folder}/{name}") for name in shards)]

    def pretrained(self, model: str, folder: str, class_name: str, library: str) -> list[Path]:
        """The files `class_name.from_pretrained(root/folder)` reads, by the kind of class (`library` is
        "transformers" or "diffusers", as in a `model_index.json`); recorded as needed by `model`."""
        def at(name: str) -> str:
            return f"{folder}/{name}"

        if "Tokenizer" in class_name:  # AutoTokenizer takes tokenizer.json, else the SentencePiece model
            return [self.file(model, at("tokenizer_config.json")), self.file(model, at("tokenizer.json"), at("spiece.model"))]
        if "Scheduler" in class_name:
            return [self.file(model, at("scheduler_config.json"))]
        if "FeatureExtractor" in class_name or "Processor" in class_name:
            return [self.file(model, at("preprocessor_config.json"))]
        stem = "diffusion_pytorch_model" if library == "diffusers" else "model"
        directory = self.root / folder
        if library == "transformers" and not list(directory.glob("*.safetensors")) and (directory / "pytorch_model.bin").is_file():
            return [self.file(model, at("config.json")), self.file(model, at("pytorch_model.bin"))]
        return [self.file(model, at("config.json")), *self.safetensors(model, folder, stem)]

    def pipeline(self, model: str, folder: str, components: dict[str, tuple[str, str]]) -> dict[str, list[Path]]:
        """The files of the `components` a run loads from a diffusers pipeline folder, each by the class its
        `model_index.json` names (`components` gives the (library, class) to expect where that file is absent)."""
        index_path = self.root / folder / "model_index.json"
        try:
            index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        except (OSError, ValueError) as error:
            raise WeightsError(f"{index_path}: not valid JSON ({error})", hint=download_hint([model], self.root)) from None
        files = {}
        for name, default in components.items():
            entry = index.get(name)
            library, class_name = entry if isinstance(entry, list) and len(entry) == 2 else default
            files[name] = self.pretrained(model, f"{folder}/{name}", class_name, library)
        return files

    def raise_if_missing(self) -> None:
        """One WeightsError naming the first missing files (a whole missing model folder once) and, in its hint,
        every model to download."""
        if not self.missing:
            return
        hint = download_hint(list(self.missing), self.root)
        if not self.root.is_dir():
            raise WeightsError(f"{self.root}: no such weights folder", hint=hint)
        paths: list[str] = []
        for path in (p for ps in self.missing.values() for p in ps):
            folder = self.root / Path(path).relative_to(self.root).parts[0]
            paths.append(f"{folder}/ (the whole folder)" if not folder.is_dir() else path)
        raise WeightsError(shortlist("missing weights", list(dict.fromkeys(paths))), hint=hint)

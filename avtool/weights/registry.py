"""Every model avtool can run: where its files come from and where they go under the weights folder.

A model is a list of components; each component is one folder directly under the weights folder,
holding its upstream files under their upstream names (repository paths are kept, so a repository
subfolder stays a subfolder). A component comes from a Hugging Face repository, from a public URL,
or, where nothing can be fetched automatically, from the user (the registry says where to get it).
"""

from __future__ import annotations

from dataclasses import dataclass

from avtool.errors import BadInput
from avtool.weights.layout import (
    BEATS_FILE,
    BEATS_FOLDER,
    CONTROLNET_FOLDER,
    D2M_DIFFUSION_FILE,
    D2M_FOLDER,
    D2M_MOT_FILE,
    DMAE_FOLDER,
    MAPPER_FILE,
    MAPPERS,
    TEMPOTOKENS_FOLDER,
    ZEROSCOPE_FOLDER,
)


@dataclass(frozen=True)
class Component:
    """One folder of files under the weights folder."""

    folder: str
    approx_gb: float
    licence: str
    repo: str | None = None  # Hugging Face repository id
    revision: str = "main"
    allow: tuple[str, ...] = ()  # fnmatch patterns over repository paths; empty: every file
    variants: tuple[str, ...] = ()  # weight variants the repository offers (diffusers `--variant`)
    url: str | None = None  # a public URL of a single file (not on the hub)
    files: tuple[str, ...] = ()  # for `url` and manual components: the file name(s) kept in `folder`
    manual: str | None = None  # where to get the file(s) by hand when nothing can fetch them

    @property
    def kind(self) -> str:
        return "hub" if self.repo else "url" if self.url else "manual"

    @property
    def source(self) -> str:
        return f"hf://{self.repo}@{self.revision}" if self.repo else self.url or self.manual or ""


@dataclass(frozen=True)
class Model:
    """A model id users type, the components it needs and the subcommands that use it."""

    id: str
    components: tuple[Component, ...]
    needed_by: tuple[str, ...]
    note: str = ""
    unavailable: str | None = None  # why nothing can be downloaded, and what to do instead

    @property
    def approx_gb(self) -> float:
        return sum(c.approx_gb for c in self.components)


WAV2VEC2 = Component(
    folder="wav2vec2-base-960h",
    repo="facebook/wav2vec2-base-960h",
    allow=("*.json", "*.txt", "*.safetensors", "*.bin"),
    approx_gb=0.4,
    licence="Apache-2.0",
)

_MODELS = [
    Model(
        id="mochi-1-preview",
        components=(
            Component(
                folder="mochi-1-preview",
                repo="genmo/mochi-1-preview",
                allow=("model_index.json", "scheduler/*", "text_encoder/*", "tokenizer/*", "transformer/*", "vae/*"),
                variants=("bf16",),
                approx_gb=60.0,
                licence="Apache-2.0",
            ),
        ),
        needed_by=("dance", "train"),
        note="diffusers layout; `--variant bf16` fetches the bf16 weight files (about half the size)",
    ),
    Model(
        id="musicinfuser",
        components=(
            Component(
                folder="musicinfuser",
                repo="susunghong/MusicInfuser",
                allow=("musicinfuser.safetensors",),
                approx_gb=1.44,
                licence="see the model card (not verified)",
            ),
            WAV2VEC2,
        ),
        needed_by=("dance", "train"),
        note="LoRA + audio adapter for mochi-1-preview; wav2vec2 encodes the music",
    ),
    Model(
        id="vidmuse",
        components=(
            Component(
                folder="vidmuse",
                repo="HKUSTAudio/VidMuse",
                allow=("state_dict.bin", "compression_state_dict.bin"),
                approx_gb=7.87,
                licence="CC-BY-NC (code repository LICENSE); model card says cc-by-4.0",
            ),
            Component(
                folder="encodec_32khz",
                repo="facebook/encodec_32khz",
                allow=("*.json", "*.safetensors", "*.bin"),
                approx_gb=0.24,
                licence="CC-BY-NC-4.0 (not verified)",
            ),
            Component(
                folder="clip-vit-base-patch32",
                repo="openai/clip-vit-base-patch32",
                allow=("*.json", "*.txt", "*.safetensors", "*.bin"),
                approx_gb=0.6,
                licence="MIT (not verified)",
            ),
        ),
        needed_by=("score", "train"),
        note="state_dict.bin is a pickle, loaded with weights_only=True",
    ),
    Model(
        id="musev",
        components=(
            Component(
                folder="musev",
                repo="TMElyralab/MuseV",
                allow=(
                    "motion/musev/*",
                    "motion/musev_referencenet/*",
                    "motion/musev_referencenet_pose/*",
                    "t2i/sd1.5/majicmixRealv6Fp16/*",
                    "t2i/sd1.5/fantasticmix_v10/*",
                    "vae/sd-vae-ft-mse/*",
                    "IP-Adapter/models/image_encoder/*",
                ),
                approx_gb=20.0,
                licence="see the model card (not verified)",
            ),
        ),
        needed_by=("animate", "train"),
        note="the three motion variants, the two SD1.5 bases, sd-vae-ft-mse and the IP-Adapter image encoder, "
        "in the repository's own folders",
    ),
    Model(
        id="controlnet-openpose",
        components=(
            Component(
                folder=CONTROLNET_FOLDER,
                repo="lllyasviel/control_v11p_sd15_openpose",
                allow=("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                approx_gb=1.45,
                licence="OpenRAIL (model card)",
            ),
        ),
        needed_by=("animate",),
        note="openpose ControlNet for `avtool animate --pose-video`",
    ),
    Model(
        id="tempotokens",
        components=(
            Component(
                folder=ZEROSCOPE_FOLDER,
                repo="cerspense/zeroscope_v2_576w",
                allow=("model_index.json", "scheduler/*", "text_encoder/*", "tokenizer/*", "unet/*", "vae/*"),
                approx_gb=7.0,
                licence="CC-BY-NC-4.0 (not verified)",
            ),
            Component(
                folder=BEATS_FOLDER,
                url="https://valle.blob.core.windows.net/share/BEATs/BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"
                "?sv=2020-08-04&st=2023-03-01T07%3A51%3A05Z&se=2033-03-02T07%3A51%3A00Z&sr=c&sp=rl"
                "&sig=QJXmSJG9DbMKf48UDIU1MfzIro8HQOf3sqlNXiflY1I%3D",
                files=(BEATS_FILE,),
                approx_gb=0.36,
                licence="MIT (microsoft/unilm)",
            ),
            Component(
                folder=TEMPOTOKENS_FOLDER,
                files=tuple(f"{mapper}/{MAPPER_FILE}" for mapper in MAPPERS),
                manual="the TempoTokens mappers (`models/<dataset>/learned_embeds.pth`) are not on the hub: get them from "
                "the links in the README of https://github.com/guyyariv/TempoTokens and keep the dataset folders",
                approx_gb=0.4,
                licence="MIT (repository)",
            ),
        ),
        needed_by=("tokens", "train"),
        note="zeroscope T2V backbone, the BEATs audio encoder (public URL) and the audio mapper (by hand)",
    ),
    Model(
        id="d2m",
        components=(
            Component(
                folder=DMAE_FOLDER,
                repo="archinetai/dmae1d-ATC32-v3",
                revision="3d43b811b83fa395d5ccd6cf58b796b85fddd1d2",  # the only revision; archisound pins it
                allow=("config.json", "pytorch_model.bin"),
                approx_gb=0.35,
                licence="MIT (archinetai/archisound)",
            ),
            Component(
                folder=D2M_FOLDER,
                files=(D2M_DIFFUSION_FILE, D2M_MOT_FILE),
                manual="Dance2Music-Diffusion publishes no weights: train them with `avtool preprocess d2m AISTPP_DIR -o "
                "data/d2m` and `avtool train configs/d2m.yaml`, then pass `--checkpoint RUN_DIR` to `avtool score --model d2m` "
                "(or copy the run folder's files here)",
                approx_gb=1.0,
                licence="MIT (repository)",
            ),
        ),
        needed_by=("score", "preprocess"),
        note="the dmae1d-ATC32-v3 audio autoencoder (hub) and a D2M you train (`avtool train configs/d2m.yaml`)",
    ),
]

MODELS: dict[str, Model] = {m.id: m for m in _MODELS}


def get_model(model_id: str) -> Model:
    """The registry entry of `model_id`; BadInput (exit 2) listing the known ids otherwise."""
    try:
        return MODELS[model_id]
    except KeyError:
        raise BadInput(f"unknown model {model_id!r}", hint=f"known models: {', '.join(MODELS)}") from None


def models_needed_by(subcommand: str) -> list[Model]:
    """The models a subcommand needs (e.g. `dance` -> mochi-1-preview, musicinfuser)."""
    return [m for m in _MODELS if subcommand in m.needed_by and not m.unavailable]


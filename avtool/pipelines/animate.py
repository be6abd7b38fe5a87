"""MuseV image/text-to-video of any length by visual-conditioned parallel denoising.

    validate the options, the images (or task file items) and the weight files   (nothing loaded yet)
    plan one job per (item, seed)                  (this process's shard of them)
    load the MuseV UNet (motion checkpoint, then the SD1.5 base's spatial weights over it, as upstream), the VAE,
    the text encoder, and for the referencenet variants the ReferenceNet, the IP-Adapter image encoder and projection
    per job: the condition frame (the image through the VAE, or a first frame generated with the temporal layers
             off), its IP tokens and ReferenceNet features, then per shot: video-fusion noise -> Euler with CFG over
             overlapping windows of frames, each led by the clean condition frame -> the next shot starts from the
             last latent -> the VAE decodes chunks of frames streamed into the video encoder

Importing this module imports no torch: option and input errors answer before any heavy import.
"""

from __future__ import annotations

import functools
import json
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from avtool.errors import BadInput, WeightsError
from avtool.media import VideoStreamInfo, crop_resize, frames_at, probe, read_image, write_video
from avtool.models.musev.config import VARIANTS
from avtool.pipelines.common import (
    GenerationOptions,
    Job,
    Rendered,
    RunInfo,
    check_choice,
    check_range,
    options_record,
    plan_jobs,
    run_jobs,
    weights_record,
)
from avtool.runtime import Shard, Stopwatch, resolve_device, resolve_dtype, resolve_shard, silence_libraries
from avtool.ui import progress, say
from avtool.weights.layout import CONTROLNET_FOLDER, MUSEV_BASE_MODEL, MUSEV_FOLDER, WeightsCheck

DEFAULT_STEPS, FIRST_FRAME_STEPS = 10, 30
DEFAULT_FPS = 12.0  # upstream's code default is 4, its README runs use 12: 12 frames per second look like motion
SIZE_STEP = 64  # upstream floors the size to multiples of 64
SD15_SAMPLE_SIZE = 64  # SD1.5's UNet sample_size; a smaller one (tiny weights) brings its own size
MAX_FRAMES, MAX_SIZE, MAX_GUIDANCE = 4096, 4096, 100.0
MODEL_OF_FOLDER = {MUSEV_FOLDER: "musev", CONTROLNET_FOLDER: "controlnet-openpose"}
IMAGE_MOTION_SPEED, POSE_MOTION_SPEED = 8.0, 1.0  # upstream: --motion_speed for image/text, the pose video's step (1)
IP_TOKENS = 4  # IP-Adapter's clip_extra_context_tokens in MuseV's config


@dataclass(frozen=True)
class AnimateRequest:
    """The animate-specific options (the shared ones are in GenerationOptions)."""

    image: Path | None = None  # the condition frame; None: generated from the prompt
    prompt: str | None = None
    negative_prompt: str = "V2"  # a key of MuseV's negative prompts, or text
    variant: str | None = None  # None: musev_referencenet_pose with --pose-video, else musev_referencenet
    pose_video: Path | None = None  # a pose video (rendered skeletons) driving an openpose ControlNet, frame by frame
    time_size: int = 12  # frames per shot after the condition frame
    n_batch: int = 1  # shots, each starting from the previous one's last frame
    first_frame_steps: int = FIRST_FRAME_STEPS
    guidance: float = 3.5
    first_frame_guidance: float = 7.5
    fps: float = DEFAULT_FPS
    height: int | None = None
    width: int | None = None
    img_length_ratio: float = 1.0
    context_frames: int = 12
    context_overlap: int = 4
    context_batch_size: int = 1
    motion_speed: float | None = None  # None: 8 (image/text), 1 (pose video), as upstream's two scripts
    w_ind_noise: float = 0.5
    img_weight: float = 1e-3
    ip_scale: float = 1.0
    vae_batch_size: int = 8
    task_file: Path | None = None
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Item:
    """One video to make: a task-file item, or the command line's image and prompt."""

    name: str | None
    prompt: str
    image: Path | None
    height: int
    width: int
    request: AnimateRequest  # with the item's own overrides


@dataclass(frozen=True)
class AnimateWeights:
    root: Path
    motion_unet: Path  # the variant's unet folder
    base: Path  # the SD1.5 folder whose spatial weights go over the motion checkpoint
    base_unet: Path
    vae: Path
    referencenet: Path | None
    image_projection: Path | None
    image_encoder: Path | None
    controlnet: Path | None
    files: dict[str, list[Path]]


@dataclass
class AnimateModels:
    """Everything loaded once per run."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    referencenet: Any | None
    image_encoder: Any | None
    image_processor: Any | None
    image_projection: Any | None
    controlnet: Any | None
    scheduler_config: dict
    device: str
    dtype: Any


def animate(request: AnimateRequest, opts: GenerationOptions) -> Iterator[dict[str, Any]]:
    """Make one video per (item, seed); models load once. Yields each job's result as it is written."""
    # 1. Validate everything that needs no model.
    request = resolve_defaults(request)
    check_options(request, opts)
    pose = check_pose_video(request) if request.pose_video else None
    weights = check_weights(opts.weights_dir, request.variant, pose is not None)
    native = native_size(weights)
    items = task_items(request, native) if request.task_file else [command_line_item(request, native)]
    shard = resolve_shard(opts.shard)

    # 2. Plan the jobs; each writes `<image stem, task name or prompt slug>_animated.mp4`.
    sources = [{"name": item.name or item.image or item.prompt, "item": i} for i, item in enumerate(items)]
    jobs = plan_jobs(sources, opts, suffix="_animated", shard=shard)

    # 3. Load once, then render each job.
    load = functools.partial(load_models, weights, request, opts, shard)
    render = functools.partial(render_job, items=items, pose=pose, steps=opts.steps or DEFAULT_STEPS, quiet=opts.quiet)
    yield from run_jobs(jobs, opts, load, render)


def load_models(weights: AnimateWeights, request: AnimateRequest, opts: GenerationOptions,
                shard: Shard | None) -> tuple[AnimateModels, RunInfo]:
    """The MuseV UNet (motion checkpoint + the base's spatial weights), VAE, text encoder; ReferenceNet and
    IP-Adapter for the referencenet variants."""
    import torch
    import transformers
    from diffusers import AutoencoderKL, ControlNetModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    from avtool.models.musev.config import MuseVConfig
    from avtool.models.musev.ip_adapter import ImageProjection
    from avtool.models.musev.loading import image_projection_state, load_base_spatial_weights, load_weights
    from avtool.models.musev.referencenet import ReferenceNet
    from avtool.models.musev.unet import MuseVUNet
    from avtool.sampling import read_scheduler_config
    from avtool.weights.loading import load_checkpoint, load_pretrained, load_state_dict, weights_hint

    device = resolve_device(opts.device, shard)
    dtype = resolve_dtype(opts.dtype, device, auto_on_cuda="fp16")  # upstream runs MuseV in fp16
    silence_libraries()
    clock = Stopwatch()
    with weights_hint(weights.root, MODEL_OF_FOLDER):
        config = MuseVConfig.for_variant(request.variant, read_json(weights.motion_unet / "config.json"))
        with torch.device("meta"):
            unet = MuseVUNet(config)
        unet.to_empty(device="cpu")
        load_weights(unet, load_state_dict(weights.motion_unet / "diffusion_pytorch_model.bin"), str(weights.motion_unet))
        load_base_spatial_weights(unet, load_state_dict(weights.base_unet), str(weights.base_unet))
        unet = unet.to(device, dtype).eval()
        vae = load_pretrained(AutoencoderKL, weights.vae).to(device, dtype).eval()
        tokenizer = load_pretrained(CLIPTokenizer, weights.base / "tokenizer")
        text_encoder = load_pretrained(CLIPTextModel, weights.base / "text_encoder").to(device, dtype).eval()
        scheduler_config = read_scheduler_config(weights.base / "scheduler")
        referencenet = image_encoder = image_processor = image_projection = None
        if weights.referencenet is not None:
            reference_config = MuseVConfig.from_unet_config(read_json(weights.referencenet / "config.json"))
            referencenet = ReferenceNet(reference_config)
            load_weights(referencenet, load_state_dict(weights.referencenet / "diffusion_pytorch_model.bin"),
                         str(weights.referencenet))
            referencenet = referencenet.to(device, dtype).eval()
            image_encoder = load_pretrained(CLIPVisionModelWithProjection, weights.image_encoder).to(device, dtype).eval()
            # upstream: CLIPImageProcessor() defaults; a folder's own preprocessor_config.json (tiny weights) wins.
            # The PIL backend: torchvision is not a dependency (transformers 5 names it; 4.x has only the one class).
            processor_class = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
            has_processor = (weights.image_encoder / "preprocessor_config.json").is_file()
            image_processor = load_pretrained(processor_class, weights.image_encoder) if has_processor else processor_class()
            state = image_projection_state(load_checkpoint(weights.image_projection), str(weights.image_projection))
            image_projection = ImageProjection(config.cross_attention_dim, state["proj.weight"].shape[1],
                                               state["proj.weight"].shape[0] // config.cross_attention_dim)
            load_weights(image_projection, state, str(weights.image_projection))
            image_projection = image_projection.to(device, dtype).eval()
        controlnet = None
        if weights.controlnet is not None:
            controlnet = load_pretrained(ControlNetModel, weights.controlnet).to(device, dtype).eval()
    models = AnimateModels(unet, vae, text_encoder, tokenizer, referencenet, image_encoder, image_processor,
                           image_projection, controlnet, scheduler_config, device, dtype)
    info = RunInfo("animate", device, str(dtype).removeprefix("torch."), opts.steps or DEFAULT_STEPS,
                   weights_record(weights.files), options_record(request), shard, clock.lap())
    return models, info


def render_job(models: AnimateModels, job: Job, items: list[Item], pose: VideoStreamInfo | None, steps: int,
               quiet: bool) -> Rendered:
    """One video: the condition frame, then `n_batch` shots of parallel-denoised windows, decoded and encoded."""
    import torch

    from avtool.models.musev.prompt import encode_prompt_pair, negative_prompt

    item = items[job.inputs["item"]]
    request = item.request
    clock, timings = Stopwatch(), {}
    generator = torch.Generator("cpu").manual_seed(job.seed)
    total = 1 + request.n_batch * request.time_size  # the condition frame, then every shot's frames
    say(f"{job.output.name}: seed {job.seed}, {total} frames of {item.width}x{item.height} "
        f"({request.n_batch} shot(s) of {request.time_size}), {steps} steps", quiet)

    with torch.inference_mode(), warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        negative, prompt = encode_prompt_pair(models.text_encoder, models.tokenizer, item.prompt,
                                              negative_prompt(request.negative_prompt))
    for note in notes:  # e.g. a prompt longer than MuseV's three 77-token chunks
        say(f"note: {note.message}", quiet)
    with torch.inference_mode():
        text = torch.cat([negative, prompt]).to(models.device, models.dtype)  # [uncond; cond]
        image = None if item.image is None else crop_resize(read_image(item.image), item.height, item.width)
        if image is None:
            first_pose = None if pose is None else pose_frames(request, pose, item, 0, 1).to(models.device, models.dtype)
            condition = first_frame_latent(models, text, item, request, generator, first_pose, quiet)
            image = decode_latents(models.vae, condition)[0]
        else:
            condition = encode_image(models.vae, image)
        ip_tokens, reference = image_conditions(models, image, condition)
    first_frame = condition
    timings["condition"] = clock.lap()

    shots = []
    with progress(quiet) as bar:
        task = bar.add_task("sampling", total=request.n_batch * steps)
        for shot in range(request.n_batch):
            # shot i covers video frames i*T+1 .. (i+1)*T; its condition frame is frame i*T (the image, or the last so far)
            control = None if pose is None else pose_frames(request, pose, item, shot * request.time_size,
                                                            request.time_size + 1).to(models.device, models.dtype)
            latents = sample_shot(models, condition, text, ip_tokens, reference, control, request, steps, generator,
                                  advance=None if bar.disable else lambda state: bar.advance(task))
            shots.append(latents)
            condition = latents[:, :, -1:]  # the next shot starts from this one's last (clean) latent
    timings["sampling"] = clock.lap()

    write_video(video_frames(models.vae, first_frame, shots, request.vae_batch_size), request.fps, job.output)
    timings["decode_and_write"] = clock.lap()
    details = {"prompt": item.prompt, "image": None if item.image is None else str(item.image), "task": item.name,
               "num_frames": total, "fps": request.fps, "height": item.height, "width": item.width,
               "variant": request.variant, "pose_video": None if request.pose_video is None else str(request.pose_video)}
    return Rendered(details, timings)


# --------------------------------------------------------------------------------------------------------------
# Validation (before any model loads; nothing here imports torch)


def resolve_defaults(request: AnimateRequest) -> AnimateRequest:
    """The variant and motion speed that depend on --pose-video (upstream's text2video vs video2video scripts)."""
    pose = request.pose_video is not None
    variant = request.variant or ("musev_referencenet_pose" if pose else "musev_referencenet")
    speed = request.motion_speed if request.motion_speed is not None else POSE_MOTION_SPEED if pose else IMAGE_MOTION_SPEED
    return replace(request, variant=variant, motion_speed=speed)


def check_options(request: AnimateRequest, opts: GenerationOptions) -> None:
    """Refuse (exit 2) options the model cannot run with."""
    opts.check()
    check_choice("--variant", request.variant, VARIANTS)
    if request.task_file is None and not (request.prompt or request.image):
        raise BadInput("nothing to animate: give --image and/or --prompt, or --task-file",
                       hint='e.g. avtool animate --image face.png --prompt "(1girl, solo:1), (eye blinks:1.8)"')
    if request.task_file is None and request.targets:
        raise BadInput("--target picks items of a --task-file; no task file was given")
    if request.task_file is not None and (request.image or request.prompt):
        raise BadInput("--task-file items bring their own images and prompts: drop --image/--prompt",
                       hint="or run the image and prompt on their own, without --task-file")
    check_numbers(request)


def check_numbers(request: AnimateRequest) -> None:
    """The numeric options' ranges (also a task item's overrides)."""
    check_range("--time-size", request.time_size, 1, MAX_FRAMES, "frames per shot")
    check_range("--n-batch", request.n_batch, 1, MAX_FRAMES, "shots")
    check_range("--first-frame-steps", request.first_frame_steps, 1, 1000)
    check_range("--guidance", request.guidance, 0, MAX_GUIDANCE)
    check_range("--first-frame-guidance", request.first_frame_guidance, 0, MAX_GUIDANCE)
    check_range("--fps", request.fps, 1, 240)
    check_range("--img-length-ratio", request.img_length_ratio, 0.01, 100)
    for name, value in (("--height", request.height), ("--width", request.width)):
        if value is not None and (not SIZE_STEP <= value <= MAX_SIZE or value % SIZE_STEP):
            raise BadInput(f"{name} {value}: must be a multiple of {SIZE_STEP} from {SIZE_STEP} to {MAX_SIZE}")
    check_range("--context-frames", request.context_frames, 1, MAX_FRAMES)
    check_range("--context-overlap", request.context_overlap, 0, request.context_frames - 1, "below --context-frames")
    check_range("--context-batch-size", request.context_batch_size, 1, MAX_FRAMES, "windows per UNet call")
    check_range("--motion-speed", request.motion_speed, 0, 1000)
    check_range("--w-ind-noise", request.w_ind_noise, 0, 1)
    check_range("--img-weight", request.img_weight, 0, 1)
    check_range("--ip-scale", request.ip_scale, 0, 100)
    check_range("--vae-batch-size", request.vae_batch_size, 1, MAX_FRAMES)


def check_pose_video(request: AnimateRequest) -> VideoStreamInfo:
    """The pose video must hold a frame for every frame made: 1 + n_batch x time_size, one pose frame each."""
    video = probe(request.pose_video).require_video()
    needed = 1 + request.n_batch * request.time_size
    if video.num_frames < needed:
        shots = (video.num_frames - 1) // request.time_size
        raise BadInput(f"--pose-video {request.pose_video}: {video.num_frames} frames, but {needed} are needed "
                       f"(1 + --n-batch {request.n_batch} x --time-size {request.time_size}; one pose frame per frame)",
                       hint=f"use --n-batch {shots}" if shots else f"use --time-size {video.num_frames - 1} or less")
    return video


def check_weights(weights_dir: Path, variant: str, pose: bool = False) -> AnimateWeights:
    """Every file the loaders read: the variant's motion UNet, the SD1.5 base, the VAE; the ReferenceNet, the
    IP-Adapter projection and image encoder for the referencenet variants; the openpose ControlNet for a pose video."""
    check = WeightsCheck(weights_dir)
    motion = f"{MUSEV_FOLDER}/motion/{variant}"
    check.file("musev", f"{motion}/unet/config.json")
    check.file("musev", f"{motion}/unet/diffusion_pytorch_model.bin")
    base = f"{MUSEV_FOLDER}/{MUSEV_BASE_MODEL}"
    base_unet = check.file("musev", f"{base}/unet/diffusion_pytorch_model.bin", f"{base}/unet/diffusion_pytorch_model.safetensors")
    check.pretrained("musev", f"{base}/tokenizer", "CLIPTokenizer", "transformers")
    check.pretrained("musev", f"{base}/text_encoder", "CLIPTextModel", "transformers")
    check.pretrained("musev", f"{base}/scheduler", "EulerDiscreteScheduler", "diffusers")
    check.pretrained("musev", f"{MUSEV_FOLDER}/vae/sd-vae-ft-mse", "AutoencoderKL", "diffusers")
    referencenet = projection = encoder = None
    if variant != "musev":  # the pose variant reuses musev_referencenet's ReferenceNet, as upstream
        referencenet = f"{MUSEV_FOLDER}/motion/musev_referencenet/referencenet"
        check.file("musev", f"{referencenet}/config.json")
        check.file("musev", f"{referencenet}/diffusion_pytorch_model.bin")
        projection = check.file("musev", f"{motion}/ip_adapter_image_proj.bin")
        encoder = f"{MUSEV_FOLDER}/IP-Adapter/models/image_encoder"
        check.pretrained("musev", encoder, "CLIPVisionModelWithProjection", "transformers")
    if pose:
        check.pretrained("controlnet-openpose", CONTROLNET_FOLDER, "ControlNetModel", "diffusers")
    check.raise_if_missing()
    root = check.root
    return AnimateWeights(root, root / motion / "unet", root / base, base_unet, root / MUSEV_FOLDER / "vae/sd-vae-ft-mse",
                          None if referencenet is None else root / referencenet, projection,
                          None if encoder is None else root / encoder, root / CONTROLNET_FOLDER if pose else None,
                          check.files)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise WeightsError(f"{path}: not a valid config ({error})") from None


def native_size(weights: AnimateWeights) -> int | None:
    """None for SD1.5-sized weights (the size comes from the image); the tiny weights' own size in pixels."""
    sample_size = int(read_json(weights.motion_unet / "config.json").get("sample_size", SD15_SAMPLE_SIZE))
    return None if sample_size >= SD15_SAMPLE_SIZE else sample_size * 8


def output_size(image: Path | None, request: AnimateRequest, native: int | None) -> tuple[int, int]:
    """(height, width): --height/--width; else the tiny weights' own size; else the image's size times
    --img-length-ratio floored to multiples of 64 (upstream); else 512 x 512 (SD1.5's)."""
    if request.height and request.width:
        return request.height, request.width
    if native is not None:
        return request.height or native, request.width or native
    if image is None:
        return request.height or 512, request.width or 512
    h, w = read_image(image).shape[:2]
    height = int(h * request.img_length_ratio // SIZE_STEP * SIZE_STEP)
    width = int(w * request.img_length_ratio // SIZE_STEP * SIZE_STEP)
    if not height or not width:
        raise BadInput(f"{image}: {w}x{h} times --img-length-ratio {request.img_length_ratio:g} is below 64 px",
                       hint="use a larger image or --img-length-ratio, or give --height and --width")
    return request.height or height, request.width or width


def command_line_item(request: AnimateRequest, native: int | None) -> Item:
    if request.image is not None:
        read_image(request.image)  # refuse an unreadable image now
    height, width = output_size(request.image, request, native)
    return Item(None, request.prompt or "", request.image, height, width, request)


# --------------------------------------------------------------------------------------------------------------
# Task files (MuseV's configs/tasks/*.yaml)

TASK_OVERRIDES = {"motion_speed": float, "w_ind_noise": float, "img_weight": float, "img_length_ratio": float,
                  "negative_prompt": str, "video_negative_prompt": str, "height": int, "width": int}


def task_items(request: AnimateRequest, native: int | None) -> list[Item]:
    """The task file's items (those named by --target, else all), each with its image, prompt, size and overrides.

    Upstream's format: a YAML list of dicts with `name`, `prompt` (with `{key}` placeholders filled from the
    item's other keys), `condition_images` (a path or a list; the first is used), `height`, `width`,
    `img_length_ratio`, and per-item overrides; `${.key}` (OmegaConf) refers to another key of the same item.
    Relative image paths are taken from the working folder, else from the task file's folder.
    """
    import yaml

    path = request.task_file
    try:
        entries = yaml.safe_load(path.read_text())
    except OSError as error:
        raise BadInput(f"--task-file {path}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise BadInput(f"--task-file {path}: not a text file (not UTF-8)", hint="give a YAML task file") from None
    except yaml.YAMLError as error:
        raise BadInput(f"--task-file {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries) or not entries:
        raise BadInput(f"--task-file {path}: expected a YAML list of items (dicts), as MuseV's configs/tasks/example.yaml")
    names = [str(e.get("name", f"item{i + 1}")) for i, e in enumerate(entries)]
    unknown = [t for t in request.targets if t not in names]
    if unknown:
        raise BadInput(f"--target {unknown[0]}: no such item in {path}", hint=f"items: {', '.join(names)}")
    items = []
    for name, entry in zip(names, entries, strict=True):
        if request.targets and name not in request.targets:
            continue
        items.append(task_item(name, resolve_references(entry), request, path, native))
    return items


def resolve_references(entry: dict) -> dict:
    """`${.key}` values replaced by the item's own `key` (the OmegaConf interpolation upstream's files use)."""
    resolved = {}
    for key, value in entry.items():
        match = re.fullmatch(r"\$\{\.(\w+)\}", value) if isinstance(value, str) else None
        resolved[key] = entry.get(match.group(1)) if match else value
    return resolved


def task_item(name: str, entry: dict, request: AnimateRequest, task_file: Path, native: int | None) -> Item:
    if entry.get("video_path"):
        raise BadInput(f"--task-file {task_file}: item {name} is video-to-video (video_path), which avtool animate "
                       "does not run yet", hint=f"leave it out with --target, e.g. --target {name}")
    prompt = fill_placeholders(str(entry.get("prompt") or ""), entry, f"--task-file {task_file}: item {name}")
    overrides = {}
    for key, kind in TASK_OVERRIDES.items():
        if entry.get(key) is not None:
            try:
                overrides[key] = kind(entry[key])
            except (TypeError, ValueError):
                raise BadInput(f"--task-file {task_file}: item {name}: {key} {entry[key]!r} is not a {kind.__name__}") from None
    if "video_negative_prompt" in overrides:
        overrides["negative_prompt"] = overrides.pop("video_negative_prompt")
    item_request = replace(request, **{k: v for k, v in overrides.items() if k not in ("height", "width")})
    check_numbers(item_request)
    images = entry.get("condition_images")
    image = images[0] if isinstance(images, list) and images else images
    image_path = None if not image else task_path(Path(str(image)), task_file, name)
    if image_path is None and not prompt:
        raise BadInput(f"--task-file {task_file}: item {name} has neither condition_images nor a prompt")
    if image_path is not None:
        read_image(image_path)
    size_request = replace(item_request, height=request.height or _multiple(overrides.get("height"), item_request),
                           width=request.width or _multiple(overrides.get("width"), item_request))
    height, width = output_size(image_path, size_request, native)
    return Item(name, prompt, image_path, height, width, item_request)


def fill_placeholders(prompt: str, entry: dict, where: str) -> str:
    """`{key}` in a task prompt replaced by the item's `key` (upstream's `generate_prompts`, e.g. {eye_blinks_factor});
    only plain names, so a prompt cannot reach attributes as str.format would."""
    def value(match: re.Match) -> str:
        key = match.group(1)
        if key not in entry or key == "prompt":
            raise BadInput(f"{where}: the prompt's placeholder {{{key}}} has no value in the item")
        return str(entry[key])

    return re.sub(r"\{(\w+)\}", value, prompt)


def _multiple(pixels: int | None, request: AnimateRequest) -> int | None:
    """A task item's height/width times its img_length_ratio, floored to a multiple of 64 (upstream)."""
    if pixels is None:
        return None
    return max(SIZE_STEP, int(pixels * request.img_length_ratio // SIZE_STEP * SIZE_STEP))


def task_path(path: Path, task_file: Path, name: str) -> Path:
    for candidate in (path, task_file.parent / path):
        if candidate.is_file():
            return candidate
    raise BadInput(f"--task-file {task_file}: item {name}: image {path} not found",
                   hint="paths are relative to the working folder or to the task file's folder")


# --------------------------------------------------------------------------------------------------------------
# Conditions, sampling and decoding


def encode_image(vae, image: np.ndarray):
    """An RGB uint8 image -> its VAE latent mean x scaling factor, (1, C, 1, h, w) (upstream's condition latent)."""
    import torch

    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(vae.device, vae.dtype) / 127.5 - 1
    latent = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    return latent[:, :, None]


def image_conditions(models: AnimateModels, image: np.ndarray, condition):
    """IP-Adapter tokens [uncond (a zero embedding's projection), cond] and the ReferenceNet features of the
    condition latent at timestep 0 under those tokens (None, None for the plain musev variant)."""
    import torch

    if models.referencenet is None:
        return None, None
    pixels = models.image_processor(images=image, return_tensors="pt").pixel_values.to(models.device, models.dtype)
    embeds = models.image_encoder(pixels).image_embeds
    ip_tokens = models.image_projection(torch.cat([torch.zeros_like(embeds), embeds]))
    reference = models.referencenet(condition[:, :, 0].repeat(2, 1, 1, 1), ip_tokens, timestep=0)
    return ip_tokens, reference


def video_fusion_noise(shape: tuple[int, ...], condition, request: AnimateRequest, generator):
    """Upstream's initial noise: sqrt(1 - w) x one noise shared by all frames + sqrt(w) x per-frame noise
    (w = --w-ind-noise), then sqrt(img_weight) x the condition latent's mean over frames mixed in."""
    import torch

    batch, channels, frames, height, width = shape
    common = torch.randn((batch, channels, 1, height, width), generator=generator)
    independent = torch.randn(shape, generator=generator)
    noise = math.sqrt(1 - request.w_ind_noise) * common + math.sqrt(request.w_ind_noise) * independent
    mean = condition.float().mean(dim=2, keepdim=True).cpu()
    return math.sqrt(request.img_weight) * mean + math.sqrt(1 - request.img_weight) * noise


def sample_shot(models: AnimateModels, condition, text, ip_tokens, reference, control, request: AnimateRequest,
                steps: int, generator, advance=None):
    """One shot of `time_size` frames after `condition`: Euler (diffusers, on the base model's scheduler config) with
    CFG over overlapping windows, each led by the clean condition latent; `control`: the pose frames (1, 3, 1 + T,
    H, W) of the condition frame and the shot's frames, or None."""
    import torch

    from avtool.models.musev.denoiser import MuseVDenoiser
    from avtool.sampling import (
        CFGDenoiser,
        ParallelDenoiser,
        context_windows,
        load_scheduler,
        sample_discrete,
        scale_initial_noise,
    )

    scheduler = load_scheduler("euler", models.scheduler_config)
    scheduler.set_timesteps(steps)
    shape = (1, condition.shape[1], request.time_size, *condition.shape[-2:])
    x = scale_initial_noise(video_fusion_noise(shape, condition, request, generator), scheduler)
    model = MuseVDenoiser(models.unet, condition.shape[2], request.motion_speed, request.ip_scale,
                          controlnet=models.controlnet)
    model.set_reference(reference)
    windows = context_windows(request.time_size, request.context_frames, request.context_overlap)
    denoise = ParallelDenoiser(CFGDenoiser(model, request.guidance), windows, condition, request.context_batch_size,
                               frame_args=("control_images",))
    extra = {"text": text, "ip_tokens": ip_tokens, "control_images": control}
    extra = {name: value for name, value in extra.items() if value is not None}
    with torch.inference_mode():
        return sample_discrete(denoise, x.to(models.device, models.dtype), scheduler, extra_args=extra, callback=advance)


def first_frame_latent(models: AnimateModels, text, item: Item, request: AnimateRequest, generator, control,
                       quiet: bool):
    """Without an image: the first frame generated by the same UNet with its temporal layers off (upstream:
    `skip_temporal_layer`, 30 steps, guidance 7.5; with a pose video, under the ControlNet on its first pose frame),
    as the condition latent (1, C, 1, h, w)."""
    import torch

    from avtool.models.musev.denoiser import MuseVDenoiser
    from avtool.sampling import CFGDenoiser, load_scheduler, sample_discrete, scale_initial_noise

    scheduler = load_scheduler("euler", models.scheduler_config)
    scheduler.set_timesteps(request.first_frame_steps)
    shape = (1, models.vae.config.latent_channels, 1, item.height // 8, item.width // 8)
    x = scale_initial_noise(torch.randn(shape, generator=generator), scheduler).to(models.device, models.dtype)
    model = MuseVDenoiser(models.unet, 0, request.motion_speed, skip_temporal=True, controlnet=models.controlnet)
    extra = {"text": text} if control is None else {"text": text, "control_images": control}
    with progress(quiet) as bar:
        task = bar.add_task("first frame", total=request.first_frame_steps)
        return sample_discrete(CFGDenoiser(model, request.first_frame_guidance), x, scheduler, extra_args=extra,
                               callback=None if bar.disable else lambda state: bar.advance(task))


def pose_frames(request: AnimateRequest, pose: VideoStreamInfo, item: Item, first: int, count: int):
    """Pose frames first .. first + count - 1, centre-cropped and resized to the video's size, as the ControlNet's
    images (1, 3, count, H, W) in [0, 1]."""
    import torch

    frames = np.concatenate(list(frames_at(request.pose_video, range(first, first + count), video=pose)))
    resized = np.stack([crop_resize(frame, item.height, item.width) for frame in frames])
    return torch.from_numpy(resized).permute(3, 0, 1, 2)[None].float() / 255


def decode_latents(vae, latents) -> np.ndarray:
    """(1, C, T, h, w) latents -> uint8 frames (T, H, W, 3), rounded."""
    import torch

    frames = latents[0].transpose(0, 1) / vae.config.scaling_factor
    with torch.inference_mode():
        pixels = vae.decode(frames.to(vae.dtype), return_dict=False)[0]
    return ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def video_frames(vae, first, shots: list, batch_size: int) -> Iterator[np.ndarray]:
    """The condition frame, then every shot's frames (each shot's condition is the frame before it, not repeated),
    decoded `batch_size` at a time: decode memory does not grow with the video's length."""
    import torch

    latents = torch.cat([first.to(shots[0]), *shots], dim=2)
    for start in range(0, latents.shape[2], batch_size):
        yield decode_latents(vae, latents[:, :, start:start + batch_size])

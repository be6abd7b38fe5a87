"""The `avtool` command line: one thin function per subcommand.

Each function parses and validates its options, builds a request, calls a pipeline and prints the
result. Heavy libraries (torch, diffusers, transformers, librosa, cv2, decord) are imported only inside
the functions that run a job, so `avtool --help` and option errors answer at once.

Options every command shares are declared once below and added by the `command` decorator:
`--json/-q/--debug` everywhere, plus the generation options for dance, score, animate and tokens.
"""

import functools
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Optional

import typer

from avtool import __version__
from avtool.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, AvtoolError, Interrupted, stop_on_signals
from avtool.pipelines.common import GenerationOptions

app = typer.Typer(
    name="avtool",
    help="Audio<->video generation: music to dance, video to music, long human video, audio to video, alignment metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _option(annotation, default, *flags: str, help: str, **kwargs) -> inspect.Parameter:
    name = flags[0].lstrip("-").replace("-", "_")
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, typer.Option(*flags, help=help, **kwargs)],
    )


_OUTPUT_OPTIONS = [
    _option(bool, False, "--json", help="Print one JSON object per result on stdout (human output stays on stderr)."),
    _option(bool, False, "--quiet", "-q", help="No progress bars or messages."),
    _option(bool, False, "--debug", help="Show the full traceback of an error."),
]

_GENERATION_OPTIONS = [
    _option(Optional[str], None, "--output", "-o", help="Output file (only for a single job); a name ending in / is a folder, as --output-dir.", show_default=False),
    _option(Path, Path("outputs"), "--output-dir", help="Folder for outputs.", file_okay=False),
    _option(Optional[list[int]], None, "--seed", help="Random seed; repeat for several. None: one is drawn and recorded."),
    _option(Optional[int], None, "--steps", help="Sampling steps (default and smallest: the model's; at most 1000).", show_default=False),
    _option(Path, Path("weights"), "--weights-dir", help="Weights folder.", envvar="AVTOOL_WEIGHTS"),
    _option(str, "auto", "--device", help="auto, cpu, cuda or cuda:N."),
    _option(str, "auto", "--dtype", help="auto, fp32, bf16 or fp16 (auto: bf16 on CUDA, fp32 on CPU)."),
    _option(str, "cpu", "--generator", help="Where the initial noise is drawn: cpu (a seed gives the same output on any device) or device (as upstream draws it on CUDA)."),
    _option(bool, False, "--skip-existing", help="Skip jobs whose output is complete (output and sidecar); redo the rest (for cron re-runs)."),
    _option(bool, False, "--overwrite", help="Replace outputs that exist (never an input)."),
    _option(bool, False, "--keep-going", help="After a failed job, report it and run the next; exit with the first failure's code."),
    _option(Optional[str], None, "--shard", help="K/N: run only this process's share of the jobs (K from 1). Default: from torchrun/Slurm's RANK and WORLD_SIZE.", show_default=False),
]


def command(name: str, generation: bool = False) -> Callable:
    """Register `fn` as subcommand `name`, add the shared options and turn errors into exit codes.

    `fn` receives `json`, `quiet` (and `common: GenerationOptions` when `generation`) as keyword arguments.
    """

    def register(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        own = [p for p in signature.parameters.values() if p.name not in ("common", "json", "quiet")]
        shared = _OUTPUT_OPTIONS + (_GENERATION_OPTIONS if generation else [])

        @functools.wraps(fn)
        def run(**kwargs) -> None:
            debug = kwargs.pop("debug")
            if generation:
                output, output_dir = _output_option(kwargs.pop("output"), kwargs.pop("output_dir"))
                kwargs["common"] = GenerationOptions(
                    output=output,
                    output_dir=output_dir,
                    seeds=kwargs.pop("seed") or [],
                    steps=kwargs.pop("steps"),
                    weights_dir=kwargs.pop("weights_dir"),
                    device=kwargs.pop("device"),
                    dtype=kwargs.pop("dtype"),
                    generator=kwargs.pop("generator"),
                    skip_existing=kwargs.pop("skip_existing"),
                    overwrite=kwargs.pop("overwrite"),
                    keep_going=kwargs.pop("keep_going"),
                    shard=kwargs.pop("shard"),
                    quiet=kwargs["quiet"],
                )
            stop_on_signals()
            try:
                fn(**kwargs)
            except AvtoolError as e:
                _fail(e.message, e.hint, e.exit_code, debug)
            except Interrupted as e:
                _fail(f"interrupted ({e})", None, e.exit_code, debug)
            except KeyboardInterrupt:
                _fail("interrupted (SIGINT)", None, EXIT_INTERRUPTED, debug)
            except Exception as e:  # anything else is our bug: say so in one line unless --debug
                _fail(f"internal error: {type(e).__name__}: {e}", "run again with --debug for the traceback", EXIT_INTERNAL, debug)

        run.__signature__ = signature.replace(parameters=own + shared)
        run.__annotations__ = {p.name: p.annotation for p in own + shared}
        app.command(name)(run)
        return fn

    return register


def _output_option(output: Optional[str], output_dir: Path) -> tuple[Optional[Path], Path]:
    """-o FILE, or -o FOLDER/ (a trailing slash, or an existing folder) meaning --output-dir FOLDER."""
    if output is None:
        return None, output_dir
    if output.endswith(("/", os.sep)) or Path(output).is_dir():
        return None, Path(output)
    return Path(output), output_dir


def _fail(message: str, hint: Optional[str], code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    _print_error(message, hint)
    raise typer.Exit(code)


def _print_error(message: str, hint: Optional[str]) -> None:
    from avtool.ui import print_error

    print_error(message, hint)


def _report(results: Iterable[dict], json: bool) -> None:
    """Print each job's result as it comes (one JSON object per line with --json); a failed job's error line always."""
    from avtool.ui import print_json

    for result in results:
        if "error" in result:
            _print_error(f"{result['output']}: {result['error']}", result["hint"])
        if json:
            print_json(result)


def _version(value: bool) -> None:
    if value:
        print(f"avtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """avtool: music to dance video, video to music, long human video, audio to video, and alignment metrics."""


Inputs = Annotated[Optional[list[Path]], typer.Argument(help="Input files.", show_default=False)]


@command("probe")
def probe_(
    inputs: Annotated[list[Path], typer.Argument(help="Media files.", show_default=False)],
    require: Annotated[Optional[list[str]], typer.Option("--require", help="Fail (exit 2) unless each file has this track: audio or video.")] = None,
    *,
    json: bool,
    quiet: bool,
) -> None:
    """Describe media files: duration, audio stream, video stream (no ffprobe needed).

    Every file is described; a bad one gets its error line (and `"error"` in JSON), and the exit code is the
    first failure's.
    """
    from dataclasses import asdict

    from avtool.errors import AvtoolError, BadInput
    from avtool.media import probe
    from avtool.pipelines.common import JobsFailed
    from avtool.ui import print_json, say

    unknown = set(require or []) - {"audio", "video"}
    if unknown:
        raise BadInput(f"--require {unknown.pop()}: expected audio or video")
    failures: list[AvtoolError] = []
    for path in inputs:
        try:
            info = probe(path)
            if "audio" in (require or []):
                info.require_audio()
            if "video" in (require or []):
                info.require_video()
        except AvtoolError as error:
            if len(inputs) == 1:
                raise
            failures.append(error)
            _print_error(error.message, error.hint)
            if json:
                print_json({"path": str(path), "error": error.message, "exit_code": error.exit_code})
            continue
        if json:
            print_json(asdict(info))
        else:
            say(_describe_media(info))
    if failures:
        raise JobsFailed(len(failures), len(inputs), failures[0], "files")


def _describe_media(info) -> str:
    audio = (f"audio {info.audio.sample_rate} Hz, {info.audio.channels} ch, {info.audio.duration:.2f} s"
             + (f" from {info.audio.start:.2f} s" if info.audio.start else "")) if info.audio else "no audio"
    video = (f"video {info.video.width}x{info.video.height}, {info.video.fps:g} fps, {info.video.num_frames} frames"
             if info.video else "no video")
    duration = f"{info.duration:.2f} s" if info.duration is not None else "unknown length"
    return f"{info.path}: {duration}; {audio}; {video}"


@command("download-weights")
def download_weights(
    models: Annotated[Optional[list[str]], typer.Argument(help="Model ids; none: list the models and what is present.", show_default=False)] = None,
    weights_dir: Annotated[Optional[Path], typer.Option("--dir", "--weights-dir", help="Weights folder (default: $AVTOOL_WEIGHTS or ./weights; with --tiny, its tiny/ subfolder).", file_okay=False, show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be fetched; change nothing.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Re-hash files against each folder's manifest and report changed or missing ones; download nothing.")] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Hub revision (branch, tag or commit) of the model's own repository instead of the registry's.")] = None,
    variant: Annotated[Optional[str], typer.Option("--variant", help="Weight variant where a repository offers one (mochi-1-preview: bf16).")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Write small seeded random checkpoints in the real layouts (nothing downloads).")] = False,
    *,
    json: bool,
    quiet: bool,
) -> None:
    """Fetch, verify and lay out model weights (--tiny writes small random checkpoints)."""
    from avtool.pipelines.weights import WeightsRequest, raise_problems, summary_lines
    from avtool.pipelines.weights import download_weights as run_download
    from avtool.ui import print_json, say

    request = WeightsRequest(models or [], weights_dir, dry_run, verify, revision, variant, tiny)
    result = run_download(request, echo=lambda message: say(message, quiet), quiet=quiet)
    if json:
        print_json(result)
    else:
        for line in summary_lines(request, result, quiet):
            say(line)
    raise_problems(result)


@command("preprocess")
def preprocess(
    kind: Annotated[str, typer.Argument(help="What to prepare: dance (MusicInfuser), tokens (TempoTokens) or d2m (Dance2Music-Diffusion).", show_default=False)],
    videos: Annotated[Path, typer.Argument(help="Folder of videos (subfolders too); a <stem>.txt beside a video is its caption. d2m: a folder of AIST++ motion .pkl (or (frames, 219) .npy) and their music.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the clips and their cached features.", file_okay=False, show_default=False)],
    num_frames: Annotated[Optional[int], typer.Option("--num-frames", help="Frames per clip. dance: 6k+1 at 30 fps (default 73: 2.5 s clips, as upstream); tokens: default 24; d2m: motion frames per window at 60 fps (default 356, the model's).", show_default=False)] = None,
    weights_dir: Annotated[Path, typer.Option("--weights-dir", help="Weights folder (dance: mochi-1-preview and musicinfuser's wav2vec2; tokens: tempotokens; d2m: d2m's autoencoder).", envvar="AVTOOL_WEIGHTS")] = Path("weights"),
    crop: Annotated[str, typer.Option("--crop", help="dance: random: --clips-per-minute seeded segments per minute of video (upstream); center: one from the middle.")] = "random",
    clips_per_minute: Annotated[float, typer.Option("--clips-per-minute", help="dance: random segments per minute of video.")] = 5.0,
    fps: Annotated[Optional[float], typer.Option("--fps", help="tokens: every round(video fps / FPS)-th frame; the audio window is num-frames / FPS seconds (default 24: 1 s).", show_default=False)] = None,
    height: Annotated[Optional[int], typer.Option("--height", help="tokens: frame height, a multiple of 8 (default: 384, or the weights' own size).", show_default=False)] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="tokens: frame width, a multiple of 8 (default: 384, or the weights' own size).", show_default=False)] = None,
    caption: Annotated[Optional[str], typer.Option("--caption", help="Caption for videos without a <stem>.txt (dance: \"a dance video\"; tokens: the six audio tokens).", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the random segments and samples (dance, tokens; default: drawn and reported).", show_default=False)] = None,
    windows: Annotated[Optional[int], typer.Option("--windows", help="d2m: consecutive windows per motion from its start (default 1, as upstream: its first 5.93 s).", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="The VAE's: auto, fp32, bf16 or fp16 (the audio and text models run in fp32).")] = "auto",
    *,
    json: bool,
    quiet: bool,
) -> None:
    """Turn a folder of videos into training clips and cached features: dance (MusicInfuser, upstream's
    preprocess.bash) or tokens (TempoTokens: one upstream training window per video, VAE latents and BEATs features);
    d2m turns AIST++ motions and their music into motion windows and the music's dmae1d-ATC32-v3 latents.

    Resumable: a re-run skips the clips already complete. A video that gives no clip is reported with its reason and
    the run goes on.
    """
    from avtool.errors import BadInput
    from avtool.pipelines.common import check_choice
    from avtool.pipelines.preprocess import (
        D2MPreprocessOptions,
        DancePreprocessOptions,
        TokensPreprocessOptions,
        preprocess_d2m,
        preprocess_dance,
        preprocess_tokens,
    )
    from avtool.ui import print_json, say

    check_choice("preprocess KIND", kind, ("dance", "tokens", "d2m"))
    if windows is not None and kind != "d2m":
        raise BadInput("--windows: only for `avtool preprocess d2m`")
    if kind == "d2m":
        for name, value in (("--fps", fps), ("--height", height), ("--width", width), ("--caption", caption),
                            ("--dtype", None if dtype == "auto" else dtype)):
            if value is not None:
                raise BadInput(f"{name}: not for `avtool preprocess d2m` (motion at 60 fps, music at 44.1 kHz, the autoencoder in fp32)")
        options = D2MPreprocessOptions(windows=1 if windows is None else windows, motion_frames=356 if num_frames is None else num_frames,
                                       seed=seed, device=device)
        summary = preprocess_d2m(videos, output, options, weights_dir, quiet)
    elif kind == "dance":
        for name, value in (("--fps", fps), ("--height", height), ("--width", width)):
            if value is not None:
                raise BadInput(f"{name}: only for `avtool preprocess tokens`", hint="dance clips take the Mochi size and 30 fps")
        options = DancePreprocessOptions(num_frames=73 if num_frames is None else num_frames, crop=crop, clips_per_minute=clips_per_minute,
                                         caption=caption, seed=seed, device=device, dtype=dtype)
        summary = preprocess_dance(videos, output, options, weights_dir, quiet)
    else:
        options = TokensPreprocessOptions(num_frames=24 if num_frames is None else num_frames,
                                          fps=24.0 if fps is None else fps, height=height, width=width,
                                          caption=caption, seed=seed, device=device, dtype=dtype)
        summary = preprocess_tokens(videos, output, options, weights_dir, quiet)
    for rejection in summary.rejected:
        say(f"rejected {rejection.path}: {rejection.reason}", quiet)
    say(f"{output}: {len(summary.written)} clip(s) written, {len(summary.skipped)} already complete, "
        f"{len(summary.rejected)} rejected (seed {summary.seed})", quiet)
    if json:
        print_json(summary.to_dict())
    if not summary.written and not summary.skipped:
        raise BadInput(f"{videos}: no {'motion' if kind == 'd2m' else 'video'} gave a clip", hint="see the rejections above")


@command("dance", generation=True)
def dance(
    inputs: Inputs = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Text prompt (default: MusicInfuser's K-pop dancer prompt).", show_default=False)] = None,
    num_frames: Annotated[int, typer.Option("--num-frames", help="Frames to generate: 6k+1 from 7 to 997 (7, 13, ..., 145).")] = 145,
    cfg_scale: Annotated[float, typer.Option("--cfg-scale", help="Text classifier-free guidance scale, 0 to 100.")] = 6.0,
    fps: Annotated[float, typer.Option("--fps", help="Frame rate of the written video, 1 to 240.")] = 30.0,
    height: Annotated[Optional[int], typer.Option("--height", help="Height in pixels, a multiple of 16 from 16 to 4096 (default: from the weights' config).", show_default=False)] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Width in pixels, a multiple of 16 from 16 to 4096 (default: from the weights' config).", show_default=False)] = None,
    start: Annotated[Optional[float], typer.Option("--start", help="Excerpt start in seconds into the file, within its audio (default: drawn from the seed).", show_default=False)] = None,
    runner: Annotated[str, typer.Option("--runner", help="Denoiser step runner: auto (cuda-graph on CUDA, eager on CPU), eager, compile or cuda-graph.")] = "auto",
    tiling: Annotated[bool, typer.Option("--tiling", help="Decode with spatial VAE tiles (bounded memory).")] = False,
    *,
    json: bool,
    quiet: bool,
    common: GenerationOptions,
) -> None:
    """Music (mp3/wav/flac/m4a/mp4/mov) to a dance video with the music's excerpt muxed in (MusicInfuser)."""
    from avtool.errors import BadInput
    from avtool.pipelines.dance import DEFAULT_PROMPT, DanceRequest
    from avtool.pipelines.dance import dance as run_dance

    if not inputs:
        raise BadInput("no input: give one or more music files (mp3, wav, flac, m4a, mp4, mov)")
    request = DanceRequest(prompt=DEFAULT_PROMPT if prompt is None else prompt, num_frames=num_frames, cfg_scale=cfg_scale,
                           fps=fps, height=height, width=width, start=start, runner=runner, tiling=tiling)
    _report(run_dance(inputs, request, common), json)


@command("score", generation=True)
def score(
    inputs: Inputs = None,
    model: Annotated[str, typer.Option("--model", help="Backend: vidmuse (videos in) or d2m (Dance2Music-Diffusion: AIST++ motion .pkl/.npy in).")] = "vidmuse",
    duration: Annotated[Optional[float], typer.Option("--duration", help="Seconds of music, at least 1 (default: the video's length floored to whole seconds; d2m: the motion's).", show_default=False)] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="vidmuse: sample among the k likeliest tokens, 0 (off) to 2048.  [default: 250]", show_default=False)] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="vidmuse: nucleus sampling, 0 (off) to 1; replaces --top-k when set.  [default: 0]", show_default=False)] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="vidmuse: sampling temperature, 0 (greedy) to 10.  [default: 1]", show_default=False)] = None,
    cfg_scale: Annotated[Optional[float], typer.Option("--cfg-scale", help="Classifier-free guidance, 0 to 100: vidmuse against a black video (default 3), d2m against its learned null motion (default 9, upstream's embedding_scale).", show_default=False)] = None,
    runner: Annotated[Optional[str], typer.Option("--runner", help="vidmuse token step runner: auto (cuda-graph on CUDA, eager on CPU), eager, compile or cuda-graph.  [default: auto]", show_default=False)] = None,
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="d2m: a trained D2M folder (`avtool train configs/d2m.yaml` writes one; default: <weights-dir>/d2m).", file_okay=False, show_default=False)] = None,
    video: Annotated[Optional[Path], typer.Option("--video", help="d2m: the dance's video; the music is also muxed into a copy of it (<stem>_scored.mp4).", dir_okay=False, show_default=False)] = None,
    decode_steps: Annotated[Optional[int], typer.Option("--decode-steps", help="d2m: steps of the autoencoder's diffusion decoder, 1 to 1000.  [default: 50]", show_default=False)] = None,
    *,
    json: bool,
    quiet: bool,
    common: GenerationOptions,
) -> None:
    """Music for a video (VidMuse), or for a dance's motion (--model d2m, Dance2Music-Diffusion).

    vidmuse: <stem>_scored.wav and <stem>_scored.mp4 with the video stream copied. Videos longer than 30 s are
    scored in windows of 30 s that carry the last 0.5 s over, each conditioned on its own span's frames.

    d2m: AIST++ motion files (.pkl with smpl_poses/smpl_trans/smpl_scaling, or (frames, 219) .npy, 60 fps) ->
    <stem>_scored.wav (44.1 kHz stereo); --steps (default 50) sets the latent sampler's steps. Motion longer than
    one 5.94 s window is scored in overlapping windows. D2M publishes no weights: train them with
    `avtool preprocess d2m` and `avtool train configs/d2m.yaml`.
    """
    from avtool.errors import BadInput

    if not inputs:
        raise BadInput("no input: give one or more videos (--model d2m: motion files), or folders of them")
    from avtool.pipelines.common import check_choice

    check_choice("--model", model, ("vidmuse", "d2m"))
    vidmuse_only = {"--top-k": top_k, "--top-p": top_p, "--temperature": temperature, "--runner": runner}
    d2m_only = {"--checkpoint": checkpoint, "--video": video, "--decode-steps": decode_steps}
    if model == "d2m":
        from avtool.pipelines.d2m import D2MRequest, score_d2m

        given = next((name for name, value in vidmuse_only.items() if value is not None), None)
        if given:
            raise BadInput(f"{given}: only for --model vidmuse (d2m samples latents by diffusion)")
        request = D2MRequest(checkpoint=checkpoint, video=video, duration=duration, **_given(cfg_scale=cfg_scale, decode_steps=decode_steps))
        _report(score_d2m(inputs, request, common), json)
        return
    from avtool.pipelines.score import ScoreRequest
    from avtool.pipelines.score import score as run_score

    given = next((name for name, value in d2m_only.items() if value is not None), None)
    if given:
        raise BadInput(f"{given}: only for --model d2m")
    request = ScoreRequest(model=model, duration=duration, **_given(top_k=top_k, top_p=top_p, temperature=temperature,
                                                                   cfg_scale=cfg_scale, runner=runner))
    _report(run_score(inputs, request, common), json)


def _given(**options: object) -> dict[str, object]:
    """The options the user gave (not None): the rest keep the request's defaults."""
    return {name: value for name, value in options.items() if value is not None}


@command("animate", generation=True)
def animate(
    image: Annotated[Optional[Path], typer.Option("--image", help="The first frame (the condition image); without it the first frame is generated from --prompt.", dir_okay=False, show_default=False)] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Text prompt; A1111 weights such as (eye blinks:1.8) work as in MuseV.", show_default=False)] = None,
    negative_prompt: Annotated[str, typer.Option("--negative-prompt", help="A MuseV negative prompt name (Empty, V1-V5) or text.")] = "V2",
    variant: Annotated[Optional[str], typer.Option("--variant", help="musev, musev_referencenet (ReferenceNet + IP-Adapter from the image) or musev_referencenet_pose (default: musev_referencenet_pose with --pose-video, else musev_referencenet).", show_default=False)] = None,
    pose_video: Annotated[Optional[Path], typer.Option("--pose-video", help="A pose video (rendered openpose skeletons, as upstream's video_is_middle) whose frames drive an openpose ControlNet, one per video frame; needs 1 + n_batch x time_size frames.", dir_okay=False, show_default=False)] = None,
    time_size: Annotated[int, typer.Option("--time-size", help="Frames per shot after the first frame (the video has 1 + n_batch x time_size frames).")] = 12,
    n_batch: Annotated[int, typer.Option("--n-batch", help="Shots in a row, each starting from the previous one's last frame.")] = 1,
    first_frame_steps: Annotated[int, typer.Option("--first-frame-steps", help="Steps for a generated first frame.")] = 30,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance of the video, 0 to 100.")] = 3.5,
    first_frame_guidance: Annotated[float, typer.Option("--first-frame-guidance", help="Guidance of a generated first frame.")] = 7.5,
    fps: Annotated[float, typer.Option("--fps", help="Frame rate of the video (upstream's code says 4, its README runs use 12).")] = 12.0,
    height: Annotated[Optional[int], typer.Option("--height", help="Height, a multiple of 64 (default: the image's x --img-length-ratio; tiny weights: their own).", show_default=False)] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Width, a multiple of 64 (default: the image's x --img-length-ratio; tiny weights: their own).", show_default=False)] = None,
    img_length_ratio: Annotated[float, typer.Option("--img-length-ratio", help="Scale of the image's size for the video's, floored to multiples of 64.")] = 1.0,
    context_frames: Annotated[int, typer.Option("--context-frames", help="Frames per denoising window.")] = 12,
    context_overlap: Annotated[int, typer.Option("--context-overlap", help="Frames shared by neighbouring windows (averaged).")] = 4,
    context_batch_size: Annotated[int, typer.Option("--context-batch-size", help="Windows per UNet call (memory grows with it, not with the video's length).")] = 1,
    motion_speed: Annotated[Optional[float], typer.Option("--motion-speed", help="Frame-index multiplier, the training sample rate; higher: faster motion (default: 8, with --pose-video 1, as upstream's scripts).", show_default=False)] = None,
    w_ind_noise: Annotated[float, typer.Option("--w-ind-noise", help="Share of per-frame noise in the video-fusion initial noise (the rest is shared by all frames).")] = 0.5,
    img_weight: Annotated[float, typer.Option("--img-weight", help="Share of the first frame's latent in the initial noise.")] = 1e-3,
    ip_scale: Annotated[float, typer.Option("--ip-scale", help="IP-Adapter image-prompt scale (referencenet variants).")] = 1.0,
    vae_batch_size: Annotated[int, typer.Option("--vae-batch-size", help="Frames per VAE decode.")] = 8,
    task_file: Annotated[Optional[Path], typer.Option("--task-file", help="A MuseV task file (configs/tasks/example.yaml format): one video per item.", dir_okay=False, show_default=False)] = None,
    target: Annotated[Optional[list[str]], typer.Option("--target", help="Only this task-file item (by name); repeat for several.", show_default=False)] = None,
    *,
    json: bool,
    quiet: bool,
    common: GenerationOptions,
) -> None:
    """Image and/or text to a long video (MuseV), by visual-conditioned parallel denoising.

    `avtool animate --image face.png --prompt "(1girl, solo:1), (eye blinks:1.8)" --time-size 48` makes a 49-frame
    video that starts from the image. Defaults are upstream's: 10 Euler steps, guidance 3.5, windows of 12 frames
    overlapping by 4, video-fusion noise, the V2 negative prompt.
    """
    from avtool.pipelines.animate import AnimateRequest
    from avtool.pipelines.animate import animate as run_animate

    request = AnimateRequest(image=image, prompt=prompt, negative_prompt=negative_prompt, variant=variant, pose_video=pose_video,
                             time_size=time_size, n_batch=n_batch, first_frame_steps=first_frame_steps, guidance=guidance,
                             first_frame_guidance=first_frame_guidance, fps=fps, height=height, width=width,
                             img_length_ratio=img_length_ratio, context_frames=context_frames,
                             context_overlap=context_overlap, context_batch_size=context_batch_size,
                             motion_speed=motion_speed, w_ind_noise=w_ind_noise, img_weight=img_weight, ip_scale=ip_scale,
                             vae_batch_size=vae_batch_size, task_file=task_file, targets=tuple(target or ()))
    _report(run_animate(request, common), json)


@command("tokens", generation=True)
def tokens(
    inputs: Inputs = None,
    mapper: Annotated[str, typer.Option("--mapper", help="Audio mapper: vggsound, landscape or audioset_drum (weights/tempotokens/<name>/), or a mapper .pth file.")] = "vggsound",
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Text around the audio tokens, e.g. \"a drummer on stage\"; the tokens are appended unless the text places <temp> ... <class> itself (default: the audio tokens alone).", show_default=False)] = None,
    negative_prompt: Annotated[str, typer.Option("--negative-prompt", help="What guidance steers away from (default: the empty prompt, as upstream).")] = "",
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale, 0 to 100 (1: no guidance).")] = 25.0,
    num_frames: Annotated[Optional[int], typer.Option("--num-frames", help="Frames to generate (default: --duration x --fps, else 24).", show_default=False)] = None,
    fps: Annotated[float, typer.Option("--fps", help="Frame rate of the video, 1 to 240.")] = 12.0,
    height: Annotated[Optional[int], typer.Option("--height", help="Height in pixels, a multiple of 8 (default: 384; tiny weights: their own).", show_default=False)] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Width in pixels, a multiple of 8 (default: 384; tiny weights: their own).", show_default=False)] = None,
    start: Annotated[float, typer.Option("--start", help="Start of the audio window, in seconds into the audio.")] = 0.0,
    duration: Annotated[Optional[float], typer.Option("--duration", help="Seconds of audio that drive the video (default: --num-frames / --fps, 2 s).", show_default=False)] = None,
    window_size: Annotated[Optional[int], typer.Option("--window-size", help="Frames denoised at once; smaller than --num-frames (and dividing it) denoises long videos in round-robin windows.", show_default=False)] = None,
    vae_batch_size: Annotated[int, typer.Option("--vae-batch-size", help="Frames per VAE decode (memory vs speed).")] = 8,
    pool_dropout: Annotated[float, typer.Option("--pool-dropout", help="Dropout in the mapper's class-token pooling. Upstream keeps 0.5 on at inference, so a seed does not fix its videos; 0 (default) makes the seed decide everything.")] = 0.0,
    runner: Annotated[str, typer.Option("--runner", help="Denoiser step runner: auto (cuda-graph on CUDA, eager on CPU), eager, compile or cuda-graph.")] = "auto",
    *,
    json: bool,
    quiet: bool,
    common: GenerationOptions,
) -> None:
    """Audio (and optional text) to video through per-frame audio tokens (TempoTokens on zeroscope).

    Inputs are audio files (or videos with sound), or folders of them. Writes <stem>_tokens.mp4 with the audio window
    muxed in. Defaults are upstream's: 24 frames at 12 fps from the first 2 s, 25 DPM-Solver++ steps, guidance 25.
    """
    from avtool.errors import BadInput
    from avtool.pipelines.tokens import TokensRequest
    from avtool.pipelines.tokens import tokens as run_tokens

    if not inputs:
        raise BadInput("no input: give one or more audio files (wav, mp3, flac, m4a, or a video with sound), or folders of them")
    request = TokensRequest(mapper=mapper, prompt=prompt, negative_prompt=negative_prompt, guidance=guidance,
                            num_frames=num_frames, fps=fps, height=height, width=width, start=start, duration=duration,
                            window_size=window_size, vae_batch_size=vae_batch_size, pool_dropout=pool_dropout, runner=runner)
    _report(run_tokens(inputs, request, common), json)


@command("train")
def train(
    config: Annotated[Optional[Path], typer.Argument(help="Training config (upstream's keys): configs/music_infuser.yaml, configs/tempotokens/*.yaml or configs/d2m.yaml.", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's latest checkpoint.")] = False,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many steps in all (the schedule still spans the config's num_steps).", show_default=False)] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Folder for checkpoints, metrics and the result (default: the config's checkpoint_dir, TempoTokens: output_dir).", file_okay=False, show_default=False)] = None,
    weights_dir: Annotated[Path, typer.Option("--weights-dir", help="Weights folder (the frozen base models).", envvar="AVTOOL_WEIGHTS")] = Path("weights"),
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK).")] = "auto",
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Instead of training, draw RUN_DIR's loss curve to RUN_DIR/loss.png.", file_okay=False, show_default=False)] = None,
    *,
    json: bool,
    quiet: bool,
) -> None:
    """Train from a config: MusicInfuser's audio adapter, TempoTokens' mapper or Dance2Music-Diffusion; one process or
    many under torchrun; resumable.

    `python -m torch.distributed.run --nproc-per-node N -m avtool train CONFIG` trains on N processes (gloo on CPU,
    NCCL on GPUs); `bash/run.bash -c CONFIG -n N` does the same.
    """
    from avtool.errors import BadInput
    from avtool.pipelines.train import TrainRequest
    from avtool.pipelines.train import plot as plot_run
    from avtool.pipelines.train import train as run_train
    from avtool.ui import print_json, say

    if plot is not None:
        png = plot_run(plot, None)
        say(f"wrote {png}", quiet)
        if json:
            print_json({"plot": str(png)})
        return
    if config is None:
        raise BadInput("no config: give a training config file", hint="e.g. avtool train configs/music_infuser.yaml")
    result = run_train(TrainRequest(config=config, run_dir=run_dir, resume=resume, max_steps=max_steps,
                                    weights_dir=weights_dir, device=device, quiet=quiet))
    say(f"{result['run_dir']}: step {result['step']}, loss {result['loss']}", quiet)
    if json:
        print_json(result)


@command("eval")
def eval_(
    inputs: Annotated[list[Path], typer.Argument(help="Videos with their own audio track (or one video plus --audio).", show_default=False)],
    audio: Annotated[Optional[Path], typer.Option("--audio", help="Audio for the single input file (a .wav beside an .mp4, as AV-Align's folders hold).")] = None,
    metric: Annotated[Optional[list[str]], typer.Option("--metric", help="Metric to compute; repeat for several. `all`: every metric the inputs allow. Default: av-align.")] = None,
    reference_audio: Annotated[Optional[list[Path]], typer.Option("--reference-audio", help="Ground-truth music for beat-coverage/beat-hit(-d2m): one, or one per input file.")] = None,
    joints: Annotated[Optional[Path], typer.Option("--joints", help="(T, J, 3) joint positions .npy of the single input file's dance, for bas.")] = None,
    motion_fps: Annotated[float, typer.Option("--motion-fps", help="Frame rate of --joints, 1 to 1000.")] = 60.0,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="PNG of onset envelope, motion curve, peaks and matched pairs; with many files OUT_<stem>.png each.", dir_okay=False)] = None,
    *,
    json: bool,
    quiet: bool,
) -> None:
    """Audio-visual alignment metrics with plots; per-file rows and the mean.

    \b
    av-align           TempoTokens AV-Align, current code (flow peaks
                       >= 0.1, one-to-one matching)
    av-align-2023      its first version (no threshold, many-to-one;
                       can exceed 1)
    beat-coverage, beat-hit
                       Beats_Scores: onsets in 1-s bins vs --reference-audio
    beat-coverage-d2m, beat-hit-d2m
                       Dance2Music-Diffusion: beat_track, first 131073 samples
    bas                Beat Alignment Score, sigma 3 frames, Bailando (mean
                       over music beats) and FACT (mean over motion beats):
                       bas-bailando/bas-fact from --joints; for a plain video
                       bas-flow-bailando/bas-flow-fact from the optical-flow
                       curve, a weight-free PROXY, comparable only with itself.

    An undefined value (e.g. no peaks on either side) is null with a reason.
    """
    from avtool.pipelines.eval import EvalRequest, evaluate
    from avtool.ui import print_json, progress, say

    request = EvalRequest(files=inputs, metrics=metric or ["av-align"], audio=audio, reference_audio=reference_audio or [],
                          joints=joints, motion_fps=motion_fps, plot=plot)
    with progress(quiet) as bar:
        tasks: dict[str, int] = {}

        def on_progress(file: str, done: int, total: int) -> None:
            if file not in tasks:
                tasks[file] = bar.add_task(f"optical flow {Path(file).name}", total=total or None)
            bar.update(tasks[file], completed=done)

        result = evaluate(request, on_progress)
    for row in result["files"]:
        for warning in row["warnings"]:
            say(f"warning: {warning}", quiet)
    if json:
        print_json(result)
    else:
        _print_eval_table(result)
        for row in result["files"]:
            if "error" not in row:
                for name, reason in row.get("reasons", {}).items():
                    say(f"{row['file']}: {name} undefined: {reason}", quiet)
            if row["plot"]:
                say(f"plot: {row['plot']}", quiet)
    failed = [row for row in result["files"] if "error" in row]
    for row in failed:
        _print_error(row["error"], None)
    if failed:
        from avtool.errors import BadInput
        from avtool.pipelines.common import JobsFailed

        raise JobsFailed(len(failed), len(result["files"]), BadInput(failed[0]["error"]), "files")


def _print_eval_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    names = list(result["mean"])
    table = Table(box=None, pad_edge=False)
    for column in ["file", *names]:
        table.add_column(column, justify="left" if column == "file" else "right")

    def cell(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    for row in result["files"]:
        table.add_row(row["file"], *(cell(row["scores"].get(name)) for name in names))
    if len(result["files"]) > 1:
        table.add_row(f"mean of {len(result['files'])} files", *(cell(result["mean"][name]) for name in names))
    Console(highlight=False, soft_wrap=True).print(table)


def main() -> None:
    """Console-script entry point. Usage errors (unknown option or command, a value of the wrong type) print the
    same one-line `error:` + `hint:` as every other error, exit 2."""
    try:  # typer 0.29 carries its own copy of click
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = app(prog_name="avtool", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as error:
        print(error.ctx.get_help() if error.ctx else "", file=sys.stderr)
        code = 2
    except click_errors.UsageError as error:
        command = error.ctx.command_path if error.ctx else "avtool"
        _print_error(" ".join(error.format_message().split()), f"run: {command} --help")
        code = 2
    except (click_errors.ClickException, typer.Abort) as error:
        _print_error(str(error) or "interrupted (SIGINT)", None)
        code = getattr(error, "exit_code", EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)

"""`avtool eval`: media files → alignment metrics per file, their mean over files, and plots.

1. Plan: probe every input, decide where each file's audio comes from and which metrics it allows; an explicitly
   requested metric that a file cannot give is an error before any decoding (`--metric all`: what the inputs allow).
2. Per file: decode the audio at 22 050 Hz (onsets, beats), the video with cv2 (motion curve), the joints file;
   compute each metric once from these shared features. Several files run two at a time on one shared Farneback
   pool, so that one file's decoding and audio work overlap another's flows; rows keep the input order.
3. Mean over files of every value that is defined (a value is None, with a reason, where the metric is undefined:
   JSON never holds NaN).
4. Plot: one PNG per file with both curves, their peaks and the matched pairs of `av-align`, and its sidecar
   `<plot>.json` (command, versions, the file's row, timing).

Metric names and what they compute are documented in `avtool.analysis.av_align`, `.beats` and `.bas`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Executor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avtool.errors import BadInput
from avtool.media import ensure_output_dir, load_audio, probe
from avtool.pipelines.common import check_range

METRICS = ("av-align", "av-align-2023", "beat-coverage", "beat-hit", "beat-coverage-d2m", "beat-hit-d2m", "bas")
DEFAULT_METRICS = ("av-align",)
LENGTH_TOLERANCE = 1.0  # seconds between the audio's and the video's lengths before a warning
MIN_MOTION_FPS, MAX_MOTION_FPS = 1.0, 1000.0
VIDEO_METRICS = ("av-align", "av-align-2023")
REFERENCE_METRICS = ("beat-coverage", "beat-hit", "beat-coverage-d2m", "beat-hit-d2m")
FILES_IN_FLIGHT = 2  # enough for the next file's decoding and audio to fill the cores while one file's last flows finish


@dataclass(frozen=True)
class EvalRequest:
    files: list[Path]
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))  # names from METRICS, or ["all"]
    audio: Path | None = None  # audio for the single input file
    reference_audio: list[Path] = field(default_factory=list)  # one for all files' beat scores, or one per file
    joints: Path | None = None  # (T, J, 3) .npy for the single input file's BAS
    motion_fps: float = 60.0  # frame rate of `joints`
    plot: Path | None = None
    workers: int | None = None  # Farneback threads (default: usable cores)


@dataclass(frozen=True)
class EvalJob:
    """One input file, planned: where its audio comes from and the metrics to compute."""

    file: Path
    audio: Path
    metrics: list[str]
    num_frames: int  # 0 without a usable video track
    reference_audio: Path | None
    joints: Path | None
    plot: Path | None
    warnings: list[str] = field(default_factory=list)  # e.g. audio and video lengths that differ by more than 1 s


def plan_jobs(request: EvalRequest) -> list[EvalJob | FailedFile]:
    """Validate every input and option; one job per file. Raises BadInput naming the file and the problem; with
    several files, a file's own problem makes it a FailedFile instead, and the others are scored."""
    if not request.files:
        raise BadInput("no input files", hint="avtool eval VIDEO [...]")
    unknown = [m for m in request.metrics if m not in (*METRICS, "all")]
    if unknown:
        raise BadInput(f"--metric {unknown[0]}: unknown metric", hint=f"choose from: all, {', '.join(METRICS)}")
    many = len(request.files) > 1
    for option, value in (("--audio", request.audio), ("--joints", request.joints)):
        if value is not None and many:
            raise BadInput(f"{option} applies to one input file, got {len(request.files)}")
    if len(request.reference_audio) not in (0, 1, len(request.files)):
        raise BadInput(f"--reference-audio: give one, or one per input file ({len(request.files)})")
    check_range("--motion-fps", request.motion_fps, MIN_MOTION_FPS, MAX_MOTION_FPS)
    if request.plot is not None and request.plot.suffix.lower() != ".png":
        raise BadInput(f"--plot {request.plot}: must name a .png file")
    if request.joints is not None:
        _check_joints(request.joints)
    for path in request.reference_audio:
        probe(path).require_audio()

    if request.plot is not None:
        ensure_output_dir(request.plot.parent)  # before any decoding: a plot that cannot be written fails now
    jobs: list[EvalJob | FailedFile] = []
    for index, path in enumerate(request.files):
        try:
            jobs.append(_plan_file(request, index, path))
        except BadInput as error:
            if len(request.files) == 1:
                raise
            jobs.append(FailedFile(path, error))  # many files, one bad: the others are still scored
    return jobs


def _plan_file(request: EvalRequest, index: int, path: Path) -> EvalJob:
    needs = {m: ["video", "audio"] for m in VIDEO_METRICS}
    needs.update({m: ["audio", "reference"] for m in REFERENCE_METRICS})
    needs["bas"] = ["audio"] if request.joints else ["video", "audio"]
    info = probe(path)
    num_frames = info.video.num_frames if info.video is not None else 0
    audio = request.audio or path
    audio_info = (probe(request.audio) if request.audio else info).audio
    reference = request.reference_audio[index if len(request.reference_audio) > 1 else 0] if request.reference_audio else None
    missing = {
        "video": None if num_frames >= 2 else (f"{path}: has no video track" if num_frames == 0
                                               else f"{path}: has {num_frames} frame; optical flow needs at least two"),
        "audio": None if audio_info is not None else f"{audio}: has no audio track" + ("" if request.audio else "; give --audio"),
        "reference": None if reference else "needs --reference-audio",
    }
    if request.metrics == ["all"]:
        metrics = [m for m in METRICS if not any(missing[n] for n in needs[m])]
        if not metrics:
            raise BadInput(f"{path}: no metric applies", hint=next(msg for msg in missing.values() if msg))
    else:
        metrics = list(dict.fromkeys(request.metrics))
        for metric in metrics:
            problem = next((missing[n] for n in needs[metric] if missing[n]), None)
            if problem:
                raise BadInput(f"{metric}: {problem}", hint="`avtool eval --help` says what each metric needs")
    if request.plot is not None and (missing["audio"] or missing["video"]):
        raise BadInput(f"--plot: {missing['video'] or missing['audio']}", hint="the plot needs audio and video")
    warnings = []
    if info.video is not None and audio_info is not None and abs(info.video.duration - audio_info.duration) > LENGTH_TOLERANCE:
        warnings.append(f"{path}: the audio lasts {audio_info.duration:.2f} s and the video {info.video.duration:.2f} s; "
                        "scores compare them over different lengths")
    return EvalJob(path, Path(audio), metrics, num_frames, Path(reference) if reference else None,
                   request.joints, _plot_path(request.plot, request.files, index), warnings)


@dataclass(frozen=True)
class FailedFile:
    """An input file that cannot be scored (with several inputs, the others still are)."""

    file: Path
    error: BadInput

    def row(self, metrics: list[str]) -> dict:
        """A result row with every requested metric undefined, for the reason the file failed."""
        names = METRICS if metrics == ["all"] else metrics
        return {"file": str(self.file), "audio": None, "scores": dict.fromkeys(names), "reasons": dict.fromkeys(names, self.error.message),
                "details": {}, "plot": None, "warnings": [], "error": self.error.message}


def evaluate(request: EvalRequest, on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run every job; returns {"files": [row, ...], "mean": {name: value or None}, "scored": {name: files}}.

    `on_progress(file, frames_done, frames_total)` is called while a video is decoded.
    """
    planned = plan_jobs(request)
    jobs = [job for job in planned if isinstance(job, EvalJob)]
    scored_rows = iter(_run_jobs(jobs, request, on_progress) if jobs else [])
    rows = [job.row(request.metrics) if isinstance(job, FailedFile) else next(scored_rows) for job in planned]
    names = list(dict.fromkeys(name for row in rows for name in row["scores"]))
    mean, scored = {}, {}
    for name in names:
        values = [row["scores"][name] for row in rows if row["scores"].get(name) is not None]
        mean[name] = float(np.mean(values)) if values else None
        scored[name] = len(values)
    return {"files": rows, "mean": mean, "scored": scored}


def _run_jobs(jobs: list[EvalJob], request: EvalRequest, on_progress: Callable[[str, int, int], None] | None) -> list[dict]:
    """The jobs' rows in input order. Several files share one Farneback pool and `FILES_IN_FLIGHT` run at once;
    a file that turns out unreadable gets a failed row; on an internal error or Ctrl-C the others stop at their
    next frame and the error is raised."""
    if len(jobs) == 1:
        return [evaluate_job(jobs[0], request, on_progress)]
    from avtool.analysis.motion import flow_pool

    stop, progress_lock = threading.Event(), threading.Lock()

    def progress(file: str, done: int, total: int) -> None:
        with progress_lock:
            on_progress(file, done, total)

    def run(job: EvalJob, flows: Executor) -> dict:
        try:
            if stop.is_set():
                raise _Stopped
            return evaluate_job(job, request, on_progress and progress, flows, stop)
        except BadInput as error:  # this file's problem: its row says so, the others go on
            return FailedFile(job.file, error).row(job.metrics)
        except BaseException:
            stop.set()
            raise

    with (flow_pool(request.workers) as flows,
          ThreadPoolExecutor(FILES_IN_FLIGHT, thread_name_prefix="eval-file") as files):
        futures = [files.submit(run, job, flows) for job in jobs]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # after a failure or Ctrl-C: stop the files being decoded, drop the queued ones
            stop.set()
            for future in futures:
                future.cancel()
    errors = [future.exception() for future in futures if not future.cancelled() and future.exception() is not None]
    if errors:
        raise next((e for e in errors if not isinstance(e, _Stopped)), errors[0])
    return [future.result() for future in futures]


class _Stopped(Exception):
    """Another file failed or the user interrupted: this one stops decoding."""


_plot_lock = threading.Lock()  # matplotlib is not thread-safe


def evaluate_job(job: EvalJob, request: EvalRequest, on_progress: Callable[[str, int, int], None] | None = None,
                 pool: Executor | None = None, stop: threading.Event | None = None) -> dict:
    """All metrics of one file as a row: {"file", "audio", "scores", "reasons", "details", "plot"}.

    `pool`: a `motion.flow_pool` of `request.workers` threads shared with other files; `stop`: when set, decoding stops.
    """
    from avtool.analysis import av_align, bas, beats
    from avtool.analysis.motion import motion_curve

    started = time.perf_counter()
    row: dict = {"file": str(job.file), "audio": str(job.audio), "scores": {}, "reasons": {}, "details": {}, "plot": None,
                 "warnings": job.warnings}
    needs_video = bool(set(job.metrics) & set(VIDEO_METRICS)) or job.plot is not None or ("bas" in job.metrics and job.joints is None)
    needs_onsets = bool(set(job.metrics) & set(VIDEO_METRICS)) or job.plot is not None
    audio_22k = _load_mono(job.audio, av_align.AUDIO_SR) if needs_onsets or set(job.metrics) & set(REFERENCE_METRICS) else None

    motion = None
    if needs_video:
        done = 0

        def frame_done() -> None:
            nonlocal done
            if stop is not None and stop.is_set():
                raise _Stopped
            done += 1
            if on_progress is not None and done % 10 == 0:
                on_progress(str(job.file), done, job.num_frames)

        motion = motion_curve(job.file, request.workers, frame_done, pool)
        row["fps"], row["frames"] = motion.fps, len(motion.values)

    onsets = av_align.audio_onsets(audio_22k) if needs_onsets else None
    results = {}
    for variant in av_align.VARIANTS:
        if variant in job.metrics or (variant == "av-align" and job.plot is not None):
            results[variant] = av_align.av_align(onsets, motion, variant)
    for variant, result in results.items():
        if variant in job.metrics:
            _put(row, variant, result.score, result.reason,
                 {"audio_peaks": len(result.audio_peaks), "video_peaks": len(result.video_peaks), "matches": len(result.matches)})

    if "beat-coverage" in job.metrics or "beat-hit" in job.metrics:
        scores = beats.beat_coverage_hit(audio_22k, _load_mono(job.reference_audio, beats.AUDIO_SR))
        _put_beat_scores(row, "", scores, job.metrics)
    if "beat-coverage-d2m" in job.metrics or "beat-hit-d2m" in job.metrics:
        scores = beats.beat_coverage_hit_d2m(audio_22k, _load_mono(job.reference_audio, beats.AUDIO_SR))
        _put_beat_scores(row, "-d2m", scores, job.metrics)

    if "bas" in job.metrics:
        if job.joints is not None:
            joints, fps, prefix = np.load(job.joints, allow_pickle=False), request.motion_fps, "bas"
            speed, envelope = bas.joint_speed(joints), bas.joint_envelope(joints)
        else:
            fps, prefix = motion.fps, "bas-flow"
            speed, envelope = bas.flow_speed(motion.values), bas.flow_envelope(motion.values)
        music_sr = bas.music_sample_rate(fps)
        music = _load_mono(job.audio, music_sr)
        for result in (bas.bas_bailando(speed, bas.music_beats(music, music_sr, fps, "bailando")),
                       bas.bas_fact(envelope, bas.music_beats(music, music_sr, fps, "fact"), fps)):
            _put(row, f"{prefix}-{result.direction}", result.score, result.reason,
                 {"music_beats": len(result.music_beats), "motion_beats": len(result.motion_beats), "fps": fps})

    if not row["reasons"]:
        del row["reasons"]
    if job.plot is not None:
        import cv2
        import librosa

        from avtool.analysis.plot import plot_alignment
        from avtool.pipelines.common import write_record

        with _plot_lock:
            row["plot"] = str(plot_alignment(job.plot, onsets, motion, results["av-align"], job.file.name))
        write_record(job.plot, {**row, "libraries": {"librosa": librosa.__version__, "opencv": cv2.__version__},
                                 "timings": {"seconds": round(time.perf_counter() - started, 3)}})
    return row


def _put(row: dict, name: str, value: float | None, reason: str | None, details: dict) -> None:
    if value is not None and not math.isfinite(value):
        value, reason = None, "not a finite number"
    row["scores"][name] = value
    if value is None:
        row["reasons"][name] = reason
    row["details"][name] = details


def _put_beat_scores(row: dict, suffix: str, scores, metrics: list[str]) -> None:
    counts = {"generated": scores.generated, "reference": scores.reference, "aligned": scores.aligned}
    for kind, value in (("coverage", scores.coverage), ("hit", scores.hit)):
        name = f"beat-{kind}{suffix}"
        if name in metrics:
            _put(row, name, value, scores.reason, counts)


def _load_mono(path: Path, sr: int) -> np.ndarray:
    samples, _ = load_audio(path, sr=sr)
    if samples.size == 0:
        raise BadInput(f"{path}: the audio track is empty")
    return samples


def _check_joints(path: Path) -> None:
    """BadInput unless `path` is a .npy of finite numbers shaped (T >= 3, J, 3)."""
    from avtool.media import check_input_file

    check_input_file(path)
    try:
        joints = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise BadInput(f"--joints {path}: not a numpy .npy array ({e})") from None
    if joints.ndim != 3 or joints.shape[2] != 3 or joints.shape[0] < 3 or not np.issubdtype(joints.dtype, np.number):
        raise BadInput(f"--joints {path}: expected a numeric (frames >= 3, joints, 3) array, got {joints.dtype} {joints.shape}")
    if not np.isfinite(joints).all():
        raise BadInput(f"--joints {path}: holds NaN or infinite values")


def _plot_path(plot: Path | None, files: list[Path], index: int) -> Path | None:
    """OUT.png for one file; OUT_<stem>.png each for many (OUT_<n>_<stem>.png, n from 1, when two stems clash)."""
    if plot is None or len(files) == 1:
        return plot
    stems = [f.stem for f in files]
    label = stems[index] if len(set(stems)) == len(stems) else f"{index + 1}_{stems[index]}"
    return plot.with_name(f"{plot.stem}_{label}{plot.suffix}")

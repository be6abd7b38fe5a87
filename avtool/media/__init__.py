"""Everything that reads or writes audio/video files. No torch here."""

from avtool.media.audio import load_audio
from avtool.media.files import atomic_output, check_input_file, ensure_output_dir
from avtool.media.image import crop_resize, read_image
from avtool.media.probe import AudioStreamInfo, MediaInfo, VideoStreamInfo, probe
from avtool.media.video import frames_at, iter_frames, mux, read_frames, write_video

__all__ = [
    "AudioStreamInfo", "MediaInfo", "VideoStreamInfo", "atomic_output", "check_input_file", "crop_resize",
    "ensure_output_dir", "frames_at", "iter_frames", "load_audio", "mux", "probe", "read_frames", "read_image",
    "write_video",
]

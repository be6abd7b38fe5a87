"""VidMuse (video → music): MusicGen LM conditioned by CLIP long/short-term video features, EnCodec 32 kHz.

`load_vidmuse` builds everything from the export dicts and the codec/CLIP folders; `VidMuse.cfg_conditioning`
encodes one window of frames into the `[cond; black-video]` cross-attention source; `VidMuseStep` is the cached LM
step for `avtool.sampling.tokens.sample_tokens`, with `first_input` / `delay_constraint` / `undo_delay_pattern`
for MusicGen's delay pattern; `VidMuse.decode` turns codes into 32 kHz audio.
"""

from avtool.models.vidmuse.config import VidMuseConfig
from avtool.models.vidmuse.model import (
    CODEC_NAME,
    VidMuse,
    build_vidmuse,
    convert_state_dict,
    load_codec,
    load_vidmuse,
    materialize_buffers,
    read_clip_folder,
    read_export,
    to_upstream_state_dict,
    upstream_autocast,
    upstream_layout,
)
from avtool.models.vidmuse.tokens import (
    UNKNOWN,
    VidMuseStep,
    delay_constraint,
    delay_pattern,
    delay_template,
    first_input,
    generation_steps,
    undo_delay_pattern,
)
from avtool.models.vidmuse.video import VideoConditioner

GLOBAL_FRAMES = 32  # frames spread over the whole video for the global stream (`global_num_frames` in the app)
MAX_DURATION = 30.0  # seconds per generation window (`max_duration`)
EXTEND_STRIDE = 29.5  # seconds between window starts; the 0.5 s overlap becomes the next window's prompt

__all__ = [
    "CODEC_NAME", "EXTEND_STRIDE", "GLOBAL_FRAMES", "MAX_DURATION", "UNKNOWN", "VidMuse", "VidMuseConfig", "VidMuseStep",
    "VideoConditioner", "build_vidmuse", "convert_state_dict", "delay_constraint", "delay_pattern", "delay_template",
    "first_input", "generation_steps", "load_codec", "load_vidmuse", "materialize_buffers", "read_clip_folder",
    "read_export", "to_upstream_state_dict", "undo_delay_pattern", "upstream_autocast", "upstream_layout",
]

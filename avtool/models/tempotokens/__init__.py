"""TempoTokens (audio → video on zeroscope): the audio mapper, the per-frame text condition, and per-frame
conditions for diffusers' UNet3D.

`AudioTokenMapper` turns BEATs features into `MapperTokens`; `add_placeholder_tokens` + `encode_frames` put them
into the prompt, one text context per frame (`encode_text` for the unconditional prompt); `use_frame_conditions`
prepares a stock `UNet3DConditionModel` and `frame_conditions` packs the contexts for its `encoder_hidden_states`.
"""

from avtool.models.tempotokens.mapper import LOCAL_HALF_WIDTHS, AudioTokenMapper, MapperTokens
from avtool.models.tempotokens.text import (
    DEFAULT_PROMPT,
    PLACEHOLDERS,
    add_placeholder_tokens,
    encode_frames,
    encode_text,
    prompt_with_tokens,
)
from avtool.models.tempotokens.unet import (
    FrameConditionedUNet,
    FrameConditionProcessor,
    frame_conditions,
    use_frame_conditions,
)

__all__ = [
    "DEFAULT_PROMPT", "LOCAL_HALF_WIDTHS", "PLACEHOLDERS", "AudioTokenMapper", "FrameConditionedUNet", "FrameConditionProcessor", "MapperTokens",
    "add_placeholder_tokens", "encode_frames", "encode_text", "frame_conditions", "prompt_with_tokens", "use_frame_conditions",
]

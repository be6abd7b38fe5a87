"""BEATs, TempoTokens' audio encoder: `load_beats(checkpoint)` on the published `.pt` dict, then
`extract_layer_features(waveform_16k)` → (B, T_tok, layers × dim), every layer's output concatenated."""

from avtool.models.beats.fbank import beats_input, kaldi_fbank, num_frames
from avtool.models.beats.model import BEATs, BEATsConfig, checked_state_dict, load_beats, num_tokens

__all__ = ["BEATs", "BEATsConfig", "beats_input", "checked_state_dict", "kaldi_fbank", "load_beats", "num_frames", "num_tokens"]

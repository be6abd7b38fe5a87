"""Dance2Music-Diffusion (D2M): AIST++ motion (219 numbers per frame at 60 fps) → music latents → audio.

`mot` holds the motion transformer `MOT` (motion tokens for cross-attention, genre logits for its auxiliary
loss); `unet` the a-unet style 1-D U-Net; `diffusion` the denoiser around it (time conditioning, the learned null
tokens of classifier-free guidance) and the map to and from upstream's checkpoint names; `encoder` and
`autoencoder` the dmae1d-ATC32-v3 diffusion autoencoder; `checkpoint` a trained D2M's files. Only the constants
below live here, so importing the package costs no torch.

Time layout. dmae1d-ATC32-v3 makes one latent frame of 512 samples (mel hop 256 x a stride-2 encoder; its README:
"downsampling factor 512x"). Upstream D2M crops its music to 262,144 samples at 44.1 kHz (5.94 s, for 356 motion
frames = 5.93 s) and feeds them to the autoencoder as they are, so one window is 2^18 samples = 512 latent frames
here. Upstream's own U-Net saw [32, 256] latents, which the published ATC32-v3 cannot make from 2^18 samples (that is
the 1024x ATC64-v2's shape; see tests/data/dmae1d_atc32_v3.md): avtool trains and samples [32, 512] windows. The
U-Net is convolutional, so its weights do not depend on the length.
"""

SAMPLE_RATE = 44100  # upstream's music rate, in preprocessing and in the written WAV
SAMPLES_PER_LATENT = 512
LATENT_CHANNELS = 32
WINDOW_SAMPLES = 2**18  # upstream's clip: 262,144 samples
WINDOW_LATENTS = WINDOW_SAMPLES // SAMPLES_PER_LATENT
GENRES = ("gLH", "gKR", "gPO", "gBR", "gWA", "gJS", "gMH", "gHO", "gJB", "gLO")  # AIST++ name prefix -> class index

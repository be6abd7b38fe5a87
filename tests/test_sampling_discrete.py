"""Discrete-time UNet sampling on diffusers' schedulers: our loop against diffusers-pipeline loops and exact denoisers."""

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

from avtool.sampling.discrete import load_scheduler, sample_discrete, scale_initial_noise
from avtool.sampling.guidance import CFGDenoiser

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (MuseV's t2i/sd1.5/* folders have this layout)
SD15_CONFIG = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
               "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
               "trained_betas": None, "clip_sample": False}
# a ModelScope/zeroscope-style scheduler config (TempoTokens loads it as DDPMScheduler, then switches to DPM-Solver)
ZEROSCOPE_CONFIG = {**SD15_CONFIG, "_class_name": "DDIMScheduler", "prediction_type": "epsilon"}
# MuseV --enable_zero_snr (pipeline_controlnet_predictor.py): a DDIMScheduler built from these arguments
MUSEV_ZERO_SNR_DDIM = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear", "clip_sample": False,
                       "steps_offset": 1, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                       "timestep_spacing": "trailing"}

SHAPE = (1, 3, 4, 4)
CASES = {
    "euler-eps": lambda: load_scheduler("euler", SD15_CONFIG),
    "euler-v": lambda: load_scheduler("euler", SD15_CONFIG, prediction_type="v_prediction"),
    "ddim-v-zero-snr-trailing": lambda: load_scheduler("ddim", MUSEV_ZERO_SNR_DDIM),
    "dpm-solver++": lambda: load_scheduler("dpm-multistep", ZEROSCOPE_CONFIG),
}


class ToyUNet(torch.nn.Module):
    """A fixed small linear function of x, t and a per-row context, standing in for a UNet adapter."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.mix = torch.eye(SHAPE[1]) * 0.5 + 0.1 * torch.randn(SHAPE[1], SHAPE[1], generator=gen)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        mixed = torch.einsum("oc,bchw->bohw", self.mix, x)
        return mixed + 1e-4 * t.float() + context[:, :, None, None]


def noise(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def context() -> torch.Tensor:
    return torch.randn(2, SHAPE[1], generator=torch.Generator().manual_seed(9))  # [uncond, cond]


def pipeline_loop(scheduler, model, latents, context, scale, steps, generator=None, **step_kwargs):
    """The denoising loop of diffusers' StableDiffusionPipeline / TextToVideoSDPipeline, written out."""
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise_pred = model(latent_model_input, t, context)
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        noise_pred = noise_pred_uncond + scale * (noise_pred_text - noise_pred_uncond)
        latents = scheduler.step(noise_pred, t, latents, generator=generator, **step_kwargs, return_dict=False)[0]
    return latents


@pytest.mark.parametrize("case", CASES)
def test_loop_matches_a_diffusers_pipeline_loop(case):
    model, steps, scale = ToyUNet(), 10, 3.5
    expected = pipeline_loop(CASES[case](), model, noise(0), context(), scale, steps)
    scheduler = CASES[case]()
    scheduler.set_timesteps(steps)
    seen = []
    got = sample_discrete(CFGDenoiser(model, scale), scale_initial_noise(noise(0), scheduler), scheduler,
                          extra_args={"context": context()}, callback=seen.append)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert [c["i"] for c in seen] == list(range(steps))
    assert torch.equal(torch.stack([c["sigma"] for c in seen]), scheduler.timesteps)
    assert all(c["denoised"] is not None and c["denoised"].shape == SHAPE for c in seen)


def exact_prediction(scheduler, x0):
    """The model output that a UNet predicting exactly the data `x0` gives, in VP form (x_in = a x0 + s eps)."""
    kind = scheduler.config.prediction_type

    def predict(x_in, t):
        alpha_bar = scheduler.alphas_cumprod[int(t)].double()
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        eps = (x_in.double() - a * x0) / s
        return (eps if kind == "epsilon" else a * eps - s * x0).float()

    return predict


@pytest.mark.parametrize("case", CASES)
def test_exact_prediction_recovers_the_data(case):
    scheduler, x0 = CASES[case](), noise(1).double()
    scheduler.set_timesteps(10)  # integer timesteps for every case here, so alphas_cumprod[int(t)] is exact
    seen = []
    got = sample_discrete(exact_prediction(scheduler, x0), scale_initial_noise(noise(2), scheduler), scheduler,
                          callback=seen.append)
    torch.testing.assert_close(got.double(), x0, rtol=1e-4, atol=1e-4)
    for c in seen:  # "denoised" is the data estimate for every scheduler
        torch.testing.assert_close(c["denoised"].double(), x0, rtol=1e-3, atol=1e-3)


def test_builder_follows_upstreams_from_config_chain(tmp_path):
    # MuseV: EulerDiscreteScheduler.from_config(<SD1.5 pipeline>.scheduler.config), the pipeline loaded it as PNDM.
    # diffusers drops PNDM's default-filled keys on the switch, so Euler keeps its own "linspace" spacing.
    euler = load_scheduler("euler", SD15_CONFIG)
    upstream = EulerDiscreteScheduler.from_config(PNDMScheduler.from_config(SD15_CONFIG).config)
    assert dict(euler.config) == dict(upstream.config)
    assert euler.config.timestep_spacing == "linspace" and euler.config.prediction_type == "epsilon"
    euler.set_timesteps(10)
    assert euler.timesteps.tolist() == [999.0, 888.0, 777.0, 666.0, 555.0, 444.0, 333.0, 222.0, 111.0, 0.0]
    sigma_max = ((1 - euler.alphas_cumprod[999]) / euler.alphas_cumprod[999]) ** 0.5
    assert float(euler.init_noise_sigma) == pytest.approx(float(sigma_max), rel=1e-6)
    # TempoTokens: DPMSolverMultistepScheduler.from_config(DDPMScheduler.from_pretrained(zeroscope/scheduler).config)
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(ZEROSCOPE_CONFIG))
    dpm = load_scheduler("dpm-multistep", tmp_path)
    upstream = DPMSolverMultistepScheduler.from_config(DDPMScheduler.from_pretrained(tmp_path, subfolder="scheduler").config)
    assert dict(dpm.config) == dict(upstream.config)
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    assert dpm.config.timestep_spacing == "linspace" and dpm.config.final_sigmas_type == "zero"
    dpm.set_timesteps(25)
    assert dpm.timesteps[:3].tolist() == [999, 959, 919] and dpm.timesteps[-1].item() == 40
    assert dpm.init_noise_sigma == 1.0
    # MuseV zero-SNR: trailing timesteps end at 99 and the terminal alpha_bar is (numerically) zero
    ddim = load_scheduler("ddim", MUSEV_ZERO_SNR_DDIM)
    ddim.set_timesteps(10)
    assert ddim.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ddim.alphas_cumprod[-1].item() < 1e-6 and ddim.init_noise_sigma == 1.0
    with pytest.raises(ValueError, match="unknown scheduler"):
        load_scheduler("heun-ish", SD15_CONFIG)


STOCHASTIC = {
    "euler-ancestral": (lambda: load_scheduler("euler-ancestral", SD15_CONFIG), {}),
    "ddim-eta": (lambda: load_scheduler("ddim", ZEROSCOPE_CONFIG), {"eta": 1.0}),
}


@pytest.mark.parametrize("case", STOCHASTIC)
def test_stochastic_steps_follow_the_cpu_seed(case):
    build, step_args = STOCHASTIC[case]
    model, steps = ToyUNet(), 6

    def ours(seed):
        scheduler = build()
        scheduler.set_timesteps(steps)
        return sample_discrete(CFGDenoiser(model, 3.0), scale_initial_noise(noise(0), scheduler), scheduler,
                               extra_args={"context": context()}, generator=torch.Generator().manual_seed(seed),
                               step_args=step_args)

    expected = pipeline_loop(build(), model, noise(0), context(), 3.0, steps,
                             generator=torch.Generator().manual_seed(7), **step_args)
    assert torch.isfinite(expected).all()
    assert torch.equal(ours(7), expected)
    assert torch.equal(ours(7), ours(7))
    assert not torch.allclose(ours(7), ours(8))


def test_walk_starts_at_begin_index_and_refuses_a_used_scheduler():
    model = ToyUNet()
    scheduler = CASES["euler-eps"]()
    scheduler.set_timesteps(8)
    scheduler.set_begin_index(3)
    seen = []
    x = noise(3)
    got = sample_discrete(lambda x, t: model(x, t, context()[1:]), x, scheduler, callback=seen.append)
    assert torch.equal(torch.stack([c["sigma"] for c in seen]), scheduler.timesteps[3:])
    reference = CASES["euler-eps"]()
    reference.set_timesteps(8)
    for t in reference.timesteps[3:]:
        x = reference.step(model(reference.scale_model_input(x, t), t, context()[1:]), t, x).prev_sample
    assert torch.equal(got, x)
    with pytest.raises(ValueError, match="already stepped"):
        sample_discrete(lambda x, t: model(x, t, context()[1:]), x, scheduler)
    with pytest.raises(ValueError, match="set_timesteps"):
        sample_discrete(lambda x, t: x, x, CASES["ddim-v-zero-snr-trailing"]())
    fresh = CASES["euler-eps"]()
    fresh.set_timesteps(2)
    with pytest.raises(ValueError, match="CPU generator"):
        sample_discrete(lambda x, t: x, x, fresh, generator=SimpleNamespace(device=torch.device("cuda")))

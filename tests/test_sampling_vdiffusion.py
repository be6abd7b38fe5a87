"""v-diffusion on the cosine schedule (Dance2Music-Diffusion's VSampler): schedule, hand computation, exact-v recovery."""

import math

import pytest
import torch

from avtool.sampling.samplers import sample_vdiffusion
from avtool.sampling.schedules import vdiffusion_sigmas

SHAPE = (2, 32, 16)  # (batch, latent channels, latent frames) like D2M's [1, 32, 256], smaller


def randn(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def test_schedule_is_linspace_one_to_zero():
    sigmas = vdiffusion_sigmas(50)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (51,)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    torch.testing.assert_close(sigmas, torch.tensor([1 - i / 50 for i in range(51)]), rtol=0, atol=1e-7)
    with pytest.raises(ValueError):
        vdiffusion_sigmas(0)


def test_sampler_matches_a_hand_computation():
    direction = randn(1)

    def net(x, sigma, scale):  # a toy v-model: linear in x, depends on sigma and on a conditioning keyword
        return 0.5 * x + scale * float(sigma) * direction

    steps, noise = 5, randn(0)
    seen = []
    got = sample_vdiffusion(net, noise, vdiffusion_sigmas(steps), extra_args={"scale": 0.3}, callback=seen.append)
    x = noise.double()
    for i in range(steps):
        s, s_next = 1 - i / steps, 1 - (i + 1) / steps
        a, b = math.cos(s * math.pi / 2), math.sin(s * math.pi / 2)
        a_next, b_next = math.cos(s_next * math.pi / 2), math.sin(s_next * math.pi / 2)
        v = 0.5 * x + 0.3 * s * direction.double()
        x = a_next * (a * x - b * v) + b_next * (b * x + a * v)
    torch.testing.assert_close(got.double(), x, rtol=1e-5, atol=1e-5)
    assert [c["i"] for c in seen] == list(range(steps))
    assert [float(c["sigma"]) for c in seen] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    torch.testing.assert_close(seen[-1]["denoised"], got)  # the last step lands on its own x0 estimate


def test_exact_v_recovers_the_data():
    x0 = randn(2)

    def exact_v(x, sigma):
        a, b = math.cos(float(sigma) * math.pi / 2), math.sin(float(sigma) * math.pi / 2)
        eps = (x - a * x0) / b
        return a * eps - b * x0

    for steps in (1, 3, 50):
        torch.testing.assert_close(sample_vdiffusion(exact_v, randn(3), vdiffusion_sigmas(steps)), x0, rtol=1e-5, atol=1e-5)


def test_inpainting_holds_the_known_part_on_its_noised_path_and_ends_on_it():
    from avtool.sampling.inpaint import VInpaintDenoiser

    known, noise = randn(5), randn(6)
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[..., :6] = True
    seen_inputs = []

    def net(x, sigma):  # a toy model that would pull everything towards 0.3 x
        seen_inputs.append((float(sigma), x.clone()))
        return 0.7 * x

    sigmas = vdiffusion_sigmas(8)
    out = sample_vdiffusion(VInpaintDenoiser(net, known, mask, noise), noise, sigmas)
    torch.testing.assert_close(out[..., :6], known[..., :6], rtol=0, atol=1e-5)
    for sigma, x in seen_inputs:  # every model call saw the known part noised to its own level
        a, b = math.cos(sigma * math.pi / 2), math.sin(sigma * math.pi / 2)
        torch.testing.assert_close(x[..., :6], a * known[..., :6] + b * noise[..., :6], rtol=0, atol=1e-5)
    free = sample_vdiffusion(net, noise, sigmas)  # the toy model is elementwise: the free part is sampled as without mask
    torch.testing.assert_close(out[..., 6:], free[..., 6:], rtol=0, atol=0)
    assert not torch.allclose(out[..., :6], free[..., :6], atol=1e-2)

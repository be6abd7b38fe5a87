"""Schedule, Euler sampler, batched text CFG, Mochi's call convention and the step runner on a tiny Mochi transformer."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule

from avtool.errors import EXIT_BAD_INPUT, BadInput
from avtool.models.mochi import MochiFlowModel, use_masked_attention
from avtool.sampling import CFGDenoiser, StepRunner, linear_quadratic_sigmas, resolve_runner, sample_euler_flow

TEXT_TOKENS, TEXT_DIM = 12, 32
LATENT_SHAPE = (1, 12, 2, 4, 6)  # 7 frames at 32x48 px


def tiny_transformer() -> MochiTransformer3DModel:
    torch.manual_seed(0)
    model = MochiTransformer3DModel(num_layers=2, num_attention_heads=2, attention_head_dim=8, pooled_projection_dim=16,
                                    text_embed_dim=TEXT_DIM, time_embed_dim=16, max_sequence_length=TEXT_TOKENS)
    with torch.no_grad():
        model.pos_frequencies.normal_(0, 1.0)  # default zeros would hide RoPE
    return model.eval()


@pytest.fixture(scope="module")
def transformer():
    return tiny_transformer()


@pytest.fixture(scope="module")
def text():
    """[uncond, cond] embeddings and masks: the empty prompt has no valid token, the prompt 7 of 12."""
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(2, TEXT_TOKENS, TEXT_DIM, generator=gen)
    mask = torch.zeros(2, TEXT_TOKENS, dtype=torch.bool)
    mask[1, :7] = True
    return embeds, mask


def noise(seed: int) -> torch.Tensor:
    return torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(seed))


def test_schedule_is_mochis_linear_quadratic():
    for steps in (2, 3, 8, 64):
        sigmas = linear_quadratic_sigmas(steps)
        assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
        assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())
        reference = torch.tensor(linear_quadratic_schedule(steps, 0.025), dtype=torch.float32)
        torch.testing.assert_close(sigmas[:-1], reference, rtol=0, atol=1e-7)
    sigmas = linear_quadratic_sigmas(64)
    assert sigmas[32].item() == pytest.approx(0.975, abs=1e-7)
    assert sigmas[1].item() == pytest.approx(1 - 0.025 / 32, abs=1e-7)
    assert sigmas[63].item() == pytest.approx(0.05923, abs=1e-5)
    with pytest.raises(ValueError):
        linear_quadratic_sigmas(1)


def test_euler_integrates_a_known_flow():
    # velocity v(x, sigma) = -x: the exact Euler product is prod(1 - dsigma_i) * x0
    sigmas = linear_quadratic_sigmas(6)
    seen = []
    x0 = noise(0)
    out = sample_euler_flow(lambda x, s, scale: -scale * x, x0, sigmas, extra_args={"scale": 1.0}, callback=seen.append)
    expected = x0 * torch.prod(1 - (sigmas[:-1] - sigmas[1:]))
    torch.testing.assert_close(out, expected)
    assert [state["i"] for state in seen] == list(range(6))
    assert set(seen[0]) == {"i", "x", "sigma", "denoised"} and seen[2]["sigma"] == sigmas[2]
    torch.testing.assert_close(seen[0]["denoised"], x0 * (1 - sigmas[0]))  # x + sigma * v with v = -x


def test_batched_cfg_equals_two_separate_passes(transformer, text):
    embeds, mask = text
    x, sigma, scale = noise(2), torch.tensor(0.7), 6.0
    guided = CFGDenoiser(MochiFlowModel(transformer), scale)(x, sigma, text=embeds, text_mask=mask)
    timestep = ((1 - sigma) * 1000).reshape(1)
    with torch.no_grad():
        uncond = transformer(x, embeds[:1], timestep, mask[:1], return_dict=False)[0]
        cond = transformer(x, embeds[1:], timestep, mask[1:], return_dict=False)[0]
    torch.testing.assert_close(guided, uncond + scale * (cond - uncond), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cond, uncond, atol=1e-3)  # text matters, so the check above means something


def test_sampler_matches_diffusers_mochi_pipeline(transformer, text):
    embeds, mask = text
    steps, scale, seed = 4, 6.0, 5
    pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(invert_sigmas=True), vae=None, text_encoder=None,
                         tokenizer=None, transformer=transformer, force_zeros_for_empty_prompt=True)
    reference = pipe(prompt_embeds=embeds[1:], prompt_attention_mask=mask[1:], negative_prompt_embeds=embeds[:1],
                     negative_prompt_attention_mask=mask[:1], num_frames=7, height=32, width=48, num_inference_steps=steps,
                     guidance_scale=scale, generator=torch.Generator().manual_seed(seed), output_type="latent").frames
    denoiser = StepRunner(CFGDenoiser(MochiFlowModel(transformer), scale), "eager")
    ours = sample_euler_flow(denoiser, noise(seed), linear_quadratic_sigmas(steps), extra_args={"text": embeds, "text_mask": mask})
    assert ours.shape == reference.shape == LATENT_SHAPE
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_masked_attention_gives_the_same_prediction(text):
    embeds, mask = text
    x, timestep = noise(3).expand(2, -1, -1, -1, -1), torch.tensor([400.0, 400.0])
    eager, masked = tiny_transformer(), tiny_transformer()
    assert use_masked_attention(masked) == 2
    with torch.no_grad():
        expected = eager(x, embeds, timestep, mask, return_dict=False)[0]
        got = masked(x, embeds, timestep, mask, return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_compiled_runner_matches_eager(text):
    embeds, mask = text
    sigmas = linear_quadratic_sigmas(2)
    results = {}
    for mode in ("eager", "compile"):
        runner = StepRunner(CFGDenoiser(MochiFlowModel(tiny_transformer()), 6.0), mode, prepare_for_capture=use_masked_attention)
        # two generations through one runner: the compiled step is reused, not rebuilt
        results[mode] = [sample_euler_flow(runner, noise(seed), sigmas, {"text": embeds, "text_mask": mask}) for seed in (0, 1)]
    for eager, compiled in zip(results["eager"], results["compile"], strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(results["eager"][0], results["eager"][1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_runner_matches_eager_and_captures_once(text):
    embeds, mask = (t.cuda() for t in text)
    sigmas = linear_quadratic_sigmas(3).cuda()
    eager = StepRunner(CFGDenoiser(MochiFlowModel(tiny_transformer().cuda()), 6.0), "eager")
    graphed = StepRunner(CFGDenoiser(MochiFlowModel(tiny_transformer().cuda()), 6.0), "cuda-graph", prepare_for_capture=use_masked_attention)
    for seed in (0, 1):
        x = noise(seed).cuda()
        expected = sample_euler_flow(eager, x, sigmas, {"text": embeds, "text_mask": mask})
        got = sample_euler_flow(graphed, x, sigmas, {"text": embeds, "text_mask": mask})
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert len(graphed.graphs) == 1


def test_runner_modes_on_cpu():
    assert resolve_runner("auto", "cpu") == "eager"
    assert resolve_runner("compile", "cpu") == "compile"
    for bad in ("cuda-graph", "fast"):
        with pytest.raises(BadInput) as info:
            resolve_runner(bad, "cpu")
        assert info.value.exit_code == EXIT_BAD_INPUT and bad in info.value.message
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="cuda-graph needs CUDA"):
            StepRunner(CFGDenoiser(MochiFlowModel(tiny_transformer()), 6.0), "cuda-graph")


def test_mochi_timestep_reaches_the_embedding_in_fp32_under_bf16(text):
    """Upstream and MochiPipeline embed 1000 * (1 - sigma) in fp32; a bf16 timestep would round 998.4375 to 998."""
    embeds, mask = text
    transformer = tiny_transformer().to(torch.bfloat16)
    seen = []
    transformer.time_embed.time_proj.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    sigma = torch.tensor(1 - 0.025 / 16)  # a step of the 64-step schedule whose timestep bf16 cannot hold
    CFGDenoiser(MochiFlowModel(transformer), 6.0)(noise(0), sigma, text=embeds.to(torch.bfloat16), text_mask=mask)
    (timestep,) = seen
    assert timestep.dtype == torch.float32
    assert torch.equal(timestep, torch.full((2,), 1000 * (1 - sigma.item()), dtype=torch.float32))
    assert timestep[0].item() != timestep[0].to(torch.bfloat16).item()


def test_mochi_keeps_rope_frequencies_and_norm_scales_in_fp32(text):
    from avtool.models.mochi import fp32_parameter_names

    transformer = tiny_transformer()
    names = fp32_parameter_names(transformer)
    assert "pos_frequencies" in names
    assert "transformer_blocks.0.attn1.norm_q.weight" in names and "transformer_blocks.1.attn1.norm_added_k.weight" in names
    assert not any(name.endswith(("to_q.weight", "proj_out.weight")) for name in names)  # matmuls stay in the run dtype

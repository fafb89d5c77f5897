"""The image generator (eq. 12): one-hot captions through CLIP, the diffusion loss, guided sampling."""
import pytest
import numpy as np
import torch
from diffusers import DDPMScheduler

from photochat_lib.model.image_generator import ImageGenerator
from photochat_lib.toy.foundation import build_toy_components


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return build_toy_components(seed=0)[3]


def test_onehot_encoding_equals_text_encoder_forward(gen):
    ids = gen.tokenize(["red circle, blue square", "", "a green triangle on the left"])
    reference = gen.text_encoder(input_ids=ids).last_hidden_state
    ours = gen.encode_onehot(gen.one_hot(ids))
    assert torch.allclose(ours, reference, atol=1e-6, rtol=0)


def test_image_loss_gradient_flows_into_the_onehots(gen):
    ids = gen.tokenize(["red circle", "blue square"])
    r_sd = gen.one_hot(ids).requires_grad_(True)
    target = torch.rand(2, 3, 32, 32) * 2 - 1
    loss = gen.image_loss(r_sd, target, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(loss)
    assert r_sd.grad.abs().sum() > 0, "eq. (12) must be differentiable w.r.t. R_SD"
    assert all(p.grad is None for p in gen.vae.parameters()), "the VAE is frozen"


class TargetPlus(torch.nn.Module):
    """A stand-in UNet that returns the scheduler's true target plus `offset`, replaying image_loss's draws
    (VAE sample, then noise, from a generator seeded 7); it records the timesteps it was asked about."""

    def __init__(self, gen, sched, target, offset: float):
        super().__init__()
        self.gen, self.sched, self.target, self.offset, self.seen_t = gen, sched, target, offset, None

    def forward(self, zt, t, encoder_hidden_states):
        g = torch.Generator().manual_seed(7)
        z0 = self.gen.encode_images(self.target, g)
        noise = torch.randn(z0.shape, generator=g)
        self.seen_t = t
        kind = self.sched.config.prediction_type
        truth = {"epsilon": noise, "v_prediction": self.sched.get_velocity(z0, noise, t), "sample": z0}[kind]
        return type("Out", (), {"sample": truth + self.offset})()


def _with_stand_in(gen, kind: str, batch: int, offset: float):
    """Return (ImageGenerator whose UNet is a TargetPlus for `kind`, that TargetPlus, its target images)."""
    sched = DDPMScheduler.from_config(gen.scheduler.config, prediction_type=kind)
    target = torch.rand(batch, 3, 32, 32) * 2 - 1
    stand_in = TargetPlus(gen, sched, target, offset)
    return ImageGenerator(gen.text_encoder, gen.tokenizer, stand_in, gen.vae, sched), stand_in, target


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_image_loss_regresses_on_the_schedulers_target(gen, kind):
    """With a UNet that outputs exactly the target, L_v is 0 for every prediction_type."""
    model, oracle, target = _with_stand_in(gen, kind, batch=2, offset=0.0)
    loss = model.image_loss(gen.one_hot(gen.tokenize(["a", "b"])), target, generator=torch.Generator().manual_seed(7))
    assert oracle.seen_t is not None and loss.item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weighting_weighs_each_sample_by_min_snr_gamma_in_x0_terms(gen, kind):
    """A UNet off by 0.5 everywhere: plain L_v is 0.25; Min-SNR-γ scales sample i by min(SNR, γ)/(the target's own weight)."""
    model, off, target = _with_stand_in(gen, kind, batch=8, offset=0.5)
    sched = model.scheduler
    r_sd = gen.one_hot(gen.tokenize(["a"] * 8))
    plain = model.image_loss(r_sd, target, generator=torch.Generator().manual_seed(7))
    weighted = model.image_loss(r_sd, target, generator=torch.Generator().manual_seed(7), snr_gamma=5.0)
    alpha_bar = sched.alphas_cumprod[off.seen_t]
    snr = alpha_bar / (1 - alpha_bar)
    own = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[kind]
    assert plain.item() == pytest.approx(0.25, rel=1e-5)
    assert weighted.item() == pytest.approx(0.25 * (snr.clamp(max=5.0) / own).mean().item(), rel=1e-5)
    assert not torch.allclose(snr.clamp(max=5.0) / own, torch.ones_like(snr))   # the weights really vary


def test_generate_returns_images_in_unit_range(gen):
    r_sd = gen.one_hot(gen.tokenize(["red circle", "blue square"]))
    imgs = gen.generate(r_sd, num_inference_steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 3, 32, 32)
    assert imgs.min() >= 0 and imgs.max() <= 1
    again = gen.generate(r_sd, num_inference_steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(imgs, again), "sampling is seeded"


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_the_pipeline_samples_as_ddim_with_classifier_free_guidance(gen, w):
    """`generate` is diffusers' StableDiffusionPipeline fed the one-hot captions' embeddings: bit for bit the
    DDIM + classifier-free-guidance loop of §2.4.3 on the training schedule (no steps_offset the pipeline would
    otherwise impose), at every guidance scale (the pipeline alone would skip the formula at w <= 1, so w = 0
    would not ignore the caption), and its PIL output is the same pixels."""
    from diffusers import DDIMScheduler
    r_sd = gen.one_hot(gen.tokenize(["red circle", "blue square"]))
    cond, uncond = gen.encode_onehot(r_sd), gen.encode_onehot(gen.one_hot(gen.tokenize(["", ""])))  # (2, n, D)
    sched = DDIMScheduler.from_config(gen.scheduler.config)
    sched.set_timesteps(4)
    latents = torch.randn((2, 4, 16, 16), generator=torch.Generator().manual_seed(3)) * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            eps_u, eps_c = gen.unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            latents = sched.step(eps_u + w * (eps_c - eps_u), t, latents).prev_sample
        by_hand = (gen.vae.decode(latents / gen.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    imgs = gen.generate(r_sd, num_inference_steps=4, guidance_scale=w, generator=torch.Generator().manual_seed(3))
    assert torch.equal(imgs, by_hand)
    pil = gen.generate(r_sd, num_inference_steps=4, guidance_scale=w, generator=torch.Generator().manual_seed(3),
                       output_type="pil")
    assert torch.equal(torch.tensor(np.asarray(pil[1])), (by_hand[1].permute(1, 2, 0) * 255).round().to(torch.uint8))

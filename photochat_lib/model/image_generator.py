"""The image generator (paper §2.4.3, eq. 12): Stable Diffusion driven by *one-hot* caption sequences.

    Î = StableDiffusion(R_SD, a);   L_v = ||Î − I||²                  eq. (12)

R_SD (B, n, |V_SD|) comes from eq. (11): exact one-hots in value, carrying the LLM's gradient. The
CLIP text encoder cannot take it through ``forward`` (which accepts only ``input_ids``), so
`encode_onehot` multiplies the one-hots by the token-embedding matrix and then runs the encoder's own
position embeddings, causal transformer and final norm — identical in value to ``forward(input_ids)``
(tests/test_image_generator.py checks it) but differentiable with respect to R_SD.

How L_v relates to eq. (12). Back-propagating ||Î − I||² through a whole denoising chain is
infeasible, so — like every latent-diffusion trainer — we train with the *noise-prediction* loss:
encode I with the VAE, z_0 = E(I); draw t and noise ε; z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε; and regress the
UNet's output onto the scheduler's target (ε for ``prediction_type="epsilon"``, as in
stable-diffusion-2-1-base; v for "v_prediction"; z_0 for "sample"). For ε-prediction the one-step
estimate ẑ_0 = (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t gives ||ẑ_0 − z_0||² = (1−ᾱ_t)/ᾱ_t · ||ε̂ − ε||², so our L_v
is a per-timestep-reweighted ||Î − I||² in latent space, the standard surrogate (Ho et al., 2020).
"""
from __future__ import annotations

import os

import diffusers
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from torch import nn
from transformers import AutoTokenizer, CLIPTextModel, PreTrainedTokenizerBase

from photochat_lib.utils.atomic import write_json
from photochat_lib.model.sampling import GUIDANCE_SCALE, SAMPLER_STEPS

MODEL_INDEX = "model_index.json"   # what makes an SD folder a diffusers pipeline


class _GuidedAtEveryScale(StableDiffusionPipeline):
    """diffusers' pipeline skips guidance at w <= 1 and draws from the conditional estimate alone; the formula
    ε_u + w·(ε_c − ε_u) is kept at every w (w = 0: the caption is ignored, as notebook 05 shows)."""

    @property
    def do_classifier_free_guidance(self) -> bool:
        return True


class ImageGenerator(nn.Module):
    """CLIP text encoder + UNet + VAE + noise scheduler, fed with one-hot caption sequences."""

    def __init__(self, text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerBase,
                 unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler: DDPMScheduler):
        super().__init__()
        self.text_encoder, self.unet, self.vae = text_encoder, unet, vae
        self.tokenizer = tokenizer
        self.scheduler = scheduler                      # training noise schedule (DDPM family)
        self.vae.requires_grad_(False)                  # the VAE only encodes targets / decodes samples

    # ----- text side -----
    @property
    def vocab_size(self) -> int:
        """|V_SD|: rows of the text encoder's token embedding."""
        return self.text_encoder.get_input_embeddings().weight.shape[0]

    @property
    def max_length(self) -> int:
        """Caption length n the text encoder is fed with (77 for SD)."""
        return min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Return (B, n) SD token ids padded/truncated to `max_length`, as the SD pipelines do."""
        ids = self.tokenizer(captions, padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt").input_ids
        return ids.to(self.text_encoder.device)

    def one_hot(self, ids: torch.Tensor) -> torch.Tensor:
        """Return (B, n, |V_SD|) exact one-hots of SD token ids, in the text encoder's dtype."""
        return F.one_hot(ids, self.vocab_size).to(self.text_encoder.dtype)

    def encode_onehot(self, r_sd: torch.Tensor) -> torch.Tensor:
        """Return (B, n, D) caption states of the CLIP text encoder for one-hot rows r_sd (B, n, |V_SD|)."""
        te = self.text_encoder
        weight = te.embeddings.token_embedding.weight                       # (|V_SD|, D)
        token_embeds = r_sd.to(weight.dtype) @ weight                       # (B, n, D) = one-hot @ E
        hidden = te.embeddings(inputs_embeds=token_embeds)                  # + position embeddings
        seq = hidden.shape[1]
        causal = torch.full((seq, seq), torch.finfo(hidden.dtype).min, device=hidden.device,
                            dtype=hidden.dtype).triu(1)[None, None]         # (1, 1, n, n) additive mask
        hidden = te.encoder(inputs_embeds=hidden, attention_mask=causal, is_causal=True).last_hidden_state
        return te.final_layer_norm(hidden)                                  # (B, n, D)

    # ----- image side -----
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return scaled VAE latents z_0 (B, C, h, w) of images in [-1, 1] (B, 3, H, W)."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return dist.sample(generator) * self.vae.config.scaling_factor

    def image_loss(self, r_sd: torch.Tensor, target_pixels: torch.Tensor,
                   generator: torch.Generator | None = None, snr_gamma: float | None = None,
                   reduction: str = "mean") -> torch.Tensor:
        """Return L_v (eq. 12, as the noise-prediction squared error) for captions r_sd and target images.

        reduction "mean" (default): averaged over every latent value; "sum": the paper's ‖ε − ε_θ‖², summed
        over each sample's C·h·w latent values (4·16·16 = 1024 in the toy), averaged over the batch.
        snr_gamma: Min-SNR-γ weighting (Hang et al., 2023), per sample min(SNR_t, γ) in x_0 terms, i.e.
        min(SNR_t, γ)/SNR_t on the ε-loss; None is the plain (unweighted) loss that joint training uses.
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        cond = self.encode_onehot(r_sd)                                     # (B, n, D)
        z0 = self.encode_images(target_pixels, generator).to(cond.dtype)    # (B, C, h, w)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (z0.shape[0],),
                          generator=generator, device=z0.device)           # (B,)
        zt = self.scheduler.add_noise(z0, noise, t)                         # forward diffusion
        pred = self.unet(zt, t, encoder_hidden_states=cond).sample          # (B, C, h, w)
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.scheduler.get_velocity(z0, noise, t)
        elif kind == "sample":
            target = z0
        else:
            raise ValueError(f"unsupported scheduler prediction_type {kind!r}")
        wide = torch.float64 if pred.dtype == torch.float64 else torch.float32     # float64 stays (gradient probes)
        if snr_gamma is None and reduction == "mean":
            return F.mse_loss(pred.to(wide), target.to(wide))               # eq. (12), see docstring
        err = (pred.to(wide) - target.to(wide)) ** 2                        # (B, C, h, w)
        per_sample = err.mean(dim=(1, 2, 3)) if reduction == "mean" else err.sum(dim=(1, 2, 3))  # (B,) eq. (12)
        if snr_gamma is None:
            return per_sample.mean()                                        # eq. (12) summed: ‖ε − ε_θ‖²
        from diffusers.training_utils import compute_snr
        snr = compute_snr(self.scheduler, t)                                # (B,) ᾱ_t / (1 − ᾱ_t), diffusers' own
        # the ε-, v- and z_0-losses weigh x_0 errors by SNR, SNR+1 and 1: divide that back out
        weight = snr.clamp(max=snr_gamma)                                   # (B,) on x_0 errors
        weight = weight / {"epsilon": snr, "v_prediction": snr + 1}.get(kind, torch.ones_like(snr))
        return (weight * per_sample).mean()

    @torch.no_grad()
    def generate(self, r_sd: torch.Tensor, num_inference_steps: int = SAMPLER_STEPS, guidance_scale: float = GUIDANCE_SCALE,
                 generator: torch.Generator | None = None, output_type: str = "pt") -> torch.Tensor | list:
        """Return images in [0, 1] (B, 3, H, W), or B PIL images with output_type="pil", for one-hot captions
        r_sd: diffusers' StableDiffusionPipeline (DDIM, classifier-free guidance) given the caption embeddings
        of the one-hots (the one-hot path)."""
        cond = self.encode_onehot(r_sd)                                     # (B, n, D)
        uncond = self.encode_onehot(self.one_hot(self.tokenize([""] * r_sd.shape[0])))
        return self.pipeline()(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=num_inference_steps,
                               guidance_scale=guidance_scale, generator=generator, output_type=output_type).images

    def pipeline(self) -> StableDiffusionPipeline:
        """Return a StableDiffusionPipeline of these components, sampling with DDIM on the training schedule."""
        sampler = DDIMScheduler.from_config(self.scheduler.config)
        # built with steps_offset=1 (else it rewrites the config and warns), then given the schedule itself
        pipe = _GuidedAtEveryScale(self.vae, self.text_encoder, self.tokenizer, self.unet,
                                       DDIMScheduler.from_config(sampler.config, steps_offset=1), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.scheduler = sampler
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ----- persistence: the stable-diffusion repo layout, so the same loader serves both -----
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write text_encoder/, tokenizer/, unet/, vae/, scheduler/ and model_index.json like a diffusers SD
        repo, so ``diffusers.StableDiffusionPipeline.from_pretrained(path)`` loads the folder on its own."""
        self.text_encoder.save_pretrained(os.path.join(path, "text_encoder"))
        self.tokenizer.save_pretrained(os.path.join(path, "tokenizer"))
        self.unet.save_pretrained(os.path.join(path, "unet"))
        self.vae.save_pretrained(os.path.join(path, "vae"))
        self.scheduler.save_pretrained(os.path.join(path, "scheduler"))
        write_json(os.path.join(path, MODEL_INDEX), self.model_index())   # last: the folder is complete

    def model_index(self) -> dict:
        """Return the model_index.json of a diffusers StableDiffusionPipeline made of these components.

        The same entries diffusers writes for such a pipeline (no safety checker, no feature extractor),
        except the scheduler: scheduler/ holds the DDPM training schedule, and the index names
        DDIMScheduler, which diffusers builds from that config — the sampler `generate` uses.
        """
        def entry(obj) -> list[str]:                    # [library, class], as diffusers records a component
            return [type(obj).__module__.split(".")[0], type(obj).__name__]
        return {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                "feature_extractor": [None, None], "image_encoder": [None, None],
                "requires_safety_checker": False, "safety_checker": [None, None],
                "scheduler": ["diffusers", DDIMScheduler.__name__], "text_encoder": entry(self.text_encoder),
                "tokenizer": entry(self.tokenizer), "unet": entry(self.unet), "vae": entry(self.vae)}

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, token: str | None = None,
                        dtype: torch.dtype | None = None, subfolder: str | None = None) -> "ImageGenerator":
        """Load from a hub id (stabilityai/stable-diffusion-2-1-base) or a local SD-layout folder; subfolder:
        where the SD layout sits inside it, e.g. ``ImageGenerator.from_pretrained(photochat_repo, subfolder="sd")``
        loads only the image generator of a PhotoChatModel on the Hub.

        dtype: of every component; None loads them all in float32, as diffusers does (transformers 5 alone would
        keep the text encoder in its stored dtype, e.g. the float16 of the shipped toy SD)."""
        kw = {"token": token}
        tdtype = {"dtype": dtype if dtype is not None else torch.float32}
        ddtype = {"torch_dtype": dtype} if dtype is not None else {}
        if subfolder and os.path.isdir(os.path.join(source, subfolder)):
            source, subfolder = os.path.join(source, subfolder), None
        sub = (lambda part: f"{subfolder}/{part}") if subfolder else (lambda part: part)   # noqa: E731
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder=sub("text_encoder"), **kw, **tdtype)
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder=sub("tokenizer"), **kw)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder=sub("unet"), **kw, **ddtype)
        vae = AutoencoderKL.from_pretrained(source, subfolder=sub("vae"), **kw, **ddtype)
        # Training always uses the DDPM forward process; sampling builds DDIM from the same config.
        scheduler = DDPMScheduler.from_pretrained(source, subfolder=sub("scheduler"), **kw)
        return cls(text_encoder, tokenizer, unet, vae, scheduler)

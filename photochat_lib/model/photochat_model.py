"""The end-to-end photo-sharing dialogue model (paper §2.5, eq. 13): L = L_t + α·L_v.

One forward pass over a batch (the keys of `photochat_lib.data.collate`):

1. the image perceptron turns every context photo into 32 visual tokens (eq. 3), spliced into the
   LLM input where the photo stands;
2. the LLM scores the response (eq. 1–2) → L_t;
3. at the caption positions (the tokens between ``[IMG]`` and ``[/IMG]``) the logits go through the
   straight-through Gumbel-softmax (eq. 4–7) → R_LLM, exact one-hots that carry gradient;
4. the dynamic vocabulary transformation matrix maps them into the SD vocabulary and pools them
   (eq. 8–10), and eq. (11) hands that gradient to the SD tokenizer's one-hot caption R_SD;
5. Stable Diffusion's noise-prediction loss on the target photo (eq. 12) → L_v, whose gradient now
   reaches the LLM through steps 4 → 3.

``mode="pipeline"`` is the baseline of §3.1.4: the caption reaches SD as discrete text (the SD
tokenizer's one-hots with no link to the LLM), so no gradient of L_v can reach the LLM. Its input end
is a switch, ``pipeline_context``. The paper's introduction defines the pipeline model by captions at
*both* ends ("the text dialogue model perceives photos based on the image descriptions from the image
caption model"), and names that as its first weakness: captions "lose visual details". So the default
is ``"caption"``: a context photo is written into the LLM's input as its caption (``[IMG] caption[/IMG]``;
the dataset's caption in training and evaluation, the toy classifier's reading of a photo a user sends
in chat). ``"perceptron"`` gives the pipeline the end-to-end model's Q-Former input end, so that the
two modes differ only at the output end: what the image loss's gradient does (the study in
``benchmarks/when_end2end_helps.py``).

Which caption eq. (11) tokenizes — the paper leaves open whether R_SD (and the sets T_LLM, T_SD of
eq. 10) come from the *gold* caption or from the caption the LLM *sampled* under teacher forcing.
``sd_caption_source="gold"`` (default) uses the gold caption: SD always trains on the right text and
the LLM is pushed towards the gold caption's tokens. ``"sampled"`` decodes the Gumbel samples,
re-tokenizes them for SD, and builds T_LLM/T_SD from them, so SD sees what the LLM wrote.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from photochat_lib.utils.atomic import write_json
from photochat_lib.utils.handed_down import checkpoint_loader
from photochat_lib.data.collate import CONTEXT_PHOTOS
from photochat_lib.model.bridge import BRIDGES, PositionalBridge
from photochat_lib.model.dvtm import dvtm_average, straight_through_sd
from photochat_lib.model.hub import find_broken_file, is_training_checkpoint, push_to_hub, resolve_model_path
from photochat_lib.model.image_generator import ImageGenerator
from photochat_lib.model.image_perceptron import ImagePerceptron, build_image_perceptron
from photochat_lib.model.stgs import gumbel_softmax_st
from photochat_lib.model.text_generator import LOSS_REDUCTIONS, load_llm, placeholder_id, splice_visual_tokens, text_loss

MODES = ("end2end", "pipeline")


@dataclass
class PhotoChatConfig:
    mode: str = "end2end"              # "end2end" (gradient LLM ← SD) or "pipeline" (baseline, §3.1.4)
    alpha: float = 1.0                 # α of eq. (13); the paper uses 1
    dvtm_impl: str = "batched"         # "dense" | "sparse" | "batched" (eq. 9–10 implementations)
    sd_caption_source: str = "gold"    # "gold" | "sampled": which caption eq. (11) tokenizes
    pipeline_context: str = "caption"  # pipeline only: context photos reach the LLM as "caption" text or
                                       # through the "perceptron" (eq. 3); end2end always uses the perceptron
    bridge: str = "sentence"           # how L_v's gradient reaches the caption: "sentence" (the paper's pooled
                                       # DVTM, eq. 10-11) | "positional" (per position, vocabulary-wide: bridge.py)
    loss_reduction: str = "mean"       # "mean": L_t per scored token, L_v per latent value (our default) |
                                       # "sum": the paper's eq. (2) and (12), per response and per photo
    preset: str = "toy"                # the preset the model was built from (informational)
    extra: dict = field(default_factory=dict)  # free-form notes saved with the model

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.sd_caption_source not in ("gold", "sampled"):
            raise ValueError(f"sd_caption_source must be 'gold' or 'sampled', got {self.sd_caption_source!r}")
        if self.bridge not in BRIDGES:
            raise ValueError(f"bridge must be one of {BRIDGES}, got {self.bridge!r}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")
        if self.pipeline_context not in CONTEXT_PHOTOS:
            raise ValueError(f"pipeline_context must be one of {CONTEXT_PHOTOS}, got {self.pipeline_context!r}")


HUB_LOAD_KWARGS = ("cache_dir", "force_download", "local_files_only")   # passed on to the Hub download
ACCEPTED_LOAD_KWARGS = ("low_cpu_mem_usage", "use_safetensors", "trust_remote_code")   # nothing to change here:
# weights load as transformers and diffusers load them (low-memory, safetensors), and no remote code exists


def _one_device(device_map):
    """Return device_map as one device (or "auto"): a PhotoChatModel lives on one device. {"": d} is d;
    a split across devices ("balanced", per-module dicts) is refused in one line."""
    if isinstance(device_map, dict):
        if set(device_map) != {""}:
            raise ValueError(f"device_map={device_map!r} splits the model across devices; a PhotoChatModel loads onto "
                             f"one: pass 'auto', a device ('cpu', 'cuda:0') or {{'': device}}")
        device_map = device_map[""]
    if isinstance(device_map, int):
        device_map = f"cuda:{device_map}"
    if isinstance(device_map, str) and device_map in ("balanced", "balanced_low_0", "sequential"):
        raise ValueError(f"device_map={device_map!r} splits the model across devices; a PhotoChatModel loads onto "
                         f"one: pass 'auto', a device ('cpu', 'cuda:0') or {{'': device}}")
    if isinstance(device_map, str) and device_map != "auto":
        try:
            torch.device(device_map)
        except RuntimeError:
            raise ValueError(f"device_map={device_map!r} is not a device; pass 'auto', 'cpu', 'cuda', 'cuda:0' or "
                             f"{{'': device}}") from None
    return device_map


@dataclass
class PhotoChatOutput:
    loss: torch.Tensor                 # L = L_t + α L_v (eq. 13)
    text_loss: torch.Tensor            # L_t (eq. 2)
    image_loss: torch.Tensor           # L_v (eq. 12); 0 when the batch shares no photo
    logits: torch.Tensor               # (B, T, |V_LLM|)
    sampled_captions: list[str] | None = None  # the STGS captions decoded (for inspection)


class PhotoChatModel(nn.Module):
    """LLM + image perceptron + image generator, trained jointly with L = L_t + α L_v."""

    def __init__(self, llm, tokenizer, perceptron: ImagePerceptron, image_generator: ImageGenerator,
                 config: PhotoChatConfig | None = None):
        super().__init__()
        self.llm, self.tokenizer = llm, tokenizer
        self.perceptron, self.image_generator = perceptron, image_generator
        self.config = config or PhotoChatConfig()
        self.source_folder: str | None = None    # the local folder from_pretrained read (its metrics.json)
        self.captioner = None                     # image -> caption: the pipeline's caption model, handed in by
                                                  # the preset layer (`presets.captioner_for`); not saved

    @property
    def context_photos(self) -> str:
        """How context photos reach the LLM: "perceptron" (end2end, §2.3) or the pipeline's `pipeline_context`."""
        return "perceptron" if self.config.mode == "end2end" else self.config.pipeline_context

    @property
    def device(self) -> torch.device:
        """Device of the LLM's parameters."""
        return self.llm.get_input_embeddings().weight.device

    # ----- step 1–2: perception and text -----
    def input_embeddings(self, input_ids, context_pixel_values, context_image_batch_index):
        """Return (B, T, D) LLM input embeddings with the context photos' visual tokens spliced in."""
        embeds = self.llm.get_input_embeddings()(input_ids)                          # (B, T, D)
        if context_pixel_values is None or context_pixel_values.shape[0] == 0:
            return embeds
        pixels = context_pixel_values.to(self.perceptron.device, self.perceptron.dtype)
        visual = self.perceptron(pixels)                                             # (N, 32, D) eq. (3)
        return splice_visual_tokens(embeds, input_ids, placeholder_id(self.tokenizer),
                                    visual, context_image_batch_index.to(input_ids.device))

    # ----- step 3: the caption logits -----
    @staticmethod
    def caption_logits(logits: torch.Tensor, caption_positions: torch.Tensor, n_captions: int):
        """Return ((N_cap, m, V) logits that predict each caption token, (N_cap, m) bool mask)."""
        rows, cols = (caption_positions >= 0).nonzero(as_tuple=True)                 # label positions
        caps = caption_positions[rows, cols]                                          # caption index
        order = torch.argsort(caps * caption_positions.shape[1] + cols)               # by caption, then position
        rows, cols, caps = rows[order], cols[order], caps[order]
        counts = torch.bincount(caps, minlength=n_captions)                           # (N_cap,)
        m = int(counts.max()) if counts.numel() else 0
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(caps.numel(), device=caps.device) - starts[caps]          # rank within caption
        out = logits.new_zeros(n_captions, m, logits.shape[-1])                       # (N_cap, m, V)
        out[caps, slot] = logits[rows, cols - 1]          # logits at p-1 predict the label at p
        mask = torch.zeros(n_captions, m, dtype=torch.bool, device=logits.device)
        mask[caps, slot] = True
        return out, mask

    # ----- step 3–5: the image loss -----
    def image_loss(self, logits, batch, tau: float, generator: torch.Generator | None = None,
                   gumbel_generator: torch.Generator | None = None):
        """Return (L_v, sampled captions or None) for the batch's target photos.

        generator draws the Gumbel noise and then SD's (VAE sample, noise, timestep); gumbel_generator, when
        given, draws the Gumbel noise instead, so a gradient probe can vary one draw with the other held fixed."""
        gen = self.image_generator
        targets = batch["target_pixel_values"]
        if targets.shape[0] == 0:
            return logits.sum() * 0.0, None
        targets = targets.to(gen.unet.device, gen.unet.dtype)
        if self.config.mode == "pipeline":
            # §3.1.4: discrete text into SD — the one-hots have no path back to the LLM.
            r_sd = gen.one_hot(batch["sd_input_ids"].to(gen.unet.device))
            return gen.image_loss(r_sd, targets, generator, reduction=self.config.loss_reduction), None
        cap_logits, mask = self.caption_logits(logits, batch["caption_positions"].to(logits.device),
                                               targets.shape[0])                    # (N, m, V1)
        cap_logits = cap_logits if cap_logits.dtype == torch.float64 else cap_logits.float()  # float32, or a float64 probe
        r_llm = gumbel_softmax_st(cap_logits, tau, generator=gumbel_generator or generator)  # eq. (4)–(7)
        sampled = None
        if self.config.sd_caption_source == "gold":
            llm_ids, sd_ids = batch["llm_caption_ids"], batch["sd_caption_ids"]
            sd_input_ids = batch["sd_input_ids"].to(gen.unet.device)
        else:
            sampled, llm_ids, sd_ids, sd_input_ids = self._retokenize(r_llm, mask)
        if self.config.bridge == "positional":                                       # per position (bridge.py)
            r_sd = self.positional_bridge(r_llm, gen.one_hot(sd_input_ids).to(r_llm.dtype), llm_ids, sd_ids)
            return gen.image_loss(r_sd, targets, generator, reduction=self.config.loss_reduction), sampled
        avg = dvtm_average(r_llm, [t.to(r_llm.device) for t in llm_ids], [t.to(r_llm.device) for t in sd_ids],
                           gen.vocab_size, impl=self.config.dvtm_impl, r_mask=mask)  # eq. (9)–(10): (N, V2)
        r_sd = straight_through_sd(gen.one_hot(sd_input_ids).to(avg.dtype), avg)     # eq. (11): (N, n, V2)
        return gen.image_loss(r_sd, targets, generator, reduction=self.config.loss_reduction), sampled  # eq. (12)

    @property
    def positional_bridge(self) -> PositionalBridge:
        """The positional bridge of this model's two tokenizers (its vocabulary-wide matrix built on first use)."""
        bridge = getattr(self, "_positional_bridge", None)
        if bridge is None or bridge.M.device != self.device:
            gen = self.image_generator
            bridge = PositionalBridge(self.tokenizer, gen.tokenizer, self.llm.get_output_embeddings().weight.shape[0],
                                      gen.vocab_size)
            bridge.M = bridge.M.to(self.device)
            self._positional_bridge = bridge
        return bridge

    def _retokenize(self, r_llm: torch.Tensor, mask: torch.Tensor):
        """Decode the sampled one-hots and re-tokenize them for SD (sd_caption_source='sampled')."""
        gen = self.image_generator
        tokens = r_llm.detach().argmax(-1)                                           # (N, m)
        texts, llm_ids, sd_ids = [], [], []
        for row, keep in zip(tokens, mask):
            ids = row[keep]
            texts.append(self.tokenizer.decode(ids.tolist(), skip_special_tokens=True).strip())
            llm_ids.append(ids)
            sd = gen.tokenizer(texts[-1], add_special_tokens=False).input_ids[: gen.max_length - 2]
            sd_ids.append(torch.tensor(sd, dtype=torch.long))
        return texts, llm_ids, sd_ids, gen.tokenize(texts)

    def forward(self, batch: dict, tau: float = 1.0, generator: torch.Generator | None = None,
                gumbel_generator: torch.Generator | None = None) -> PhotoChatOutput:
        """Return the losses of eq. (13) for one collated batch at Gumbel temperature tau (generators: `image_loss`)."""
        input_ids = batch["input_ids"].to(self.device)
        embeds = self.input_embeddings(input_ids, batch.get("context_pixel_values"),
                                       batch.get("context_image_batch_index"))
        out = self.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(self.device))
        logits = out.logits                                                           # (B, T, V1) eq. (1)
        lt = text_loss(logits, batch["labels"].to(self.device), self.config.loss_reduction)  # eq. (2)
        lv, sampled = self.image_loss(logits, batch, tau, generator, gumbel_generator)
        loss = lt + self.config.alpha * lv.to(lt.device)                              # eq. (13)
        return PhotoChatOutput(loss, lt, lv, logits, sampled)

    # ----- persistence: one folder per component, each in its upstream repo layout -----
    def save_pretrained(self, path: str | os.PathLike, components: tuple[str, ...] | None = None,
                        max_shard_size: str | int | None = None, safe_serialization: bool = True,
                        push_to_hub: bool = False, repo_id: str | None = None, **push_kwargs) -> None:
        """Write llm/ (model + tokenizer), perceptron/, sd/ (diffusers layout) and photochat.json
        (only the named `components` of those three folders, when given); max_shard_size: transformers' limit
        on one weights file of llm/ and perceptron/ (default: theirs). Weights are always safetensors
        (safe_serialization=False is refused); push_to_hub=True then uploads the model to `repo_id` (default:
        the folder's name) as `push_to_hub` does, with push_kwargs (private, token, commit_message, run_dir)."""
        if not safe_serialization:
            raise ValueError("save_pretrained(safe_serialization=False): PhotoChatModel saves only safetensors "
                             "(pickled weights can run code when loaded)")
        unknown = sorted(set(push_kwargs) - ({"private", "token", "commit_message", "run_dir"} if push_to_hub else set()))
        if unknown:
            raise TypeError(f"PhotoChatModel.save_pretrained() got unexpected keyword argument(s) {', '.join(unknown)}")
        if push_to_hub:
            self.save_pretrained(path, components, max_shard_size)
            return self.push_to_hub(repo_id or Path(path).name, **push_kwargs)
        os.makedirs(path, exist_ok=True)
        components = components or ("llm", "perceptron", "sd")
        shard = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
        if "llm" in components:
            self.llm.save_pretrained(os.path.join(path, "llm"), **shard)
            self.tokenizer.save_pretrained(os.path.join(path, "llm"))
        if "perceptron" in components:
            self.perceptron.save_pretrained(os.path.join(path, "perceptron"), **shard)
        if "sd" in components:
            self.image_generator.save_pretrained(os.path.join(path, "sd"))
        write_json(os.path.join(path, "photochat.json"), asdict(self.config))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
                        device_map: str | torch.device | None = None, revision: str | None = None,
                        token: str | None = None, **overrides) -> "PhotoChatModel":
        """Load a folder written by `save_pretrained`, or a Hub repo holding one (`hub.resolve_model_path`),
        through the same loaders as the hub presets.

        dtype: of the weights once loaded (a torch dtype or its name; ``torch_dtype=`` is accepted too);
        default float32 for the toy preset (whose shipped end-to-end model is stored in float16 to halve
        its size), else as stored. device_map: a device to move the model to, or "auto" (CUDA if present).
        A training run's ``checkpoint-N/`` loads too (`training.checkpoints.load_training_checkpoint`: rebuilt from the run's
        config.json, LoRA merged). A missing folder, a folder that is not a model, a broken photochat.json or
        a truncated weights file raise FileNotFoundError / ValueError naming the folder or file.
        """
        dtype = overrides.pop("torch_dtype", dtype)
        if isinstance(dtype, str):                   # "float16", or "auto": as stored
            dtype = None if dtype == "auto" else getattr(torch, dtype)
        hub = {k: overrides.pop(k) for k in HUB_LOAD_KWARGS if k in overrides}
        for name in ACCEPTED_LOAD_KWARGS:            # transformers habits that change nothing here
            overrides.pop(name, None)
        unknown = sorted(set(overrides) - {f.name for f in fields(PhotoChatConfig)})
        if unknown:                                  # name the argument, never the file
            raise TypeError(f"PhotoChatModel.from_pretrained() got unexpected keyword argument(s) {', '.join(unknown)}; "
                            f"it takes dtype, device_map, revision, token, {', '.join(HUB_LOAD_KWARGS)} and "
                            f"PhotoChatConfig's fields ({', '.join(f.name for f in fields(PhotoChatConfig))})")
        device_map = _one_device(device_map)
        folder = resolve_model_path(path, revision=revision, token=token, **hub)
        if is_training_checkpoint(folder):           # training's loader, handed down (never imported from here)
            model = checkpoint_loader()(folder, **overrides)
            return model._placed(folder, dtype, device_map)
        config_file = os.path.join(folder, "photochat.json")
        if not os.path.isfile(config_file):
            hint = (f"; a training run keeps its model in {os.path.join(path, 'final')}"
                    if os.path.isfile(os.path.join(folder, "final", "photochat.json")) else "")
            raise FileNotFoundError(f"{path} is not a PhotoChatModel folder: it has no photochat.json{hint}")
        try:
            with open(config_file) as f:
                config = PhotoChatConfig(**{**json.load(f), **overrides})
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{config_file} is broken: {e}") from None
        missing = [c + "/" for c in ("llm", "perceptron", "sd") if not os.path.isdir(os.path.join(folder, c))]
        if missing:                              # never let a loader take "<folder>/llm" for a Hub id
            raise FileNotFoundError(f"{path} is not a complete PhotoChatModel folder: it lacks {', '.join(missing)}")
        if dtype is None and config.preset == "toy":
            dtype = torch.float32
        try:
            llm, tok, perceptron, gen = load_components(
                llm=os.path.join(folder, "llm"), perceptron=os.path.join(folder, "perceptron"),
                sd=os.path.join(folder, "sd"), dtype=dtype, token=token)
        except Exception as e:
            broken = find_broken_file(folder)    # name the file (a copy cut short, a hand-edited config)
            if broken is None:
                raise
            raise ValueError(f"{broken[0]}: {broken[1]}") from e
        return cls(llm, tok, perceptron, gen, config)._placed(folder, None, device_map)

    def _placed(self, folder: str | os.PathLike, dtype: torch.dtype | None,
                device_map: str | torch.device | None) -> "PhotoChatModel":
        """Return self, remembering the folder it was read from, cast to dtype and moved per device_map."""
        self.source_folder = str(folder)
        if dtype is not None:
            self.to(dtype)
        if device_map is not None:
            self.to(("cuda" if torch.cuda.is_available() else "cpu") if device_map == "auto" else device_map)
        return self

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload PhotoChatModel", run_dir: str | os.PathLike | None = None):
        """Upload this model to a Hub model repo (created if missing) with a README.md model card; run_dir: the
        training run it came from (its config.json and eval/metrics.json go into the card). See `hub.push_to_hub`."""
        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message,
                           run_dir=run_dir)


def alpha_in(alpha: float, reduction: str, tokens_per_response: float, latent_values: int) -> float:
    """Return α of eq. (13) given in `reduction`'s units ("mean" | "sum") as the other reduction's α.

    L_t(sum) ≈ k L_t(mean) with k the scored tokens per response, and L_v(sum) = d L_v(mean) with d the latent
    values per photo (C·h·w). The same balance of the two gradients needs α_sum d / k = α_mean, so
    α_mean = α_sum d / k. The toy (k ≈ 17, d = 4·16·16 = 1024): α_mean 1 is α_sum ≈ 1/60; the paper's α_sum 1
    is α_mean ≈ 60.
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
    if not (tokens_per_response > 0 and latent_values > 0):
        raise ValueError(f"tokens_per_response and latent_values must be > 0, got {tokens_per_response}, {latent_values}")
    ratio = latent_values / tokens_per_response                              # d / k
    return alpha * ratio if reduction == "sum" else alpha / ratio


def hf_token() -> str | None:
    """Return the HF token from the environment (never logged)."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


def load_components(llm: str, perceptron: str, sd: str, dtype: torch.dtype | None = None,
                    token: str | None = None):
    """Return (llm, tokenizer, perceptron, image_generator) from hub ids or local folders."""
    token = token if token is not None else hf_token()
    model, tokenizer = load_llm(llm, token=token, dtype=dtype)
    vision = build_image_perceptron(perceptron, model.config.hidden_size, token=token, dtype=dtype)
    generator = ImageGenerator.from_pretrained(sd, token=token, dtype=dtype)
    return model, tokenizer, vision, generator


def llm_gradient_norms(model: PhotoChatModel, batch: dict, tau: float,
                       generator: torch.Generator | None = None) -> dict[str, float]:
    """Return the L2 norms of the LLM's gradients from L_t and from α·L_v alone, at temperature tau.

    From ONE Gumbel and ONE diffusion draw (`generator`): one sample of a heavy-tailed distribution, not the mean
    over draws that training follows (`evaluation.gradient_signal` measures that). 0 in the pipeline, where no
    gradient of L_v reaches the LLM. Used by notebook 06 and benchmarks/when_end2end_helps.py.
    """
    params = [p for p in model.llm.parameters() if p.requires_grad]
    out = model(batch, tau=tau, generator=generator)
    norms = {}
    for name, loss in (("text", out.text_loss), ("image", model.config.alpha * out.image_loss)):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        norms[name] = float(sum(g.double().pow(2).sum() for g in grads if g is not None)) ** 0.5
    norms["ratio"] = norms["image"] / norms["text"] if norms["text"] else float("nan")
    return norms


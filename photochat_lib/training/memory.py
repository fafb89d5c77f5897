"""Training-memory estimator: will a preset's recipe fit one GPU? (`photochat estimate-memory`)

The architectures are built on the META device from the shipped configs (`photochat_lib/configs/`,
no download, a few seconds), so every parameter count is exact. Memory for one training step is

  static  = weights  (frozen: 2 B/param under fp16/bf16, else 4; trained: fp32 master, 4 B/param)
          + grads    (fp32, 4 B per trainable param; kept across gradient-accumulation micro-steps)
          + AdamW    (two fp32 moments, 8 B per trainable param)
  dynamic = activations saved for backward at the recipe's micro-batch, see below
          (+ 2 B per trainable param under autocast: its fp16 weight copy is saved for backward)
  total   = (static + max(dynamic, no-grad transient)) × (1 + fragmentation) + CUDA context/workspace

LoRA adds r·(in + out) parameters per adapted Linear (A: r×in, B: out×r, no bias), counted from the
target modules' in/out features; this equals peft's count (tests/test_memory.py checks it) without
calling peft. Activations (estimates, not measurements on a GPU):
- transformers (LLM, Q-Former, ViT, CLIP text): Korthikanti et al. 2022 ("Reducing Activation
  Recomputation in Large Transformer Models", §4.1) give s·b·h·(34 + 5·a·s/h) bytes per fp16 GPT layer:
  15·sbh for attention and norms, 19·sbh for the 4h MLP, 5·a·s²·b for the scores. We write the MLP as
  3·sbh + 4·sbi (plain) or 2·sbh + 8·sbi (SwiGLU: gate, up, SiLU(gate), product) and drop the score
  term under memory-efficient attention. With gradient checkpointing a layer keeps only its input
  (2·sbh) and one layer is recomputed at a time. Plus the LLM logits (fp16, fp32 copy, fp32 softmax).
- UNet: MEASURED on the meta device: one forward pass at the recipe's batch and latent size while
  `torch.autograd.graph.saved_tensors_hooks` records every tensor autograd keeps for backward
  (parameters excluded, views deduplicated). Attention is replaced by a stand-in that saves what the
  memory-efficient kernel saves (q, k, v, out, logsumexp). Checkpointing is modelled as diffusers
  does it: each ResnetBlock2D / BasicTransformerBlock keeps its input, one block is recomputed.
- no-grad parts (frozen ViT, VAE encoding of the targets) only need a transient peak (≈ 4 of their
  largest tensors); it happens before the training graph exists, so the total takes the max.
The allocator, cuBLAS/cuDNN workspaces and kernels it cannot see are covered by the 1 GB overhead and
the 10 % fragmentation margin. Treat the result as a planning estimate (±15 %), not a guarantee.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from photochat_lib.presets import PRESET_CONFIGS, load_config, model_kwargs  # noqa: F401 (re-exported)
from photochat_lib.recipe import TrainingRecipe, get_recipe
from photochat_lib.data.tokens import SPECIAL_TOKENS

GB = 2 ** 30                                  # "GB" in this module = GiB, as nvidia-smi's MiB add up
OVERHEAD_GB = 1.0                             # CUDA context + cuBLAS/cuDNN workspace
FRAGMENTATION = 0.10                          # caching-allocator fragmentation margin
KNOWN_GPUS = {"V100 32GB": 31.75, "T4 16GB": 15.0}  # usable GiB (nvidia-smi: 32510 MiB, 15360 MiB)
ADDED_LLM_TOKENS = {"paper": len(SPECIAL_TOKENS), "colab": len(SPECIAL_TOKENS), "toy": 0}  # resized rows


def build_meta_components(preset: str) -> dict[str, nn.Module]:
    """Return {component: module} for the preset, built on the META device (no memory, no download).

    The same builders as training uses: `toy.foundation.build_toy_components` (toy, configs in code) and
    `presets.build_config_components` (colab/paper, the shipped configs).
    """
    from photochat_lib.presets import build_config_components
    from photochat_lib.toy.foundation import build_toy_components
    if preset != "toy" and preset not in PRESET_CONFIGS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESET_CONFIGS)} or 'toy'")
    with torch.device("meta"):
        llm, _, perceptron, gen = (build_toy_components() if preset == "toy"
                                   else build_config_components(preset, device="meta"))
    perceptron.qformer.query_tokens = perceptron.query_tokens          # Q is counted with the Q-Former
    return {"llm": llm, "vision": perceptron.vision_model, "qformer": perceptron.qformer,
            "projection": perceptron.language_projection, "text_encoder": gen.text_encoder,
            "unet": gen.unet, "vae": gen.vae}


def count_params(module: nn.Module) -> int:
    """Return the number of parameters of a module (shared ones once)."""
    return sum(p.numel() for p in module.parameters())


def lora_targets(module: nn.Module, target_modules) -> list[tuple[str, nn.Linear]]:
    """Return the (name, Linear) pairs peft adapts for `target_modules`, matched by peft's own rule."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    config = LoraConfig(target_modules=list(target_modules))
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)
            and check_target_module_exists(config, n) is True]


def lora_param_count(module: nn.Module, rank: int, target_modules) -> int:
    """Return LoRA's extra parameters: sum of r·(in + out) over the adapted Linears (A: r×in, B: out×r; counted
    here rather than by injecting adapters, which would allocate them: the paper's LLM has 224 such Linears)."""
    targets = lora_targets(module, target_modules)
    if not targets:
        raise ValueError(f"LoRA targets {list(target_modules)} match no Linear in {type(module).__name__}")
    return sum(rank * (m.in_features + m.out_features) for _, m in targets)


# ----------------------------------------------------------------------------- activations
def transformer_layer_bytes(tokens: int, seq: int, hidden: int, heads: int, intermediate: int,
                            gated: bool, act_bytes: int, mem_efficient: bool) -> float:
    """Return bytes one transformer layer saves for backward (Korthikanti et al. 2022, adapted)."""
    mlp = 2 * hidden + 8 * intermediate if gated else 3 * hidden + 4 * intermediate
    scores = 0 if mem_efficient else 5 * heads * seq * tokens       # 5·a·s²·b
    return (tokens * (15 * hidden + mlp) + scores) * act_bytes / 2   # formula is for 2-byte activations


def transformer_stack_bytes(layers: int, tokens: int, seq: int, hidden: int, heads: int, intermediate: int,
                            gated: bool, act_bytes: int, mem_efficient: bool, checkpointing: bool) -> float:
    """Return activation bytes of a stack of layers, with or without gradient checkpointing."""
    one = transformer_layer_bytes(tokens, seq, hidden, heads, intermediate, gated, act_bytes, mem_efficient)
    if checkpointing:
        return layers * tokens * hidden * act_bytes + one            # inputs kept + one layer recomputed
    return layers * one


class _MemEfficientAttention(torch.autograd.Function):
    """Meta stand-in for SDPA's memory-efficient kernel: saves q, k, v, out and the logsumexp only."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(q.shape[:-1] + (v.shape[-1],))                          # (B, heads, Sq, Dv)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)    # (B, heads, Sq)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the measurement only does a forward pass
        raise NotImplementedError


@contextlib.contextmanager
def _memory_efficient_sdpa():
    """Temporarily route F.scaled_dot_product_attention through `_MemEfficientAttention`."""
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = (
        lambda q, k, v, *args, **kwargs: _MemEfficientAttention.apply(q, k, v))
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def measure_unet_activation_bytes(unet: nn.Module, batch: int, latent_size: int, context_len: int,
                                  dtype: torch.dtype, checkpointing: bool, mem_efficient: bool,
                                  context_requires_grad: bool) -> int:
    """Return bytes a meta-device UNet saves for backward (requires_grad flags on `unet` decide what)."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    param_ids = {id(p) for p in unet.parameters()}
    seen, keep, stack = set(), [], []
    totals = {"outside": 0, "inputs": 0, "max_unit": 0}
    unit_bytes: dict[int, int] = {}

    def pack(t):
        base = t._base if t._base is not None else t
        keep.append(base)                                   # keep alive so ids stay unique
        if id(base) not in param_ids and id(base) not in seen:
            seen.add(id(base))
            nbytes = base.numel() * base.element_size()
            if stack:
                unit_bytes[stack[-1]] = unit_bytes.get(stack[-1], 0) + nbytes
            else:
                totals["outside"] += nbytes
        return t

    def pre(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        totals["inputs"] += x.numel() * x.element_size()    # what a checkpointed block keeps
        stack.append(len(unit_bytes)); unit_bytes[stack[-1]] = 0

    def post(module, args, kwargs, out):
        stack.pop()

    units = [m for m in unet.modules() if isinstance(m, (ResnetBlock2D, BasicTransformerBlock))]
    handles = [h for m in units for h in (m.register_forward_pre_hook(pre, with_kwargs=True),
                                          m.register_forward_hook(post, with_kwargs=True))]
    in_ch, ctx_dim = unet.config.in_channels, unet.config.cross_attention_dim
    latents = torch.empty(batch, in_ch, latent_size, latent_size, device="meta", dtype=dtype)  # (B, 4, h, w)
    context = torch.empty(batch, context_len, ctx_dim, device="meta", dtype=dtype,
                          requires_grad=context_requires_grad)                              # (B, 77, D)
    timesteps = torch.zeros(batch, dtype=torch.long, device="meta")
    attention = _memory_efficient_sdpa() if mem_efficient else contextlib.nullcontext()
    try:
        with attention, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unet(latents, timesteps, encoder_hidden_states=context)
    finally:
        for h in handles:
            h.remove()
    if checkpointing:  # block inputs kept + one block's activations recomputed at a time
        return totals["outside"] + totals["inputs"] + max(unit_bytes.values(), default=0)
    return totals["outside"] + sum(unit_bytes.values())


# ----------------------------------------------------------------------------- estimate
@dataclass
class ComponentMemory:
    """Memory of one component during a training step (GB = 2**30 bytes)."""

    name: str                 # component: llm, vision, qformer, projection, text_encoder, unet, vae
    params: int               # parameters of the pretrained architecture (LLM incl. added token rows)
    trainable: int            # parameters the optimizer updates (all, LoRA's, or new token rows)
    mode: str                 # "train" | "freeze" | "lora"
    weight_dtype: str         # storage of the (base) weights
    weights_gb: float         # base weights (+ fp32 LoRA weights)
    grads_gb: float           # fp32 gradients of the trainable parameters
    optimizer_gb: float       # AdamW's two fp32 moments
    activations_gb: float     # saved for backward at the micro-batch (+ autocast weight copies)
    transient_gb: float = 0.0  # no-grad peak (frozen encoders), freed before the training graph


@dataclass
class MemoryEstimate:
    """The estimator's answer: per-component rows, totals and fits; `table()` prints it."""

    preset: str                                  # which architectures
    recipe: TrainingRecipe                       # what was estimated
    components: list[ComponentMemory]            # one row per component
    gpu_gb: float                                # the GPU asked about
    overhead_gb: float = OVERHEAD_GB             # CUDA context + workspaces
    fragmentation: float = FRAGMENTATION         # allocator margin on static + dynamic
    static_gb: float = field(init=False)         # weights + grads + optimizer
    activations_gb: float = field(init=False)    # max(saved activations, no-grad transient)
    total_gb: float = field(init=False)          # the estimated peak

    def __post_init__(self):
        rows = self.components
        self.static_gb = sum(r.weights_gb + r.grads_gb + r.optimizer_gb for r in rows)
        self.activations_gb = max(sum(r.activations_gb for r in rows), max(r.transient_gb for r in rows))
        self.total_gb = (self.static_gb + self.activations_gb) * (1 + self.fragmentation) + self.overhead_gb

    def fits(self, gpu_gb: float | None = None) -> bool:
        """Return whether the estimated peak fits a GPU of `gpu_gb` GB (default: the one asked about)."""
        return self.total_gb <= (self.gpu_gb if gpu_gb is None else gpu_gb)

    def fit_lines(self) -> list[str]:
        """Return one 'fits / does NOT fit' line per known GPU and for the GPU asked about."""
        gpus = dict(KNOWN_GPUS, **{f"--gpu-gb {self.gpu_gb:g}": self.gpu_gb})
        return [f"{name:<16} ({gb:5.2f} GB usable): {'fits' if self.fits(gb) else 'does NOT fit'}, "
                f"margin {gb - self.total_gb:+.2f} GB" for name, gb in gpus.items()]

    def table(self) -> str:
        """Return the human-readable table with totals and fit lines."""
        r = self.recipe
        head = (f"{'component':<13}{'params':>9}{'trainable':>11}  {'mode':<7}{'weights':<8}"
                f"{'weights GB':>11}{'grads GB':>9}{'optim GB':>9}{'activ. GB':>10}")
        lines = [f"preset {self.preset}: mixed_precision={r.mixed_precision}, micro-batch {r.micro_batch_size} "
                 f"× {r.grad_accum_steps} accumulation = {r.effective_batch_size}, text {r.max_text_length} tokens, "
                 f"{r.max_context_images} context photos (the collator's limits), "
                 f"images {r.image_resolution}², checkpointing llm={r.llm_gradient_checkpointing} "
                 f"unet={r.unet_gradient_checkpointing}", head, "-" * len(head)]
        for c in self.components:
            lines.append(f"{c.name:<13}{_human(c.params):>9}{_human(c.trainable):>11}  {c.mode:<7}{c.weight_dtype:<8}"
                         f"{c.weights_gb:>11.2f}{c.grads_gb:>9.2f}{c.optimizer_gb:>9.2f}{c.activations_gb:>10.2f}")
        tot = lambda key: sum(getattr(c, key) for c in self.components)  # noqa: E731
        lines += ["-" * len(head),
                  f"{'sum':<13}{_human(tot('params')):>9}{_human(tot('trainable')):>11}  {'':<15}"
                  f"{tot('weights_gb'):>11.2f}{tot('grads_gb'):>9.2f}{tot('optimizer_gb'):>9.2f}{tot('activations_gb'):>10.2f}",
                  f"no-grad transient peak (VAE encode / frozen ViT): {max(c.transient_gb for c in self.components):.2f} GB "
                  "(before the training graph; the total takes the max)",
                  f"static {self.static_gb:.2f} + activations {self.activations_gb:.2f}, "
                  f"+{self.fragmentation:.0%} fragmentation, +{self.overhead_gb:.1f} CUDA context "
                  f"= TOTAL {self.total_gb:.2f} GB (estimate)"]
        return "\n".join(lines + self.fit_lines())

    def to_dict(self) -> dict:
        """Return the estimate as JSON-able data."""
        out = asdict(self)
        out["fits"] = {name: self.fits(gb) for name, gb in dict(KNOWN_GPUS, requested=self.gpu_gb).items()}
        return out


def _human(n: int) -> str:
    """Return a parameter count as 6.74B / 105.1M / 12.3K."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if unit == "B" else f"{n / size:.1f}{unit}"
    return str(n)


def _row(name: str, module: nn.Module, mode: str, recipe: TrainingRecipe, extra_trainable: int = 0,
         activations: float = 0.0, transient: float = 0.0) -> ComponentMemory:
    """Return a component's row from its mode: bytes per parameter for weights, grads and AdamW."""
    params, frozen_b = count_params(module), recipe.frozen_weight_bytes
    autocast = recipe.mixed_precision != "no"
    if mode == "train":
        trainable, weights, dtype = params, params * 4, "fp32"
    else:
        lora = lora_param_count(module, recipe.lora_spec(name).rank, recipe.lora_spec(name).target_modules) \
            if mode == "lora" else 0
        trainable = lora + extra_trainable
        weights, dtype = params * frozen_b + trainable * 4, {2: "fp16", 4: "fp32"}[frozen_b]
        if frozen_b == 2 and recipe.mixed_precision == "bf16":
            dtype = "bf16"
    activations += trainable * 2 * autocast                   # fp16 copies autocast saves for backward
    return ComponentMemory(name, params, trainable, mode, dtype, weights / GB, trainable * 4 / GB,
                           trainable * 8 / GB, activations / GB, transient / GB)


def estimate(preset: str, recipe: TrainingRecipe | None = None, gpu_gb: float = 32.0,
             micro_batch: int | None = None) -> MemoryEstimate:
    """Return the training-memory estimate of `preset` under `recipe` (default: the preset's)."""
    recipe = get_recipe(preset) if recipe is None else recipe
    if micro_batch is not None:
        recipe = replace(recipe, micro_batch_size=micro_batch)
    parts = build_meta_components(preset)
    llm, vit, qf, te, unet = (parts[k] for k in ("llm", "vision", "qformer", "text_encoder", "unet"))
    modes, act = recipe.modes(), 2 if recipe.mixed_precision != "no" else 4
    dtype = torch.float32 if act == 4 else (torch.bfloat16 if recipe.mixed_precision == "bf16" else torch.float16)
    b, s, me = recipe.micro_batch_size, recipe.max_text_length, recipe.memory_efficient_attention
    # A component needs saved activations if it, or anything feeding it, is trained (eq. 13's gradient path).
    order = ["vision", "qformer", "projection", "llm", "text_encoder", "unet"]
    grad = {name: any(modes[n] != "freeze" for n in order[: i + 1]) for i, name in enumerate(order)}
    grad["llm"] |= recipe.train_new_token_rows

    lc, vc, qc, tc = llm.config, vit.config, qf.config, te.config
    n_img = b * recipe.max_context_images                      # context photos per micro-batch
    patches = (vc.image_size // vc.patch_size) ** 2 + 1        # ViT tokens incl. [CLS]
    n_query = qf.query_tokens.shape[1]
    vit_layer = lambda bytes_: transformer_layer_bytes(n_img * patches, patches, vc.hidden_size,  # noqa: E731
                                                       vc.num_attention_heads, vc.intermediate_size, False, bytes_, me)
    vit_act = transformer_stack_bytes(vc.num_hidden_layers, n_img * patches, patches, vc.hidden_size,
                                      vc.num_attention_heads, vc.intermediate_size, False, act, me, False)
    qf_act = transformer_stack_bytes(qc.num_hidden_layers, n_img * n_query, n_query, qc.hidden_size,
                                     qc.num_attention_heads, qc.intermediate_size, False, act, me, False)
    n_cross = -(-qc.num_hidden_layers // qc.cross_attention_frequency)
    qf_act += n_img * patches * act * (qc.encoder_hidden_size + 2 * n_cross * qc.hidden_size)  # ViT out, K, V
    proj_act = n_img * n_query * qc.hidden_size * act          # projection input
    llm_act = transformer_stack_bytes(lc.num_hidden_layers, b * s, s, lc.hidden_size, lc.num_attention_heads,
                                      lc.intermediate_size, True, act, me, recipe.llm_gradient_checkpointing)
    llm_act += b * s * lc.vocab_size * (act + 4 + 4)           # logits, fp32 copy, fp32 log-softmax
    llm_act += b * recipe.sd_max_length * lc.vocab_size * 12   # eq. (6)-(7): Gumbel logits, softmax, one-hot
    m = recipe.sd_max_length
    te_act = transformer_stack_bytes(tc.num_hidden_layers, b * m, m, tc.hidden_size, tc.num_attention_heads,
                                     tc.intermediate_size, False, act, me,
                                     recipe.text_encoder_gradient_checkpointing)
    te_act += b * m * tc.vocab_size * act                      # eq. (11): one-hot R_SD @ token embedding

    unet = nn.Module.to(unet, dtype)  # nn.Module's .to: diffusers' override warns about fp32 modules
    targets = {id(mod.weight) for _, mod in lora_targets(unet, recipe.unet_lora.target_modules)} \
        if modes["unet"] == "lora" else set()
    for p in unet.parameters():  # LoRA's A keeps its Linear's input: emulate by a grad-requiring weight
        p.requires_grad_(modes["unet"] == "train" or id(p) in targets)
    unet_act = measure_unet_activation_bytes(
        unet, b, recipe.image_resolution // 8, m, dtype, recipe.unet_gradient_checkpointing, me,
        context_requires_grad=grad["text_encoder"]) if grad["unet"] else 0
    vae_c0 = parts["vae"].config.block_out_channels[0]
    vae_transient = 4 * b * vae_c0 * recipe.image_resolution ** 2 * act   # ≈ 4 full-resolution feature maps

    h, new_rows = lc.hidden_size, ADDED_LLM_TOKENS[preset] * 2   # embedding row + lm_head row per new token
    rows = [
        _row("llm", llm, modes["llm"], recipe, h * new_rows * recipe.train_new_token_rows,
             llm_act if grad["llm"] else 0, 0 if grad["llm"] else transformer_layer_bytes(
                 b * s, s, h, lc.num_attention_heads, lc.intermediate_size, True, act, me)),
        _row("vision", vit, modes["vision"], recipe, activations=vit_act if grad["vision"] else 0,
             transient=0 if grad["vision"] else vit_layer(act)),
        _row("qformer", qf, modes["qformer"], recipe, activations=qf_act if grad["qformer"] else 0),
        _row("projection", parts["projection"], modes["projection"], recipe,
             activations=proj_act if grad["projection"] else 0),
        _row("text_encoder", te, modes["text_encoder"], recipe, activations=te_act if grad["text_encoder"] else 0),
        _row("unet", unet, modes["unet"], recipe, activations=unet_act),
        _row("vae", parts["vae"], "freeze", recipe, transient=vae_transient),
    ]
    return MemoryEstimate(preset, recipe, rows, gpu_gb)

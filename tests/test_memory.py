"""Tests of the memory estimator (photochat_lib/training/memory.py), the shipped configs and the recipes."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest
import torch

from photochat_lib.training import budget, memory
from photochat_lib.training.memory import (KNOWN_GPUS, PRESET_CONFIGS, build_meta_components, count_params, estimate,
                                  load_config, lora_param_count, lora_targets, measure_unet_activation_bytes,
                                  transformer_layer_bytes)
from photochat_lib.recipe import RECIPES, SD_ATTENTION, TrainingRecipe, get_recipe

V100, T4 = KNOWN_GPUS["V100 32GB"], KNOWN_GPUS["T4 16GB"]


@pytest.fixture(scope="module")
def paper_parts():
    return build_meta_components("paper")


@pytest.fixture(scope="module")
def paper_estimate():
    return estimate("paper")


@pytest.fixture(scope="module")
def colab_estimate():
    return estimate("colab")


def _saved_bytes(model: torch.nn.Module, **inputs) -> int:
    """Return bytes of the distinct non-parameter storages autograd saves in one real CPU forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs)
    return sum(seen.values())


# ------------------------------------------------------------------ configs and parameter counts
def test_every_config_names_its_source_and_loads():
    names = {n for preset in PRESET_CONFIGS.values() for n in preset.values()} | {"sd21base_scheduler"}
    for name in names:
        cfg = load_config(name)
        assert cfg["_source"], name
        assert not any(k.startswith("_") for k in memory.model_kwargs(cfg))
    with pytest.raises(FileNotFoundError, match="no_such_config"):
        load_config("no_such_config")


def test_published_architecture_numbers():
    llm, tiny = load_config("paper_llm"), load_config("colab_llm")
    assert (llm["hidden_size"], llm["num_hidden_layers"], llm["intermediate_size"], llm["vocab_size"]) == (4096, 32, 11008, 32000)
    assert (tiny["hidden_size"], tiny["num_hidden_layers"], tiny["num_key_value_heads"], tiny["intermediate_size"]) == (2048, 22, 4, 5632)
    assert load_config("blip2_qformer")["_num_query_tokens"] == 32
    unet, sched = load_config("sd21base_unet"), load_config("sd21base_scheduler")
    assert unet["attention_head_dim"] == [5, 10, 20, 20] and unet["cross_attention_dim"] == 1024
    assert (sched["beta_schedule"], sched["prediction_type"], sched["num_train_timesteps"]) == ("scaled_linear", "epsilon", 1000)
    from diffusers import DDPMScheduler
    ddpm = DDPMScheduler.from_config(memory.model_kwargs(sched))     # training uses DDPM on the same betas
    assert ddpm.config.beta_end == pytest.approx(0.012)


@pytest.mark.parametrize("component, expected, rel", [
    ("llm", 6.74e9, 0.01),            # Llama-2-7b (+3 added token rows)
    ("vision", 0.986e9, 0.01),        # EVA ViT-g/14 of BLIP-2
    ("qformer", 0.105e9, 0.03),       # Q-Former query path + 32 queries (HF Blip2QFormerModel)
    ("text_encoder", 0.340e9, 0.01),  # OpenCLIP ViT-H/14 text tower
    ("unet", 0.866e9, 0.01),          # SD 2.1 UNet
    ("vae", 0.0837e9, 0.01),          # SD VAE
])
def test_paper_parameter_counts(paper_parts, component, expected, rel):
    assert count_params(paper_parts[component]) == pytest.approx(expected, rel=rel)


def test_colab_llm_is_tinyllama():
    parts = build_meta_components("colab")
    assert count_params(parts["llm"]) == pytest.approx(1.10e9, rel=0.01)
    assert all(p.device.type == "meta" for p in parts["llm"].parameters())


# ------------------------------------------------------------------ LoRA counts equal peft's
def test_lora_count_matches_peft_on_tiny_llama():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100)          # GQA: k/v out_features differ from q
    spec = get_recipe("paper").llm_lora
    ours = lora_param_count(LlamaForCausalLM(cfg), spec.rank, spec.target_modules)
    peft_model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(**spec.peft_kwargs()))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert ours == trainable == 2 * spec.rank * ((64 + 64) * 2 + (64 + 32) * 2)


# a small SD-style UNet for calibrating the estimator against real CPU tensors
SMALL_UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "block_out_channels": [32, 64],
              "layers_per_block": 1, "attention_head_dim": 8, "cross_attention_dim": 32, "norm_num_groups": 8,
              "use_linear_projection": True, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}


def test_lora_count_matches_peft_on_small_unet_and_bad_targets_fail():
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    unet = UNet2DConditionModel.from_config(SMALL_UNET)
    ours = lora_param_count(unet, 4, SD_ATTENTION)
    unet.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=list(SD_ATTENTION)), unet)
    assert ours == sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n) > 0
    with pytest.raises(ValueError, match="match no Linear"):
        lora_param_count(unet, 4, ("no_such_proj",))


# ------------------------------------------------------------------ activation models are calibrated
def test_transformer_formula_matches_saved_tensors_of_real_layers():
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    per_layer = {}
    for layers in (1, 2):   # difference of a 1- and a 2-layer model = one layer
        llama = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=layers,
                                             num_attention_heads=4, vocab_size=50)).model
        embeds = torch.randn(2, 128, 64, requires_grad=True)
        clip = CLIPTextModel(CLIPTextConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=layers,
                                            num_attention_heads=4, vocab_size=50, max_position_embeddings=77, hidden_act="gelu",
                                            bos_token_id=0, eos_token_id=1, pad_token_id=1))
        per_layer[layers] = (_saved_bytes(llama, inputs_embeds=embeds),
                             _saved_bytes(clip, input_ids=torch.randint(0, 50, (2, 77))))
    llama_layer = per_layer[2][0] - per_layer[1][0]
    clip_layer = per_layer[2][1] - per_layer[1][1]
    assert llama_layer == pytest.approx(transformer_layer_bytes(256, 128, 64, 4, 172, True, 4, True), rel=0.15)
    assert clip_layer == pytest.approx(transformer_layer_bytes(154, 77, 64, 4, 256, False, 4, True), rel=0.15)


def test_unet_meta_measurement_matches_real_cpu_forward():
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    cfg = dict(SMALL_UNET, sample_size=16)
    torch.manual_seed(0)
    real = UNet2DConditionModel.from_config(memory.model_kwargs(cfg))
    x, ctx = torch.randn(2, 4, 16, 16), torch.randn(2, 8, 32, requires_grad=True)
    real_full = _saved_bytes(real, sample=x, timestep=torch.tensor([3, 5]), encoder_hidden_states=ctx)
    real.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=list(SD_ATTENTION)), real)
    real_lora = _saved_bytes(real, sample=x, timestep=torch.tensor([3, 5]), encoder_hidden_states=ctx)
    with torch.device("meta"):
        meta = UNet2DConditionModel.from_config(memory.model_kwargs(cfg))
    measure = lambda ckpt: measure_unet_activation_bytes(meta, 2, 16, 8, torch.float32, ckpt, True, True)  # noqa: E731
    assert measure(False) == pytest.approx(real_full, rel=0.10)
    targets = {id(m.weight) for _, m in lora_targets(meta, SD_ATTENTION)}
    for p in meta.parameters():
        p.requires_grad_(id(p) in targets)
    assert measure(False) == pytest.approx(real_lora, rel=0.10)
    assert measure(True) < 0.6 * measure(False)          # checkpointing keeps block inputs only


# ------------------------------------------------------------------ fits
def test_paper_recipe_fits_a_v100(paper_estimate):
    est = paper_estimate
    assert est.fits(V100) and est.fits(32) and not est.fits(T4)
    assert 15 < est.total_gb < V100                       # 12.6 GB of LLM weights alone
    rows = {r.name: r for r in est.components}
    assert rows["llm"].weights_gb == pytest.approx(6.74e9 * 2 / 2**30, rel=0.02)   # frozen fp16
    assert rows["qformer"].optimizer_gb == pytest.approx(rows["qformer"].params * 8 / 2**30)
    assert rows["vision"].grads_gb == 0 and rows["vae"].trainable == 0
    assert rows["text_encoder"].activations_gb > 0        # gradient flows through the frozen encoder


def test_colab_recipe_fits_a_t4(colab_estimate):
    assert colab_estimate.fits(T4)
    assert colab_estimate.recipe.effective_batch_size == 32


def test_estimator_is_sensitive_to_the_recipe(paper_estimate):
    base = get_recipe("paper")
    fp32_all = replace(base, mixed_precision="no", llm="train", vision="train", qformer="train",
                       text_encoder="train", unet="train")
    assert not estimate("paper", fp32_all).fits(32)
    full_unet = estimate("paper", replace(base, unet="train"))
    assert not full_unet.fits(V100)
    assert full_unet.static_gb - paper_estimate.static_gb > 10      # 0.87 B × 16 B of fp32 state
    no_ckpt = estimate("paper", replace(base, llm_gradient_checkpointing=False, unet_gradient_checkpointing=False))
    assert no_ckpt.activations_gb > 2 * paper_estimate.activations_gb
    double = estimate("paper", micro_batch=8)
    assert double.recipe.micro_batch_size == 8
    assert paper_estimate.activations_gb < double.activations_gb < 2.2 * paper_estimate.activations_gb


# ------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="photochat")
    budget.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_prints_table_and_fit_lines(capsys):
    args = _parser().parse_args(["estimate-memory", "--preset", "paper", "--gpu-gb", "32"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for needle in ("component", "llm", "unet", "qformer", "TOTAL", "V100 32GB", "T4 16GB", "--gpu-gb 32"):
        assert needle in out
    assert "V100 32GB        (31.75 GB usable): fits" in out
    assert "T4 16GB          (15.00 GB usable): does NOT fit" in out


def test_cli_json_and_exit_status(capsys):
    args = _parser().parse_args(["estimate-memory", "--preset", "colab", "--gpu-gb", "4", "--json"])
    assert args.func(args) == 1                               # 4 GB is too small: non-zero exit
    data = json.loads(capsys.readouterr().out)
    assert data["fits"]["T4 16GB"] is True and data["fits"]["requested"] is False
    assert {c["name"] for c in data["components"]} == {"llm", "vision", "qformer", "projection",
                                                       "text_encoder", "unet", "vae"}
    bad = _parser().parse_args(["estimate-memory", "--micro-batch", "0"])
    with pytest.raises(SystemExit, match="--micro-batch must be >= 1"):
        bad.func(bad)
    with pytest.raises(SystemExit):
        _parser().parse_args(["estimate-memory", "--preset", "huge"])


# ------------------------------------------------------------------ recipes
def test_recipes_follow_the_paper():
    for name in ("colab", "paper"):
        r = get_recipe(name)
        assert (r.effective_batch_size, r.lr, r.weight_decay, r.warmup_steps, r.alpha) == (32, 5e-5, 0.01, 1000, 1.0)
        assert (r.tau_start, r.tau_end, r.tau_anneal_epochs, r.early_stopping_patience) == (1.0, 0.01, 3, 4)
        assert r.mixed_precision == "fp16" and r.vae == "freeze"
    assert get_recipe("toy").mixed_precision == "no" and get_recipe("toy").unet == "train"
    assert set(RECIPES) == {"toy", "colab", "paper"}


def test_recipe_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_recipe("huge")
    with pytest.raises(ValueError, match="unet='finetune'"):
        TrainingRecipe(preset="x", unet="finetune")
    with pytest.raises(ValueError, match="vae='train'"):
        TrainingRecipe(preset="x", vae="train")
    with pytest.raises(ValueError, match="mixed_precision='fp8'"):
        TrainingRecipe(preset="x", mixed_precision="fp8")
    get_recipe("paper").micro_batch_size = 99                 # a copy: RECIPES stays untouched
    assert RECIPES["paper"].micro_batch_size == 4


def test_step_time_counts_the_flops_of_the_recipes_shapes():
    """`estimate-memory` also says how long an optimizer step takes: FLOPs counted on the meta device at the
    collator's limits, times the passes each component makes, over a GPU's peak at 25-50 % utilisation."""
    from dataclasses import replace

    from photochat_lib.training.memory import build_meta_components
    from photochat_lib.recipe import get_recipe
    from photochat_lib.training.steptime import PEAK_TFLOPS, step_cost
    paper = get_recipe("paper")
    cost = step_cost("paper")
    llm = build_meta_components("paper")["llm"]
    n = sum(p.numel() for p in llm.parameters())
    tokens = paper.micro_batch_size * paper.max_text_length
    assert abs(cost.forward_tflops["llm"] / (2 * n * tokens / 1e12) - 1) < 0.1      # the 2·N·tokens rule
    # LoRA LLM with checkpointing: forward, input gradients, recompute; the VAE only encodes the target photo
    assert cost.multiplier["llm"] == 3 and cost.multiplier["vae"] == 1 and cost.multiplier["vision"] == 1
    assert cost.multiplier["text_encoder"] == 2                  # frozen, but L_v's gradient crosses it (eq. 11)
    assert cost.step_tflops == pytest.approx(sum(cost.forward_tflops[k] * cost.multiplier[k]
                                                  for k in cost.forward_tflops) * paper.grad_accum_steps)
    half = step_cost("paper", replace(paper, grad_accum_steps=4))
    assert half.step_tflops == pytest.approx(cost.step_tflops / 2)
    frozen_llm = step_cost("paper", replace(paper, llm="freeze", qformer="freeze", projection="freeze",
                                            train_new_token_rows=False))
    assert frozen_llm.multiplier["llm"] == 1 and frozen_llm.multiplier["unet"] == 3
    fast, slow = cost.seconds("V100 32GB")
    assert fast == pytest.approx(cost.step_tflops / (PEAK_TFLOPS["V100 32GB"]["half"] * 0.5)) and slow == 2 * fast


def test_estimate_memory_prints_the_step_time(capsys):
    from photochat_lib.apps.cli import main
    main(["estimate-memory", "--preset", "colab", "--gpu-gb", "16"])
    out = capsys.readouterr().out
    assert "TFLOPs per optimizer step" in out and "T4 16GB" in out and "s per optimizer step" in out

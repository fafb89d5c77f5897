"""The real-model loading path (colab / paper presets), exercised offline: tiny models are saved in the
upstream layouts (a Llama repo, a BLIP-2 repo with its OPT, a diffusers SD repo) to a temp folder and
loaded through `load_components` / `build_model` — the same functions that take hub ids."""
import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline
from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig, Blip2VisionConfig,
                          LlamaForCausalLM, OPTConfig)

from PIL import Image

from photochat_lib.data.images import blip2_image_processor
from photochat_lib.model.image_perceptron import build_image_perceptron
from photochat_lib.presets import build_model, get_preset, load_components
from photochat_lib.toy.foundation import build_toy_components, toy_llm_config
from photochat_lib.data.tokens import SPECIAL_TOKENS
from photochat_lib.toy.tokenizers import toy_corpus
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


@pytest.fixture(scope="module")
def hub_like(tmp_path_factory):
    """Write a Llama repo (no [IMG] tokens, like Llama-2), a BLIP-2 repo and an SD repo."""
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    # Llama-2-like: a tokenizer without our special tokens and without a pad token
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator(toy_corpus(), trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert tok.pad_token is None and "[IMG]" not in tok.get_vocab()
    llm = LlamaForCausalLM(toy_llm_config(len(tok), 0, tok.bos_token_id, tok.eos_token_id))
    llm.save_pretrained(root / "llama"), tok.save_pretrained(root / "llama")
    # BLIP-2 with its own (OPT) language model, as Salesforce/blip2-opt-2.7b-coco ships it
    vision = Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                               image_size=32, patch_size=8)
    qformer = Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                 encoder_hidden_size=32, vocab_size=64, max_position_embeddings=64)
    opt = OPTConfig(hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
                    word_embed_proj_dim=16)
    blip2 = Blip2ForConditionalGeneration(Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                                                      text_config=opt.to_dict(), num_query_tokens=32))
    blip2.save_pretrained(root / "blip2")
    blip2_image_processor(32).save_pretrained(root / "blip2")   # preprocessor_config.json, as every BLIP-2 repo has
    # Stable Diffusion repo layout, with the PNDM scheduler stable-diffusion-2-1-base ships
    _, _, _, gen = build_toy_components(seed=1)
    pipe = StableDiffusionPipeline(vae=gen.vae, text_encoder=gen.text_encoder, tokenizer=gen.tokenizer,
                                   unet=gen.unet, scheduler=PNDMScheduler.from_config(gen.scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    return root, llm, blip2, gen


def test_load_components_from_upstream_layouts(hub_like):
    root, llm_ref, blip2_ref, gen_ref = hub_like
    llm, tok, perceptron, gen = load_components(str(root / "llama"), str(root / "blip2"), str(root / "sd"))
    # [IMG], [/IMG], <image> added as single special tokens, embeddings resized, pad token set
    assert all(len(tok.tokenize(t)) == 1 for t in SPECIAL_TOKENS)
    n_saved = llm_ref.get_input_embeddings().num_embeddings
    assert llm.get_input_embeddings().num_embeddings == len(tok) == n_saved + len(SPECIAL_TOKENS)
    assert tok.pad_token == "<unk>"  # Llama-2 has no pad token: <unk> is reused, no extra row
    # the LLM's original weights are the saved ones
    ref = llm_ref.state_dict()
    n_old = ref["model.embed_tokens.weight"].shape[0]
    assert torch.equal(llm.get_input_embeddings().weight[:n_old], ref["model.embed_tokens.weight"])
    assert torch.equal(llm.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                       ref["model.layers.0.self_attn.q_proj.weight"])
    # vision + Q-Former + queries come from the BLIP-2 checkpoint; the projection maps into the LLM
    blip = blip2_ref.state_dict()
    for name, value in perceptron.state_dict().items():
        if not name.startswith("language_projection"):
            assert torch.equal(value, blip[name]), name
    assert perceptron.language_projection.out_features == llm.config.hidden_size
    # Stable Diffusion: all four models load; training uses the DDPM forward process on SD's betas
    for part in ("text_encoder", "unet", "vae"):
        a, b = getattr(gen, part).state_dict(), getattr(gen_ref, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert type(gen.scheduler).__name__ == "DDPMScheduler"
    assert gen.scheduler.config.prediction_type == "epsilon"


def test_build_model_with_local_folders_runs_a_forward_pass(hub_like):
    root = hub_like[0]
    model = build_model("paper", llm=str(root / "llama"), perceptron=str(root / "blip2"), sd=str(root / "sd"))
    model = model.float()  # the paper preset loads fp16; CPU test in fp32
    from tests.test_model import hand_batch
    batch = hand_batch(model)
    out = model(batch, tau=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.image_loss > 0
    assert model.config.preset == "paper"


def test_presets_name_the_papers_models_and_reject_unknown():
    p = get_preset("paper")
    assert p.llm == "meta-llama/Llama-2-7b-chat-hf"
    assert p.perceptron == "Salesforce/blip2-opt-2.7b-coco"
    assert p.sd == "stabilityai/stable-diffusion-2-1-base"
    assert get_preset("paper", llm="/models/llama").llm == "/models/llama"
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


def test_hf_token_is_passed_but_never_printed(monkeypatch, capsys, hub_like):
    root = hub_like[0]
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    load_components(str(root / "llama"), str(root / "blip2"), str(root / "sd"))
    captured = capsys.readouterr()
    assert "hf_secret_value_123" not in captured.out + captured.err


def _photos():
    import numpy as np
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
    clear = Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), mode="RGBA")
    return [wide, clear, wide.convert("L")]


def _blip2_processor(folder):
    """transformers' own Blip2Processor, built offline from a folder's preprocessor_config.json."""
    from transformers import Blip2Processor, BlipImageProcessor

    from photochat_lib.toy.tokenizers import build_llm_tokenizer
    return Blip2Processor(image_processor=BlipImageProcessor.from_pretrained(folder), tokenizer=build_llm_tokenizer(),
                          num_query_tokens=32)


def test_a_blip2_checkpoint_sees_photos_through_its_own_processor(hub_like, tmp_path):
    """The real presets' ViT sees a photo exactly as Blip2Processor gives it (resized straight to the square, no
    centre crop; transparency onto white); the processor travels with the saved model; the collate step uses it."""
    from photochat_lib.presets import collator_for
    root = hub_like[0]
    model = build_model("paper", llm=str(root / "llama"), perceptron=str(root / "blip2"), sd=str(root / "sd"))
    processor = _blip2_processor(root / "blip2")
    for img in _photos():
        ours = model.perceptron.transform(img)
        assert ours.shape == (3, 32, 32)
        assert torch.equal(ours, processor(images=img, return_tensors="pt")["pixel_values"][0])
    banner = Image.new("RGB", (96, 32), "black")           # black | white | black: a centre crop keeps only white
    banner.paste((255, 255, 255), (32, 0, 64, 32))
    seen = model.perceptron.transform(banner)
    assert seen[:, :, :4].max() < -1.4 and seen[:, :, 14:18].min() > 1.4   # squeezed: both black sides are still there
    from photochat_lib.data.images import image_transform
    assert image_transform(32)(banner)[:, :, :4].min() > 1.4               # what the hand-written crop fed the ViT
    wide = _photos()[0]
    collate = collator_for(model, "paper")
    assert torch.equal(collate.image_transform(wide), processor(images=wide, return_tensors="pt")["pixel_values"][0])
    model.save_pretrained(tmp_path / "saved", components=("perceptron",))
    assert (tmp_path / "saved" / "perceptron" / "preprocessor_config.json").is_file()
    reloaded = build_image_perceptron(str(tmp_path / "saved" / "perceptron"), model.llm.config.hidden_size)
    assert torch.equal(reloaded.transform(wide), model.perceptron.transform(wide))


def test_the_shipped_blip2_processor_config_is_blip2s(tmp_path):
    """The real architectures built without a download (estimate-memory, --random-init) use the shipped copy of
    blip2-opt-2.7b-coco's preprocessor_config.json: 224², bicubic, CLIP's mean and std, as Blip2Processor reads it."""
    import shutil
    from importlib import resources

    from photochat_lib.presets import build_config_components
    shutil.copy(resources.files("photochat_lib") / "configs" / "blip2_preprocessor.json",
                tmp_path / "preprocessor_config.json")
    processor = _blip2_processor(tmp_path)
    assert processor.image_processor.size == {"height": 224, "width": 224}
    _, _, perceptron, _ = build_config_components("paper", smoke=True)
    for img in _photos():
        assert torch.equal(perceptron.transform(img), processor(images=img, return_tensors="pt")["pixel_values"][0])
    toy = build_toy_components(seed=0)[2]                  # the toy perceptron keeps the transform it was trained on
    assert toy.image_processor is None and toy.transform(_photos()[0]).shape == (3, 32, 32)


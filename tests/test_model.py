"""The end-to-end model (eq. 13) on the toy preset: gradients, one step, save/load, generate()."""
import copy

import pytest
import torch
from PIL import Image

from photochat_lib.model.generation import parse_reply
from photochat_lib.model.photochat_model import PhotoChatConfig, PhotoChatModel
from photochat_lib.presets import build_model
from photochat_lib.data.tokens import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMG_END, IMG_START, NUM_VISUAL_TOKENS


@pytest.fixture(scope="module")
def toy_model():
    torch.manual_seed(0)
    return build_model("toy", seed=0)


def hand_batch(model: PhotoChatModel, captions=("red circle, blue square", "green triangle")) -> dict:
    """A batch built by hand (independent of the collate step): each row = a context with one photo
    and a response that shares a photo with the given caption."""
    tok, sd = model.tokenizer, model.image_generator
    rows, labels, cap_pos, llm_caps, sd_caps = [], [], [], [], []
    for c, caption in enumerate(captions):
        ctx = tok("A: look at this", add_special_tokens=False).input_ids
        ctx += tok.convert_tokens_to_ids([IMAGE_PLACEHOLDER]) * NUM_VISUAL_TOKENS
        ctx += tok(" B: show me yours", add_special_tokens=False).input_ids
        cap_ids = tok(caption, add_special_tokens=False).input_ids
        resp = (tok("A: sure", add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids(IMG_START)]
                + cap_ids + [tok.convert_tokens_to_ids(IMG_END), tok.eos_token_id])
        ids = [tok.bos_token_id] + ctx + resp
        lab = [IGNORE_INDEX] * (1 + len(ctx)) + resp
        start = 1 + len(ctx) + len(resp) - len(cap_ids) - 2
        pos = [-1] * len(ids)
        for k in range(len(cap_ids)):
            pos[start + k] = c
        rows.append(ids), labels.append(lab), cap_pos.append(pos)
        llm_caps.append(torch.tensor(cap_ids))
        sd_caps.append(torch.tensor(sd.tokenizer(caption, add_special_tokens=False).input_ids))
    T = max(map(len, rows))
    pad = lambda seqs, v: torch.tensor([s + [v] * (T - len(s)) for s in seqs])
    B = len(captions)
    g = torch.Generator().manual_seed(1)
    return {
        "ids": [f"hand:{i}" for i in range(B)],
        "input_ids": pad(rows, tok.pad_token_id),
        "attention_mask": pad([[1] * len(r) for r in rows], 0),
        "labels": pad(labels, IGNORE_INDEX),
        "caption_positions": pad(cap_pos, -1),
        "context_pixel_values": torch.randn(B, 3, 32, 32, generator=g),
        "context_image_batch_index": torch.arange(B),
        "target_pixel_values": torch.rand(B, 3, 32, 32, generator=g) * 2 - 1,
        "target_batch_index": torch.arange(B),
        "sd_input_ids": sd.tokenize(list(captions)),
        "llm_caption_ids": llm_caps,
        "sd_caption_ids": sd_caps,
        "captions": list(captions),
    }


def llm_grad_norm_from_image_loss(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(batch, tau=1.0, generator=torch.Generator().manual_seed(0))
    out.image_loss.backward()
    grads = [p.grad for p in model.llm.parameters()]
    return out, grads


def test_image_loss_gradient_reaches_llm_end2end_and_not_pipeline(toy_model):
    batch = hand_batch(toy_model)
    out, grads = llm_grad_norm_from_image_loss(toy_model, batch)
    assert out.image_loss.item() > 0
    total = sum(float(g.abs().sum()) for g in grads if g is not None)
    assert total > 0, "L_v must reach the LLM in end-to-end mode"
    # the LM head rows that got gradient include the gold caption's tokens (the STGS soft path)
    head = toy_model.llm.get_output_embeddings().weight.grad
    assert head is not None and head.abs().sum() > 0

    pipe = copy.copy(toy_model)
    pipe.config = PhotoChatConfig(mode="pipeline")
    out, grads = llm_grad_norm_from_image_loss(pipe, batch)
    assert out.image_loss.item() > 0
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads), "pipeline: L_v must not reach the LLM"
    # ... while SD itself still learns from L_v
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pipe.image_generator.unet.parameters())


def test_text_loss_scores_response_only(toy_model):
    batch = hand_batch(toy_model)
    out = toy_model(batch)
    # changing context tokens' labels cannot matter: they are IGNORE_INDEX; changing a response label does
    lab = batch["labels"].clone()
    k = int((lab[0] != IGNORE_INDEX).nonzero()[0])
    assert (lab[0, :k] == IGNORE_INDEX).all()
    n_ctx = int((batch["input_ids"][0] == toy_model.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)).sum())
    assert n_ctx == NUM_VISUAL_TOKENS and out.text_loss.item() > 0


def test_one_optimizer_step_lowers_toy_loss():
    torch.manual_seed(0)
    model = build_model("toy", seed=0)
    batch = hand_batch(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss0 = model(batch, tau=1.0, generator=torch.Generator().manual_seed(0)).loss
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = model(batch, tau=1.0, generator=torch.Generator().manual_seed(0)).loss
    assert loss1.item() < loss0.item()


def test_save_load_round_trip_is_exact(toy_model, tmp_path):
    toy_model.save_pretrained(tmp_path / "m")
    loaded = PhotoChatModel.from_pretrained(tmp_path / "m")
    a, b = toy_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    batch = hand_batch(toy_model)
    toy_model.eval(), loaded.eval()  # the Q-Former has dropout
    with torch.no_grad():
        la = toy_model(batch, generator=torch.Generator().manual_seed(3))
        lb = loaded(batch, generator=torch.Generator().manual_seed(3))
    assert torch.equal(la.logits, lb.logits) and torch.equal(la.loss, lb.loss)
    assert loaded.tokenizer.get_vocab() == toy_model.tokenizer.get_vocab()
    toy_model.train()


@pytest.mark.parametrize("size,mode", [((32, 32), "RGB"), ((64, 48), "RGBA"), ((17, 90), "L"), ((300, 200), "P")])
def test_any_image_becomes_32_visual_tokens(toy_model, size, mode):
    img = Image.new(mode, size)
    pixels = toy_model.perceptron.preprocess([img])
    visual = toy_model.perceptron(pixels)
    assert visual.shape == (1, NUM_VISUAL_TOKENS, toy_model.llm.config.hidden_size)


def test_parse_reply_edge_cases():
    r = parse_reply(f"nice! {IMG_START} red circle {IMG_END} here")
    assert [s.kind for s in r.segments] == ["text", "photo", "text"] and r.captions == ["red circle"]
    r = parse_reply(f"look {IMG_START} blue square")
    assert r.captions == ["blue square"] and r.segments[-1].unbalanced and r.notes
    r = parse_reply(f"{IMG_START} {IMG_END}")
    assert r.captions == [""] and "empty caption" in r.notes[0]
    r = parse_reply(f"oops {IMG_END} fine")
    assert r.text == "oops fine" and "stray" in r.notes[0]


def test_llm_gradient_norms_split_the_update_between_the_two_losses(toy_model):
    """notebook 06 / the study: ‖∇_LLM L_t‖ and ‖∇_LLM α L_v‖; L_v's is 0 in the pipeline, scales with α."""
    from photochat_lib.model.photochat_model import llm_gradient_norms
    batch = hand_batch(toy_model)
    g = torch.Generator
    toy_model.eval()                                    # no dropout: the two forward passes are the same
    e2e = llm_gradient_norms(toy_model, batch, tau=1.0, generator=g().manual_seed(0))
    assert e2e["text"] > 0 and e2e["image"] > 0 and e2e["ratio"] == pytest.approx(e2e["image"] / e2e["text"])
    double = copy.copy(toy_model)
    double.config = PhotoChatConfig(alpha=2.0)
    assert llm_gradient_norms(double, batch, 1.0, g().manual_seed(0))["image"] == pytest.approx(2 * e2e["image"])
    pipe = copy.copy(toy_model)
    pipe.config = PhotoChatConfig(mode="pipeline")
    assert llm_gradient_norms(pipe, batch, 1.0, g().manual_seed(0))["image"] == 0.0
    toy_model.train()


def test_sum_reduction_is_the_papers_eq_2_and_12(toy_model):
    """loss_reduction="sum": L_t = Σ over each response's scored tokens, L_v = Σ over each photo's latent values,
    both averaged over the batch; the mean form divides them by the tokens per response and C·h·w."""
    from photochat_lib.model.photochat_model import alpha_in
    batch = hand_batch(toy_model)
    toy_model.eval()
    mean = toy_model(batch, tau=1.0, generator=torch.Generator().manual_seed(0))
    summed = copy.copy(toy_model)
    summed.config = PhotoChatConfig(loss_reduction="sum")
    total = summed(batch, tau=1.0, generator=torch.Generator().manual_seed(0))
    scored = (batch["labels"][:, 1:] != IGNORE_INDEX)                          # (B, T-1)
    B = scored.shape[0]
    assert total.text_loss.item() == pytest.approx(mean.text_loss.item() * int(scored.sum()) / B, rel=1e-5)
    unet = toy_model.image_generator.unet.config
    d = unet.in_channels * unet.sample_size ** 2                               # latent values per photo
    assert total.image_loss.item() == pytest.approx(mean.image_loss.item() * d, rel=1e-5)
    # α converts between the two units both ways: the toy's α_mean = 1 is α_sum ≈ 1/60
    assert alpha_in(1.0, "mean", 17, 1024) == pytest.approx(17 / 1024)
    assert alpha_in(alpha_in(0.3, "sum", 17, 1024), "mean", 17, 1024) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="loss_reduction"):
        PhotoChatConfig(loss_reduction="median")
    toy_model.train()


def test_a_gumbel_generator_varies_the_caption_draw_and_leaves_the_diffusion_draw(toy_model):
    """gumbel_generator draws only the Gumbel noise: with it fixed and SD's generator changed, L_v changes; with
    SD's fixed and the Gumbel seed changed, the one-hots (and with gold captions, L_v's value) stay."""
    batch = hand_batch(toy_model)
    toy_model.eval()
    g = torch.Generator
    run = lambda d, s: toy_model(batch, tau=1.0, generator=g().manual_seed(d), gumbel_generator=g().manual_seed(s))
    a, b, c = run(0, 0), run(0, 1), run(1, 0)
    assert a.image_loss.item() == b.image_loss.item()          # gold caption: the value is R_SD's, not the draw's
    assert a.image_loss.item() != c.image_loss.item()          # another diffusion draw
    head = toy_model.llm.get_output_embeddings().weight
    grad = lambda out: torch.autograd.grad(out.image_loss, head)[0]
    ga, gb, ga2 = grad(run(0, 0)), grad(run(0, 1)), grad(run(0, 0))
    assert torch.equal(ga, ga2) and not torch.equal(ga, gb)    # the Gumbel draw moves only the gradient
    toy_model.train()

"""generate(): a multimodal context in, the reply out — with a drawn photo for each [IMG] … [/IMG]."""
import pytest
import torch
from PIL import Image

from photochat_lib.model.generation import generate
from photochat_lib.presets import build_model
from photochat_lib.data.tokens import IMG_END, IMG_START


@pytest.fixture(scope="module")
def model():
    return build_model("toy", seed=0)


def scripted_llm(model, monkeypatch, text):
    """Make the LLM 'emit' `text` (then eos), recording the prompt embeddings it was given."""
    ids = model.tokenizer(text, add_special_tokens=False).input_ids + [model.tokenizer.eos_token_id]
    seen = {}

    def fake_generate(inputs_embeds, attention_mask, **kw):
        seen["embeds"], seen["kw"] = inputs_embeds, kw
        return torch.tensor([ids])

    monkeypatch.setattr(model.llm, "generate", fake_generate)
    return seen


def test_generate_returns_an_image_for_each_caption(model, monkeypatch):
    seen = scripted_llm(model, monkeypatch, f"Sure, here! {IMG_START} Objects in the photo: red circle{IMG_END}")
    context = ["Hi! I bought a red ball.", Image.new("RGBA", (50, 40), (0, 0, 255, 128)), "Show me yours!"]
    reply = generate(model, context, num_inference_steps=2, seed=0)
    assert reply.captions == ["Objects in the photo: red circle"]
    assert len(reply.images) == 1 and reply.images[0].size == (32, 32) and reply.images[0].mode == "RGB"
    assert reply.text.startswith("Sure, here!") and reply.shared_photo and not reply.notes
    # the context photo entered as 32 visual tokens spliced into the prompt
    assert seen["embeds"].shape[1] > 32


def test_generate_text_only_reply_draws_nothing(model, monkeypatch):
    scripted_llm(model, monkeypatch, "That sounds fun!")
    reply = generate(model, ["I went to the market."], num_inference_steps=2)
    assert reply.text == "That sounds fun!" and reply.images == [] and not reply.shared_photo


def test_generate_handles_unbalanced_and_empty_captions(model, monkeypatch):
    scripted_llm(model, monkeypatch, f"look {IMG_START} Objects in the photo: blue square")
    reply = generate(model, ["Show me!"], num_inference_steps=2)
    assert len(reply.images) == 1 and reply.segments[-1].unbalanced
    scripted_llm(model, monkeypatch, f"{IMG_START}{IMG_END} oops")
    reply = generate(model, ["Show me!"], num_inference_steps=2)
    assert reply.images == [] and reply.shared_photo and "empty caption" in reply.notes[0]


def test_generate_really_runs_the_llm(model, monkeypatch):
    """No scripting: the untrained toy LLM runs end to end and its tokens are what gets parsed."""
    real, out = model.llm.generate, {}

    def spy(**kw):
        out["ids"] = real(**kw)
        return out["ids"]

    monkeypatch.setattr(model.llm, "generate", spy)
    reply = generate(model, ["Hi there!", Image.new("L", (20, 20), 128)], max_new_tokens=8, draw_images=False)
    new = [i for i in out["ids"][0].tolist() if i not in (model.tokenizer.pad_token_id, model.tokenizer.eos_token_id)]
    assert 0 < out["ids"].shape[1] <= 8
    assert reply.raw == model.tokenizer.decode(new, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_batched_generation_equals_one_by_one(model):
    """Left-padded batches must not change greedy replies (padding is masked, positions shifted)."""
    from photochat_lib.model.generation import generate_batch
    contexts = [["Hi!"], ["I went to the fair today.", "Oh cool!", "I bought a red ball and a blue box."],
                ["Look", Image.new("RGB", (32, 32), (200, 30, 30))]]
    together = generate_batch(model, contexts, max_new_tokens=6, draw_images=False)
    alone = [generate_batch(model, [c], max_new_tokens=6, draw_images=False)[0] for c in contexts]
    assert [r.raw for r in together] == [r.raw for r in alone]


def test_reply_stops_where_another_speaker_begins(model, monkeypatch):
    scripted_llm(model, monkeypatch, "Sure!\nB: Here it is.\nA: Thanks!\nB: more")
    reply = generate(model, [("A", "Show me!")], speaker="B", draw_images=False)
    assert reply.raw == "Sure!\n Here it is." and reply.text == "Sure! Here it is."
    assert reply.notes == ["reply cut where speaker A began a turn"]


def test_generation_itself_stops_when_another_speaker_begins(model):
    """EndOfTurn stops each row of a batch as soon as its reply opens another speaker's line (so the model never goes
    on to write that line), and leaves rows that do not alone (checked on the real LLM.generate loop)."""
    from transformers import StoppingCriteriaList

    from photochat_lib.model.generation import EndOfTurn
    tok = model.tokenizer
    rows = ["Sure!\nB: Here it is.\nA:", "I love it.\nA: Yes", "Nice photo, B: is not a line start"]
    ids = tok(rows, add_special_tokens=False, padding=True, return_tensors="pt").input_ids
    stop = EndOfTurn(tok, ["B", "B", "B"])
    assert stop(ids, None).tolist() == [True, True, False]
    assert EndOfTurn(tok, ["A", "A", "A"])(ids, None).tolist() == [True, False, False]   # its own lines go on
    first = tok("Sure!\nA:", add_special_tokens=False).input_ids           # what a scripted LLM will emit
    script = iter(first + [tok.convert_tokens_to_ids("▁more")] * 20)
    real_forward = model.llm.forward

    def forward(*a, **kw):                     # the real model's shapes, its logits forced to the script
        out = real_forward(*a, **kw)
        out.logits[:] = -1e4
        out.logits[:, -1, next(script)] = 1e4
        return out

    model.llm.forward = forward
    try:
        out = model.llm.generate(input_ids=torch.tensor([[tok.bos_token_id]]), max_new_tokens=12, do_sample=False,
                                 pad_token_id=tok.pad_token_id, stopping_criteria=StoppingCriteriaList([stop.__class__(
                                     tok, ["B"])]))
    finally:
        model.llm.forward = real_forward
    assert tok.decode(out[0, 1:]).endswith("A:") and out.shape[1] == 1 + len(first)


def test_pipeline_reads_a_sent_photo_through_its_caption(monkeypatch):
    """pipeline_context="caption": a photo the user sends is captioned (the toy classifier names its objects)
    and written into the prompt as "[IMG] caption[/IMG]"; no visual tokens reach the LLM."""
    from photochat_lib.data.toy_world import ToyObject, draw_photo
    from photochat_lib.model.generation import caption_photo
    from photochat_lib.model.photochat_model import PhotoChatConfig
    pipe = build_model("toy", seed=0, model_config=PhotoChatConfig(mode="pipeline"))
    assert pipe.context_photos == "caption"
    photo = draw_photo([ToyObject("red", "circle", "ball", "big", "left"),
                        ToyObject("blue", "square", "box", "big", "right")], "white")
    assert caption_photo(pipe, photo) == "Objects in the photo: red circle, blue square"
    seen = scripted_llm(pipe, monkeypatch, "Nice!")
    generate(pipe, ["Look at this", photo, "What do you see?"], draw_images=False)
    tok = pipe.tokenizer
    prompt = pipe.llm.get_input_embeddings()(tok("A: Look at this\nB:[IMG] Objects in the photo: red circle, blue "
                                                 "square[/IMG]\nA: What do you see?\nB:", return_tensors="pt").input_ids)
    assert torch.allclose(seen["embeds"], prompt)                      # the caption text, not visual tokens
    assert build_model("toy", seed=0).context_photos == "perceptron"          # end2end: always the Q-Former
    pipe.captioner = None                                     # a real preset's model: none is shipped
    with pytest.raises(ValueError, match="has no caption model: set model.captioner"):
        caption_photo(pipe, photo)

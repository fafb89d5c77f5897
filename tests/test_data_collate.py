"""Batches: label masking, visual placeholders, caption positions, truncation and image placement."""
import pytest
import torch
from PIL import Image

from photochat_lib.data.collate import Collator, PhotoChatDataset
from photochat_lib.data.images import image_transform, load_image, sd_image_transform, to_rgb
from photochat_lib.data.samples import dialogue_samples
from photochat_lib.data.schema import DataError, Dialogue, Photo, Turn
from photochat_lib.data.tokens import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMG_END, IMG_START
from photochat_lib.toy.tokenizers import build_llm_tokenizer, build_sd_tokenizer

NV = 4  # visual tokens per context photo in these tests


@pytest.fixture(scope="module")
def toks():
    return build_llm_tokenizer(), build_sd_tokenizer()


@pytest.fixture()
def dialogue(tmp_path):
    """A: hi / B: I got a red ball / A: show me / B: ok, <photo red>, cute? / A: nice / A: <photo blue> / B: wow."""
    def photo(name, rgb, caption):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (8, 8), rgb).save(path)
        return Photo(caption=caption, path=str(path), url=f"http://x/{name}.jpg")
    red = photo("red", (255, 0, 0), "Objects in the photo: red circle")
    blue = photo("blue", (0, 0, 255), "Objects in the photo: blue square, green triangle")
    T = lambda s, x: Turn(s, photo=x) if isinstance(x, Photo) else Turn(s, text=x)
    turns = [T("a", "Hi Sam!"), T("b", "I got a red ball."), T("a", "Can you show me a photo?"),
             T("b", "Sure!"), T("b", red), T("b", "What do you think?"), T("a", "Nice!"), T("a", blue),
             T("b", "Wow, I love the blue box.")]
    return Dialogue("d1", turns, "test")


def collate(toks, samples, max_length=512, max_context_images=None):
    llm, sd = toks
    col = Collator(llm, sd, image_transform(16), sd_image_transform(8), max_length=max_length,
                   num_visual_tokens=NV, max_context_images=max_context_images)
    data = PhotoChatDataset(samples)
    return col, col([data[i] for i in range(len(samples))])


def test_samples_and_batch_shapes(toks, dialogue):
    samples = dialogue_samples(dialogue)
    assert [s.id for s in samples] == ["d1:1", "d1:2", "d1:3", "d1:4", "d1:5"]
    _, b = collate(toks, samples)
    B, T = b["input_ids"].shape
    assert B == 5 and b["labels"].shape == b["attention_mask"].shape == b["caption_positions"].shape == (B, T)
    assert b["ids"] == [s.id for s in samples]
    # context photos: d1:4 has red; d1:5 has red and blue
    assert b["context_pixel_values"].shape == (3, 3, 16, 16)
    assert b["context_image_batch_index"].tolist() == [3, 4, 4]
    # target photos: red (d1:3), blue (d1:4)
    assert b["target_pixel_values"].shape == (2, 3, 8, 8)
    assert b["target_batch_index"].tolist() == [2, 3]
    assert b["sd_input_ids"].shape == (2, toks[1].model_max_length)
    assert b["captions"] == [samples[2].target_photos()[0].caption, samples[3].target_photos()[0].caption]


def test_labels_are_exactly_the_response(toks, dialogue):
    llm, _ = toks
    samples = dialogue_samples(dialogue)
    _, b = collate(toks, samples)
    row = b["labels"][2]  # d1:3, a run of three turns: text, photo, text
    assert llm.decode(row[row != IGNORE_INDEX]) == (
        "Sure!\nB:[IMG] Objects in the photo: red circle[/IMG]\nB: What do you think?</s>")
    for row, s in enumerate(samples):
        n = int(b["attention_mask"][row].sum())
        assert (b["attention_mask"][row, n:] == 0).all() and (b["input_ids"][row, n:] == llm.pad_token_id).all()
        scored = b["labels"][row][b["labels"][row] != IGNORE_INDEX]
        assert scored[-1] == llm.eos_token_id
        # scored ids are a suffix of the input (the response), and decode to the response run
        assert torch.equal(scored, b["input_ids"][row, n - len(scored):n])
        tag = "B" if s.speaker == "b" else "A"
        layout = "".join((f"\n{tag}:" if k else "") + (f"{IMG_START} {t.photo.caption}{IMG_END}"
                         if t.photo else f" {t.text}") for k, t in enumerate(s.response))
        assert llm.decode(scored[:-1]) == layout.strip()
        # the prompt tag itself ("B:") is not scored: the token before the response is ':'
        assert llm.convert_ids_to_tokens(int(b["input_ids"][row, n - len(scored) - 1])) == ":"


def test_visual_placeholders_and_image_order(toks, dialogue):
    llm, _ = toks
    image_id = llm.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    samples = dialogue_samples(dialogue)
    _, b = collate(toks, samples)
    counts = (b["input_ids"] == image_id).sum(1).tolist()
    assert counts == [0, 0, 0, NV, 2 * NV]
    assert (b["labels"][b["input_ids"] == image_id] == IGNORE_INDEX).all()  # never scored
    row5 = b["input_ids"][4]
    runs = torch.nonzero(row5 == image_id).flatten().tolist()
    assert runs == list(range(runs[0], runs[0] + NV)) + list(range(runs[NV], runs[NV] + NV))  # two whole runs
    # images in order of appearance: red then blue for row 4 (red channel high, then blue channel high)
    px = b["context_pixel_values"]
    assert px[1, 0].mean() > px[1, 2].mean() and px[2, 2].mean() > px[2, 0].mean()
    tgt = b["target_pixel_values"]
    assert tgt.min() >= -1 and tgt.max() <= 1
    assert torch.allclose(tgt[0, 0], torch.ones(8, 8)) and torch.allclose(tgt[0, 2], -torch.ones(8, 8))


def test_caption_context_writes_context_photos_as_their_captions(toks, dialogue):
    """The pipeline's input end (context_photos="caption"): a context photo is its caption in [IMG] text,
    with no <image> placeholder and no pixels, while the response's photo is scored exactly as before."""
    llm, sd = toks
    image_id = llm.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    samples = dialogue_samples(dialogue)
    col = Collator(llm, sd, image_transform(16), sd_image_transform(8), num_visual_tokens=NV,
                   context_photos="caption")
    data = PhotoChatDataset(samples)
    b = col([data[i] for i in range(len(samples))])
    _, ref = collate(toks, samples)
    assert not (b["input_ids"] == image_id).any() and b["context_pixel_values"].shape[0] == 0
    text = llm.decode(b["input_ids"][4][b["attention_mask"][4] == 1])
    assert "B:[IMG] Objects in the photo: red circle[/IMG]\nB: What" in text             # both context photos,
    assert "A:[IMG] Objects in the photo: blue square, green triangle[/IMG]\nB: Wow" in text  # as text
    for key in ("target_pixel_values", "sd_input_ids"):
        assert torch.equal(b[key], ref[key])
    scored = lambda batch, r: batch["labels"][r][batch["labels"][r] != IGNORE_INDEX].tolist()
    assert all(scored(b, r) == scored(ref, r) for r in range(len(samples)))
    with pytest.raises(ValueError, match="context_photos"):
        Collator(llm, sd, image_transform(16), sd_image_transform(8), context_photos="pixels")


def test_unsupervised_captions_are_left_to_the_image_loss(toks, dialogue):
    """caption_supervision = 0 (the study's designed world): L_t no longer scores the caption's words, but
    still scores [IMG] and [/IMG]; the caption positions that feed the STGS and DVTM are unchanged."""
    llm, _ = toks
    samples = dialogue_samples(dialogue)
    col, ref = collate(toks, samples)
    col.caption_supervision = 0.0
    b = col([PhotoChatDataset(samples)[i] for i in range(len(samples))])
    assert torch.equal(b["caption_positions"], ref["caption_positions"])
    is_cap = b["caption_positions"] >= 0
    assert is_cap.any() and (b["labels"][is_cap] == IGNORE_INDEX).all() and (ref["labels"][is_cap] != IGNORE_INDEX).all()
    assert torch.equal(b["labels"][~is_cap], ref["labels"][~is_cap])        # everything else, [IMG] [/IMG] too
    col.caption_supervision = 0.5                                         # a fixed share, by sample id
    assert [col.caption_scored(s) for s in samples] == [col.caption_scored(s) for s in samples]


def test_caption_positions_are_the_caption_tokens(toks, dialogue):
    llm, sd = toks
    start, end = llm.convert_tokens_to_ids([IMG_START, IMG_END])
    samples = dialogue_samples(dialogue)
    _, b = collate(toks, samples)
    for j, row in enumerate(b["target_batch_index"].tolist()):
        ids = b["input_ids"][row]
        labels = b["labels"][row]
        i0 = int(torch.nonzero(labels == start)[0])
        i1 = int(torch.nonzero(labels == end)[0])
        expected = torch.zeros_like(ids, dtype=torch.bool)
        expected[i0 + 1:i1] = True
        assert torch.equal(b["caption_positions"][row] == j, expected)
        assert torch.equal(b["llm_caption_ids"][j], ids[i0 + 1:i1])
        assert llm.decode(b["llm_caption_ids"][j]).strip() == b["captions"][j]
        assert sd.decode(b["sd_caption_ids"][j]) == sd.decode(sd(b["captions"][j]).input_ids, skip_special_tokens=True)
        assert b["sd_input_ids"][j, 0] == sd.bos_token_id and sd.eos_token_id in b["sd_input_ids"][j].tolist()
    other = b["caption_positions"][b["caption_positions"] >= 0]
    assert set(other.tolist()) == {0, 1}
    rows_without = [r for r in range(5) if r not in b["target_batch_index"].tolist()]
    assert (b["caption_positions"][rows_without] == -1).all()


def test_truncation_drops_oldest_turns_whole(toks, dialogue):
    llm, _ = toks
    image_id = llm.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    sample = dialogue_samples(dialogue)[4]  # context: 8 turns incl. two photos; response "Wow, ..."
    col, full = collate(toks, [sample])
    n_full = int(full["attention_mask"].sum())
    n_resp = int((full["labels"] != IGNORE_INDEX).sum())
    n_min = n_resp + 1 + len(llm.tokenize("B:"))    # bos, the responder's tag, the response and eos
    for max_length in range(n_full - 1, n_min - 1, -3):
        _, b = collate(toks, [sample], max_length=max_length)
        n = int(b["attention_mask"].sum())
        assert n <= max_length
        assert torch.equal(b["labels"][0, :n][-n_resp:], full["labels"][0, :n_full][-n_resp:])  # response intact
        # the kept context is a suffix of the original, and each kept photo keeps all its placeholders
        k = int((b["input_ids"][0] == image_id).sum())
        assert k % NV == 0 and b["context_pixel_values"].shape[0] == k // NV
        text = llm.decode(b["input_ids"][0, :n])
        assert ("Hi Sam!" in text) == (max_length >= n_full)
        if k // NV == 1:  # the older red photo went first: the kept one is blue
            assert b["context_pixel_values"][0, 2].mean() > b["context_pixel_values"][0, 0].mean()
    # the oldest turn goes first: one token short drops exactly "A: Hi Sam!"
    _, b = collate(toks, [sample], max_length=n_full - 1)
    text = llm.decode(b["input_ids"][0][b["attention_mask"][0] == 1])
    assert "Hi Sam" not in text and "I got a red ball." in text
    with pytest.raises(DataError, match=r"d1:5.*max_length|max_length.*d1:5"):
        collate(toks, [sample], max_length=n_resp)


def test_extra_context_photos_are_dropped_oldest_first_and_counted(toks, dialogue):
    llm, _ = toks
    image_id = llm.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    sample = dialogue_samples(dialogue)[4]  # two context photos: red (older), blue
    col, b = collate(toks, [sample], max_context_images=1)
    assert int((b["input_ids"][0] == image_id).sum()) == NV and b["context_pixel_values"].shape[0] == 1
    assert b["context_pixel_values"][0, 2].mean() > b["context_pixel_values"][0, 0].mean()   # blue kept
    text = llm.decode(b["input_ids"][0][b["attention_mask"][0] == 1])
    assert "Hi Sam!" in text and "What do you think?" in text      # only the photo turn went
    assert col.cut_report([sample]) == {"samples": 1, "turns": 0, "photos": 1}
    assert collate(toks, [sample], max_context_images=2)[0].cut_report([sample])["samples"] == 0
    col, b = collate(toks, [sample], max_context_images=0)
    assert b["context_pixel_values"].shape[0] == 0 and col.cut_report([sample])["photos"] == 2


def test_training_limits_are_the_recipes_and_estimate_memorys():
    """One source of truth: the collator enforces recipe.max_text_length / max_context_images, which are the
    numbers `estimate-memory` budgets for (training once used the preset's 1,024 tokens and no photo cap)."""
    from photochat_lib.training.memory import estimate
    from photochat_lib.presets import collator_for, get_preset, load_toy_model
    from photochat_lib.recipe import get_recipe
    model = load_toy_model(which="end2end")
    for preset in ("toy", "colab", "paper"):
        r = get_recipe(preset)
        col = collator_for(model, preset)
        assert (col.max_length, col.max_context_images) == (r.max_text_length, r.max_context_images)
        assert get_preset(preset).max_length == r.max_text_length
    est = estimate("paper", gpu_gb=32)
    col = collator_for(model, "paper")
    assert (est.recipe.max_text_length, est.recipe.max_context_images) == (col.max_length, col.max_context_images)
    assert f"text {col.max_length} tokens, {col.max_context_images} context photos" in est.table()


def test_no_context_images_gives_empty_tensor(toks, dialogue):
    _, b = collate(toks, dialogue_samples(dialogue)[:2])
    assert b["context_pixel_values"].shape == (0, 3, 16, 16)
    assert b["target_pixel_values"].shape == (0, 3, 8, 8) and b["sd_input_ids"].shape[0] == 0
    assert b["context_image_batch_index"].shape == (0,) and b["llm_caption_ids"] == []


def test_missing_image_names_the_sample(toks):
    d = Dialogue("d9", [Turn("a", text="hi"), Turn("b", photo=Photo("Objects in the photo: cat", url="http://dead"))],
                 "test")
    data = PhotoChatDataset(dialogue_samples(d))
    with pytest.raises(DataError, match="d9:1"):
        data[0]


def test_images_any_mode_to_rgb(tmp_path):
    for mode, colour in (("RGBA", (10, 20, 30, 255)), ("L", 128), ("P", 3), ("RGB", (1, 2, 3))):
        path = tmp_path / f"{mode}.png"
        Image.new(mode, (20, 10), colour).save(path)
        img = load_image(str(path))
        assert img.mode == "RGB" and img.size == (20, 10)
        x = image_transform(6)(img)
        assert x.shape == (3, 6, 6) and x.dtype == torch.float32
    transparent = to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 0)))
    assert transparent.getpixel((0, 0)) == (255, 255, 255)
    y = sd_image_transform(4)(Image.new("RGB", (9, 5), (255, 0, 0)))
    assert torch.allclose(y[0], torch.ones(4, 4)) and torch.allclose(y[1], -torch.ones(4, 4))


def test_long_dialogues_keep_the_same_turns_in_bounded_work(toks, dialogue, monkeypatch):
    """Issue 22's probe: a 5,000-turn dialogue kept `train` silent for over 300 s (250 turns 9 s, 1,000 turns
    131 s: encode rendered the whole context and scanned every token for every turn it could drop;
    benchmarks/long_dialogue.py times it). Now: the same kept turns as dropping the oldest one at a time,
    and the text tokenized per sample stays bounded however long the dialogue."""
    photo = next(t.photo for t in dialogue.turns if t.photo is not None)

    def long(n):
        return Dialogue(f"long{n}", [Turn("ab"[i % 2], photo=photo) if i % 25 == 24 else
                                     Turn("ab"[i % 2], text=f"Turn {i}: a red ball and a blue kite.")
                                     for i in range(n)], "test")
    col, _ = collate(toks, dialogue_samples(dialogue), max_length=128, max_context_images=2)
    for s in dialogue_samples(long(120))[::7]:             # against the plain rule: drop oldest until it fits
        kept = col.encode(s)["context"]
        ctx = col._capped_context(s)
        while ctx and len(col._encode(col._render(s, ctx)[0])[0]) + 1 > col.max_length:
            ctx = ctx[1:]
        assert kept == ctx
    seen = []
    real = col._encode_batch
    monkeypatch.setattr(col, "_encode_batch", lambda texts: (seen.extend(map(len, texts)), real(texts))[1])
    last = dialogue_samples(long(5000))[-1]
    col.encode(last)
    assert sum(seen) < 12 * max(seen[-1], 1) and max(seen) < 40 * col.max_length   # not ~5,000 turns of text
    kept = col.encode(last)["context"]
    cuts = col.cut_report([last])                          # 4,999 turns, 199 photos of which the cap keeps 2
    assert cuts["turns"] == 4999 - (199 - 2) - len(kept) and cuts["photos"] == 199 - sum(t.photo is not None for t in kept)

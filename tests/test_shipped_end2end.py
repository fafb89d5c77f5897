"""The shipped end-to-end toy model (checkpoints/toy-end2end) shares the right photo, in dialogues written by
hand for this test (not drawn from the toy world's generator), through `generate` and through `photochat chat`."""
import io

import pytest
import torch

from photochat_lib.model.generation import generate
from photochat_lib.presets import load_toy_model
from photochat_lib.toy.foundation import TOY_END2END
from photochat_lib.toy.classifier import judge

# Written by hand in the toy world's phrasing (its generator never drew these dialogues): the bot (B) names
# what it got, the friend (A) asks or accepts an offer, and the bot should share a photo of exactly that.
HAND_WRITTEN = [
    ([("A", "Hey Zoe, how is it going?"), ("B", "Great! I went to the flea market."),
      ("B", "I got a green kite and a red box."), ("A", "Cool! Can you show me a photo?")],
     {("green", "triangle"), ("red", "square")}),
    ([("A", "Hi Tom!"), ("B", "Hello!"), ("B", "I bought a blue plate."), ("A", "Show me, please!")],
     {("blue", "circle")}),
    ([("B", "Hi Ivy, guess what?"), ("A", "What?"), ("B", "I found a yellow tile, a purple coin and a red flag."),
      ("A", "Nice! I would love to see them!")],
     {("yellow", "square"), ("purple", "circle"), ("red", "triangle")}),
    ([("A", "Good evening Max!"), ("B", "Hi! I picked up a purple block today."), ("A", "Oh nice."),
      ("B", "Want to see a picture?"), ("A", "Yes please!")],
     {("purple", "square")}),
    ([("A", "Hello Nora"), ("B", "I came home with a red ball and a green tent."), ("A", "Wow."),
      ("A", "Can you send me a pic?")],
     {("red", "circle"), ("green", "triangle")}),
    ([("A", "Hi there Leo!"), ("B", "Doing great, thanks!"), ("B", "I was at the mall on Sunday."),
      ("B", "I bought a blue coin and a yellow kite."), ("A", "Sounds nice."), ("A", "Do you have a picture of them?")],
     {("blue", "circle"), ("yellow", "triangle")}),
    ([("B", "Hey Mia!"), ("A", "Hi! What's new?"), ("B", "I got a green box at the garage sale."),
      ("B", "Should I send you a pic?"), ("A", "Sure, send it!")],
     {("green", "square")}),
    ([("A", "Good morning Ben! What's up?"), ("B", "Pretty good."), ("B", "I picked up a red tile and a purple ball."),
      ("A", "That sounds great!"), ("A", "Can you show me a photo?")],
     {("red", "square"), ("purple", "circle")}),
]


@pytest.fixture(scope="module")
def model():
    assert (TOY_END2END / "photochat.json").exists(), "the shipped end-to-end toy model is missing"
    torch.set_num_threads(2)
    return load_toy_model(which="end2end").eval()


def test_shares_a_photo_of_what_the_bot_named(model):
    """Every hand-written request gets exactly one photo, with no repaired caption; at least 6 of the 8
    photos show exactly the objects the bot named (on the toy test split the model's caption exact match is
    about 90 %, so 6/8 leaves room for one or two misses, not for a model that ignores the dialogue)."""
    right, wrong = 0, []
    for context, objects in HAND_WRITTEN:
        reply = generate(model, context, speaker="B", seed=0)
        assert reply.shared_photo and len(reply.images) == 1, reply.raw
        assert not reply.notes, reply.notes
        if judge(reply.images, [objects])["exact"][0]:
            right += 1
        else:
            wrong.append((reply.captions, sorted(objects)))
    assert right >= 6, f"{right}/8 right photos; wrong: {wrong}"


def test_does_not_share_before_it_is_asked(model):
    reply = generate(model, [("A", "Hi Leo! How are you?")], speaker="B", seed=0, draw_images=False)
    assert not reply.shared_photo and reply.text, reply.raw


# `photochat chat` sessions written by hand: the user's lines, and `/bot` lines that put the bot's story in its
# mouth (what the bot got), then the user asks to see it
CHAT_SESSIONS = [
    ("Hi Sam! How are you?\n/bot Doing great, thanks!\n/bot I picked up a green coin and a red coin.\n"
     "Oh cool! Can you show me a photo?\n", {("green", "circle"), ("red", "circle")}),
    ("Hi Sam! How are you?\n/bot Pretty good.\n/bot I bought a yellow plate and a blue ball at the fair.\n"
     "Wow! Can you send me a pic?\n", {("yellow", "circle"), ("blue", "circle")}),
    ("Hey Nora!\n/bot Hi! I went to the toy shop today.\n/bot I got a purple flag, a green box and a red coin.\n"
     "Nice! Show me, please!\n", {("purple", "triangle"), ("green", "square"), ("red", "circle")}),
    ("Hello Max!\n/bot Hey! I found a blue tent there.\nOh cool! Do you have a picture of them?\n",
     {("blue", "triangle")}),
]


def test_photochat_chat_shares_what_the_bot_talked_about(tmp_path):
    """`photochat chat` with no --model (the shipped end-to-end model), four hand-written sessions: every one
    ends with exactly one photo saved, in the caption format, and at least two show exactly the objects the bot
    named. Measured when the model was shipped: 2 of 4 — the misses are a caption that drops the second of two
    objects with the same noun ("a green coin and a red coin" → "green circle") and a three-object list whose
    coin became a square. The toy test split's rate is higher (caption exact 96.7 %): these sessions are phrased
    by hand, and the limit is reported in README.md ("Status and known gaps")."""
    import argparse

    from PIL import Image

    from photochat_lib.apps.chat import register
    right = []
    for k, (script, objects) in enumerate(CHAT_SESSIONS):
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        out = tmp_path / f"session{k}"
        args = parser.parse_args(["chat", "--out", str(out)])
        stdout = io.StringIO()
        assert args.func(args, stdin=io.StringIO(script + "/quit\n"), stdout=stdout) == 0
        said = stdout.getvalue()
        photos = sorted(out.glob("*.png"))
        assert len(photos) == 1 and "[shares a photo: Objects in the photo: " in said, said
        right.append(bool(judge([Image.open(photos[0]).convert("RGB")], [objects])["exact"][0]))
    assert sum(right) >= 2, right


def test_a_second_chat_session_does_not_overwrite_the_first_ones_photos(tmp_path):
    import argparse

    from photochat_lib.apps.chat import register
    (tmp_path / "photo_001.png").write_bytes(b"first session")
    (tmp_path / "photo_007.png").write_bytes(b"first session")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["chat", "--out", str(tmp_path)])
    stdout = io.StringIO()
    script = CHAT_SESSIONS[3][0] + "/quit\n"
    assert args.func(args, stdin=io.StringIO(script), stdout=stdout) == 0
    assert (tmp_path / "photo_001.png").read_bytes() == (tmp_path / "photo_007.png").read_bytes() == b"first session"
    assert (tmp_path / "photo_008.png").exists(), stdout.getvalue()

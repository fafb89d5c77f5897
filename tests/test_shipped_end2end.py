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


def test_photochat_chat_sessions_in_peoples_words():
    """The ten scripted `photochat chat` sessions of `apps/chat_sessions.py` (the bot shares on request, worded as
    people word it; the user shares a photo and the bot remarks on it), typed into the real command with the
    shipped end-to-end model. Issue 19's target is 9 right; the shipped model gets 3 (the previous one 2): this
    floor keeps what ships from getting worse, and README and notebook 08 quote the count."""
    from photochat_lib.apps.chat_sessions import run_sessions
    results = run_sessions()
    wrong = [(r.session.name, r.why, r.transcript) for r in results if not r.right]
    assert len(results) == 10 and len(wrong) <= 7, wrong


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    from photochat_lib.data.toy_world import write_toy_dataset
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), seed=0, n_train=0, n_dev=0, n_test=40)


def test_one_turn_at_a_time_on_raw_outputs(model, test_split):
    """Every reply of the toy test split (held-out phrasings), read raw: generation stops where another speaker's
    line would begin (no reply holds a speaker tag: the EndOfTurn criterion). What the bot writes in its own turn
    can still be the other speaker's act (a sharer's answer in the friend's mouth: 'Is that the purple box on the
    left?\\n Yes, that one is on the left.'): issue 19's target is none; the shipped model does it in 95 of these
    288 replies, so the test holds it under 40 %."""
    from photochat_lib.data.photochat import read_photochat
    from photochat_lib.data.samples import make_samples
    from photochat_lib.data.toy_world import FRIEND_ACTS, SHARER_ACTS, act_of
    from photochat_lib.model.generation import generate_batch
    dialogues = read_photochat(test_split / "test")
    sharer = {d.dialogue_id: next(t.speaker for t in d.turns if t.photo is not None) for d in dialogues}
    samples = [s for s in make_samples(dialogues) if not s.shares_photo]
    replies = []
    for k in range(0, len(samples), 64):
        chunk = samples[k:k + 64]
        replies += generate_batch(model, [s.context for s in chunk], [s.speaker for s in chunk], draw_images=False)
    others = []
    for s, r in zip(samples, replies):
        theirs = FRIEND_ACTS if s.speaker == sharer[s.dialogue_id] else SHARER_ACTS
        if any(act_of(line) in theirs for line in r.raw.split("\n")):
            others.append((s.id, r.raw))
        assert not any(":" in line[:4] for line in r.raw.split("\n")[1:]), r.raw   # no speaker tag left in a reply
    assert len(samples) > 250 and len(others) < 0.4 * len(samples), (len(others), others[:10])


def test_the_bot_sees_the_photos_it_is_shown(model, test_split):
    """The input end: on the test split's replies to a photo, the share that state only true photo-only facts
    (background, an object's place or size). The shipped model: 72.5 % of these 40 (chance 28.9 %; the previous
    model was at chance). Issue 19's target is 90 %; this floor keeps what ships well above chance."""
    from photochat_lib.evaluation.evaluate import evaluate_model
    m = evaluate_model(model, test_split, "test", max_samples=2, num_inference_steps=2)["metrics"]
    assert m["grounded_n"] == 40 and m["grounded_remarks"] >= 60 > 2 * m["grounded_chance"], m


def test_a_second_chat_session_does_not_overwrite_the_first_ones_photos(tmp_path):
    import argparse

    from photochat_lib.apps.chat import register
    (tmp_path / "photo_001.png").write_bytes(b"first session")
    (tmp_path / "photo_007.png").write_bytes(b"first session")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["chat", "--out", str(tmp_path)])
    stdout = io.StringIO()
    script = "Hello Max!\n/bot Hey! I found a blue tent there.\nOh cool! Do you have a picture of them?\n/quit\n"
    assert args.func(args, stdin=io.StringIO(script), stdout=stdout) == 0
    assert (tmp_path / "photo_001.png").read_bytes() == (tmp_path / "photo_007.png").read_bytes() == b"first session"
    assert (tmp_path / "photo_008.png").exists(), stdout.getvalue()

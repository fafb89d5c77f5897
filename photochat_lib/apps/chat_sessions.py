"""Ten scripted `photochat chat` sessions that check what a user meets, in words people use.

Each session is typed into the real command (`apps.chat.run`, stdin and stdout as a user sees them) with the
shipped end-to-end toy model (or any ``--model``). Two kinds, five of each:

* **the bot shares on request** — the bot's story names some objects (it tells it itself, or a ``/bot`` line
  puts it in its mouth), the user asks to see them in their own words; right when the bot shares exactly one
  photo and the toy classifier finds exactly the named objects in it (colours and shapes);
* **the user shares a photo** — ``/image`` with a toy photo drawn from labels, the bot replies; right when the
  reply states what only the photo shows (background, an object's place or size) and only true things
  (`data.photo_facts.grounded`), and the bot shares no photo of its own.

`run_sessions` returns each session's transcript and verdict; `tests/test_shipped_end2end.py` requires 9 of 10
right, and notebook 08 shows the transcripts.
"""
from __future__ import annotations

import io
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from photochat_lib.data.photo_facts import grounded
from photochat_lib.data.toy_world import COLOURS, NOUNS, ToyObject, draw_photo


@dataclass
class Session:
    name: str
    lines: list[str]                          # what the user types; "{photo}" stands for the photo's path
    objects: list[tuple[str, str]] | None = None  # request: the (colour, shape)s the bot named (None: read them
                                                  # from what the bot itself said)
    photo: dict | None = None                 # user shares: the photo's labels {background, objects: [...]}


def _photo(background: str, *objects: str) -> dict:
    """Return labels from "big red circle left"-style strings."""
    return {"background": background, "objects": [dict(zip(("size", "colour", "shape", "position"), o.split()))
                                                  for o in objects]}


SESSIONS = [
    Session("the bot tells its day, then shares", ["Hi! What did you do today?", "Nice! Did you buy anything?",
                                                   "Can I see a photo?"]),
    Session("two coins of one noun", ["Hey, how are you?", "/bot I picked up a green coin and a red coin.",
                                      "Oh cool! Mind sending me a picture?"], [("green", "circle"), ("red", "circle")]),
    Session("a new request word", ["Hello!", "/bot I got two boxes, a green one and a yellow one.", "Pics?"],
            [("green", "square"), ("yellow", "square")]),
    Session("an offer accepted", ["Hi there", "/bot I bought a purple flag and a purple coin.",
                                  "/bot Want to see?", "Yes, go on!"], [("purple", "triangle"), ("purple", "circle")]),
    Session("three objects", ["Good evening!", "/bot I found a yellow tile, a blue kite and a red plate at the fair.",
                              "Let's see them!"], [("yellow", "square"), ("blue", "triangle"), ("red", "circle")]),
    Session("the user shows a purchase", ["/image {photo} Look what I got!"],
            photo=_photo("gray", "big red circle left", "small blue square right")),
    Session("small talk, then a photo", ["Hi! How was your weekend?", "/image {photo} I bought a kite, here it is."],
            photo=_photo("white", "big yellow triangle middle")),
    Session("a photo with no words", ["/image {photo}"],
            photo=_photo("black", "small green circle left", "big purple square middle", "small red triangle right")),
    Session("new stuff", ["Hey!", "/image {photo} Check out my new stuff."],
            photo=_photo("gray", "small green square right")),
    Session("what do you think", ["/image {photo} What do you think of these?"],
            photo=_photo("white", "big purple circle left", "small red triangle middle")),
]

_NAMED = re.compile(rf"\b({'|'.join(COLOURS)}) ({'|'.join(n for ns in NOUNS.values() for n in ns)})\b")
_SHAPE_OF = {n: s for s, ns in NOUNS.items() for n in ns}


@dataclass
class Result:
    session: Session
    transcript: str                         # what the user saw
    right: bool
    why: str                                # the verdict in words
    photos: list = field(default_factory=list)   # PIL photos the bot shared


def run_session(session: Session, model_dir: str | None = None, workdir: str | Path | None = None) -> Result:
    """Type a session into `photochat chat` (the shipped end-to-end model unless model_dir) and judge it."""
    import argparse

    from PIL import Image

    from photochat_lib.apps.chat import register
    from photochat_lib.toy.classifier import judge
    work = Path(workdir or tempfile.mkdtemp(prefix="photochat-session-"))
    photo_path = work / "user_photo.png"
    if session.photo is not None:
        objects = [ToyObject(o["colour"], o["shape"], o["shape"], o["size"], o["position"])
                   for o in session.photo["objects"]]
        draw_photo(objects, session.photo["background"]).save(photo_path)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["chat", "--out", str(work / "shared")] + (["--model", model_dir] if model_dir else []))
    script = "".join(line.format(photo=photo_path) + "\n" for line in session.lines) + "/quit\n"
    stdout = io.StringIO()
    args.func(args, stdin=io.StringIO(script), stdout=stdout)
    transcript = stdout.getvalue()
    shared = sorted((work / "shared").glob("*.png"))
    photos = [Image.open(p).convert("RGB") for p in shared]
    said = [ln[ln.index("bot> ") + len("bot> "):] for ln in transcript.splitlines() if "bot> " in ln]
    if session.photo is None:                                  # the bot shares on request
        named = session.objects or [(c, _SHAPE_OF[n]) for line in said + [ln[5:] for ln in session.lines
                                                                           if ln.startswith("/bot ")]
                                    if not line.startswith("[") for c, n in _NAMED.findall(line)]
        if len(photos) != 1:
            return Result(session, transcript, False, f"{len(photos)} photos shared, expected 1", photos)
        if not named:
            return Result(session, transcript, False, "the bot named no object before sharing", photos)
        ok = bool(judge(photos, [set(named)])["exact"][0])
        return Result(session, transcript, ok, f"the photo {'shows' if ok else 'does not show'} exactly {named}", photos)
    sent = transcript.index("(photo ")                          # the bot's reply to the user's photo
    reply = " ".join(ln[ln.index("bot> ") + 5:] for ln in transcript[sent:].splitlines()
                     if "bot> " in ln and "[shares a photo" not in ln)
    if photos:
        return Result(session, transcript, False, "the bot shared a photo instead of replying to the user's", photos)
    ok = grounded(reply, session.photo)
    return Result(session, transcript, ok, f"the reply is {'grounded' if ok else 'not grounded'} in the photo", photos)


def run_sessions(model_dir: str | None = None) -> list[Result]:
    """Return the results of all `SESSIONS`."""
    return [run_session(s, model_dir) for s in SESSIONS]

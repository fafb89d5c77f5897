"""The toy world's wordings: many phrasings per dialogue act, split into a training pool and a test pool.

A model trained on one phrasing per act learns the phrasing, not the act: "Mind sending me a picture?" is not
"Can you show me a photo?" to it. So every act of `toy_world.sample_dialogue` has a list of phrasings here,
and the list is split in two (`pool`): phrasing k of an act belongs to the **test** pool when k % 4 == 3 (a
quarter of them), else to the **training** pool. The toy world's train and dev splits (and every pretraining
text: `toy/corpus.py`) are written with training phrasings only, its test split with test phrasings only, so
the test split's numbers measure how far a model generalises to wordings it never saw. The ways of listing
objects (`ITEM_STYLES`) are split the same way.

Placeholders: {name} {place} {when} {items} {bg} {colour} {noun} {where} {size_word} {size}.
"""
from __future__ import annotations

PHRASING_POOLS = ("train", "test")

GREET = [
    "Hi {name}! How are you?", "Hey {name}, how is it going?", "Hello {name}! Long time no see.",
    "Good morning {name}! What's up?", "Hi there {name}!", "Hey {name}! How have you been?",
    "Evening {name}! How was your day?", "Hello {name}, how are things?", "Hi {name}, got a minute to chat?",
    "Hey {name}! It has been a while.", "Morning {name}! How are you doing?", "Yo {name}, what's new?",
    "Hi {name}! What did you do today?", "Hey {name}, what have you been up to?", "Hello {name}! Anything new?",
    "Hi {name}, how was your weekend?",
]
GREET_BACK = [
    "I'm good, thanks! And you?", "Pretty good. What about you?", "Doing great, thanks!",
    "Not bad at all. How are you?", "Hey! I'm fine.", "All good here, thanks for asking.",
    "Great, thanks! You?", "I'm well. Busy day though.", "Fine, fine. How about you?",
    "Hi! Couldn't be better.", "Good to hear from you! I'm okay.", "Hello! Things are good.",
]
SMALL_TALK = [   # the friend asks what the sharer has been doing (the sharer answers with TRIP)
    "What did you do today?", "Anything fun lately?", "What have you been up to?", "Did you go anywhere fun?",
    "So what's new with you?", "How was your day?", "Did you do anything nice?", "Been anywhere interesting?",
]
TRIP = [
    "I went to the {place} {when}.", "I was at the {place} {when}.", "I stopped by the {place} {when}.",
    "Guess where I went {when}? The {place}!", "I checked out the {place} {when}.",
    "I had a look around the {place} {when}.", "I spent some time at the {place} {when}.",
    "I visited the {place} {when}.", "I dropped into the {place} {when}.", "I popped over to the {place} {when}.",
    "I went shopping at the {place} {when}.", "I wandered around the {place} {when}.",
]
GOT = [
    "I got {items}.", "I bought {items}.", "I found {items} there.", "I picked up {items}.",
    "I came home with {items}.", "I grabbed {items}.", "I ended up buying {items}.", "I treated myself to {items}.",
    "I bought myself {items}.", "I brought back {items}.", "I found {items} at a good price.",
    "I went home with {items}.", "I chose {items}.", "I got my hands on {items}.", "They had {items}, so I took them.",
    "I finally got {items}.", "I left with {items}.", "Now I have {items}.", "I could not resist {items}.",
    "I won {items} in a raffle.", "I paid for {items}.", "I took home {items}.", "I managed to get {items}.",
    "I splurged on {items}.",
]
REACT = [
    "Nice! That sounds fun.", "Oh cool!", "Wow, lucky you.", "That sounds great!", "Sounds nice.", "Awesome!",
    "Oh, how nice.", "Great find!", "Ooh, fancy.", "That is so cool.", "Good for you!", "No way, nice!",
]
ASK = [
    "Can you show me a photo?", "Do you have a picture of them?", "I would love to see them!",
    "Can you send me a pic?", "Show me, please!", "Send me a photo!", "Can I see them?", "Let me have a look!",
    "Could you send a picture?", "Please send a pic of them.", "Got a picture?", "Any photos?",
    "I want to see a picture of that.", "Would you show me?", "Can you share a photo?", "Photo please!",
    "Show me what they look like!", "Take a photo and send it!", "I'd like to see a photo.", "Can I get a pic?",
    "Will you send me a picture?", "Have you got a photo of them?", "Post a picture!", "Pictures, please!",
    "Send a pic so I can see.", "I need to see this, send a photo!", "Can you snap a photo for me?",
    "Do you have a photo?",
]
OFFER = [
    "Do you want to see a photo?", "Want to see a picture?", "Should I send you a pic?", "Shall I show you?",
    "Would you like to see them?", "I can send you a picture if you like.", "Want me to send a photo?",
    "I took a photo, want to see?", "Can I show you a picture?", "Do you want a pic?",
    "I have a picture of them. Interested?", "Want a photo of them?",
]
ACCEPT = [
    "Yes please!", "Of course!", "Sure, send it!", "Yes, I want to see!", "Definitely!", "Please do!",
    "Absolutely, go ahead.", "Oh yes, please.", "Yeah, show me!", "Sure thing!", "I'd love that.", "Go for it!",
]
ANNOUNCE = [     # the sharer shares without being asked
    "Look at this!", "Check this out!", "Here, take a look.", "I have to show you this.", "Look what I got!",
    "Wait until you see this.", "Let me show you.", "See for yourself.",
]
BEFORE_PHOTO = [
    "Sure, here you go!", "Here it is.", "Okay, one moment.", "Sure!", "Here you are.", "Coming right up!",
    "Of course, here.", "One sec.", "Okay, sending it now.", "No problem!", "Alright, here.", "Happy to!",
]
AFTER_PHOTO = [
    "Here they are.", "What do you think?", "This is the photo.", "Do you like them?", "Aren't they nice?",
    "Pretty cool, huh?", "That's all of them.", "Not bad, huh?",
]
SEE_BG = [
    "I love the {bg} background.", "The {bg} background looks nice.", "Why is the background {bg}?",
    "Nice photo, the background is so {bg}!", "What a {bg} background!", "I like that {bg} background.",
    "The {bg} backdrop is cool.", "Everything is on a {bg} background!", "That {bg} background makes them pop.",
    "The background is {bg}, nice.", "Cool {bg} background.", "Is that a {bg} wall behind them?",
]
SEE_POS = [
    "The {colour} {noun} {where} is my favourite.", "I like the {colour} {noun} {where}.",
    "Is that the {colour} {noun} {where}?", "The {colour} {noun} is {where}.", "I see the {colour} {noun} {where}!",
    "Love the {colour} {noun} there, {where}.", "The one {where} is the {colour} {noun}, isn't it?",
    "So the {colour} {noun} sits {where}.", "My favourite is the {colour} {noun} {where}.",
    "The {colour} {noun} {where} looks great.", "Oh, you put the {colour} {noun} {where}.",
    "Nice, the {colour} {noun} {where}.",
]
SEE_SIZE = [
    "Wow, the {colour} {noun} is so {size_word}!", "The {colour} {noun} looks {size_word}.",
    "Oh, the {colour} {noun} is {size_word}!", "That {colour} {noun} is {size_word}!",
    "The {colour} {noun} seems {size_word}.", "What a {size_word} {colour} {noun}!",
    "I did not expect the {colour} {noun} to be so {size_word}.", "Look how {size_word} the {colour} {noun} is!",
    "Such a {size_word} {colour} {noun}.", "The {colour} {noun} is really {size_word}.",
    "Your {colour} {noun} is {size_word}!", "Haha, the {colour} {noun} is {size_word}.",
]
SIZE_WORDS = {"small": ["small", "tiny", "little"], "big": ["big", "huge", "large"]}
BG_REPLY = [
    "Thanks! I put them on a {bg} table.", "Yes, I took it on my {bg} desk.", "Haha, {bg} is my favourite colour.",
    "I shot it against a {bg} wall.", "The {bg} table was all I had.", "Yes, my room is all {bg}.",
    "I thought {bg} would look good.", "Thanks, the {bg} makes it clean.",
]
POS_REPLY = [
    "Yes, I put it {where}.", "Thanks! The one {where} is my pick too.", "Yes, that one is {where}.",
    "Yep, it sits {where}.", "Exactly, {where}.", "That's it, the one {where}.", "Yes, I placed it {where}.",
    "Yes, {where} is where it belongs.",
]
SIZE_REPLY = [
    "Yes, it is really {size}.", "I know, it is {size}!", "Yes, a {size} one.", "It is quite {size}, yes.",
    "Yep, {size}.", "Right, very {size}.", "True, it is {size}.", "Yes, it came out {size}.",
]
BYE = [
    "I have to go now. Bye!", "Talk to you later!", "See you soon!", "Bye, have a nice day!", "Gotta run, bye!",
    "Catch you later!", "I need to go, talk soon.", "Have a good one!",
]
BYE_BACK = ["Bye!", "See you!", "Take care!", "Later!", "Bye bye!", "You too, bye!", "Cheers!", "See ya!"]
WHERE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}


# ----- many more phrasings, composed from parts: the pools then share words and differ in how they are put
# together, as people's requests do ("Can you send me a pic?", "Any photos?", "Mind sharing a snap?") -----
def _compose(*parts: list[str], w: list[str] = ("",)) -> list[str]:
    """Return every concatenation of one string from each part, its first letter capitalised and {w} replaced by
    each of `w`, in a fixed order (the first part varies fastest)."""
    out = [""]
    for part in parts:
        out = [head + piece for piece in part for head in out]
    return [text[0].upper() + text[1:] for word in w for text in (o.replace("{w}", word) for o in out)]


def _extend(phrasings: list[str], more: list[str]) -> list[str]:
    """Return phrasings followed by the new ones of `more` (each once, order kept)."""
    seen = set(phrasings)
    return phrasings + [m for m in more if not (m in seen or seen.add(m))]


PHOTO_WORDS = ["photo", "picture", "pic", "snap", "shot"]
ASK = _extend(ASK, _compose(["", "Oh, ", "Ooh, ", "Nice, ", "Hey, "], [
    "can you send me a {w}?", "can you show me a {w}?", "could you share a {w}?", "send me a {w}!",
    "show me a {w}, please!", "do you have a {w} of them?", "any {w}s?",
    "I would love to see a {w}!", "let me see a {w}!", "{w} please!", "will you send me a {w}?",
    "is there a {w}?", "could I see a {w} of them?", "please share a {w}!", "I want a {w} of that!"], w=PHOTO_WORDS))
OFFER = _extend(OFFER, _compose(["Do you want", "Want", "Would you like"], [
    " to see a {w}?", " a {w} of them?", " to have a look at a {w}?"], w=PHOTO_WORDS)
    + _compose(["Should I send you a {w}?", "I can show you a {w} if you like.", "I took a {w}, want it?",
                "Shall I share a {w}?", "I have a {w} of them, want to see?"], w=PHOTO_WORDS))
ACCEPT = _extend(ACCEPT, [t for t in _compose(["Yes", "Yeah", "Sure", "Of course", "Absolutely", "Definitely", "Oh yes", "Yep"],
                                  ["!", ", please!", ", send it!", ", show me!", ", go ahead.", ", I'd love that.",
                                   ", why not!", ", let me see!"]) if t not in BEFORE_PHOTO])
ANNOUNCE = _extend(ANNOUNCE, _compose(["Look", "Check this out", "Here, take a look", "Wait until you see this",
                                       "Let me show you", "Take a peek", "Have a look"], ["!", ".", ", here!"]))
GOT = _extend(GOT, _compose(["I "], ["got", "bought", "found", "picked up", "grabbed", "chose", "snagged", "ordered",
                                     "won", "received", "scored", "took home", "came home with", "ended up with",
                                     "treated myself to", "brought back"],
                            [" {items}", " {items} there", " {items} for cheap", " {items} at last"], [".", "!"]))
REACT = _extend(REACT, _compose(["Nice", "Oh cool", "Wow", "Awesome", "Great", "Sweet", "Lovely"],
                                ["!", ", lucky you!", ", that sounds fun.", ", good find!"]))

ACTS = {"greet": GREET, "greet_back": GREET_BACK, "small_talk": SMALL_TALK, "trip": TRIP, "got": GOT,
        "react": REACT, "ask": ASK, "offer": OFFER, "accept": ACCEPT, "announce": ANNOUNCE,
        "before_photo": BEFORE_PHOTO, "after_photo": AFTER_PHOTO, "see_bg": SEE_BG, "see_pos": SEE_POS,
        "see_size": SEE_SIZE, "bg_reply": BG_REPLY, "pos_reply": POS_REPLY, "size_reply": SIZE_REPLY,
        "bye": BYE, "bye_back": BYE_BACK}


def plural(noun: str) -> str:
    """Return "boxes", "balls"."""
    return noun + ("es" if noun.endswith("x") else "s")


def _join(words: list[str], last: str = " and ") -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + last + words[-1]


NUMBER = {2: "two", 3: "three"}
_one_noun = lambda objs: len(objs) > 1 and len({n for _, n in objs}) == 1   # noqa: E731  all objects share a noun
# How a speaker lists the objects (colour, noun) it got, in mention order; a style returns None where it does not
# fit. Both pools have a style that always fits (k = 0 and k = 3).
ITEM_STYLES = [
    lambda objs: _join([f"a {c} {n}" for c, n in objs]),                                  # a red ball and a blue box
    lambda objs: _join([f"a {c} {n}" for c, n in objs], " plus "),                        # a red ball plus a blue box
    lambda objs: _join([f"one {c} {n}" for c, n in objs]),                                # one red ball and one blue box
    lambda objs: _join([f"a {c} {n}" for c, n in objs], " as well as "),                  # ... as well as a blue box
    lambda objs: (f"{NUMBER[len(objs)]} {plural(objs[0][1])}: " + _join([f"a {c} one" for c, _ in objs])
                  if _one_noun(objs) else None),                                          # two boxes: a red one and ...
    lambda objs: _join([f"a {c} {n}" for c, n in objs], " and also "),                    # ... and also a blue box
    lambda objs: _join([f"a {c} {n}" for c, n in objs], ", and ") if len(objs) > 2 else None,  # a, b, and c
    lambda objs: _join([f"a {c}" for c, _ in objs]) + f" {objs[0][1]}" if _one_noun(objs) else None,  # a red and a blue box
    lambda objs: _join([f"a {c} {n}" for c, n in objs], " together with "),               # ... together with a blue box
    lambda objs: ("first " + ", then ".join(f"a {c} {n}" for c, n in objs)) if len(objs) > 1 else None,  # first ..., then ...
    lambda objs: (f"{NUMBER[len(objs)]} {plural(objs[0][1])}, " + _join([f"a {c} one" for c, _ in objs])
                  if _one_noun(objs) else None),                                          # two boxes, a red one and ...
    lambda objs: _join([f"a {c} {n}" for c, n in objs], " along with "),                  # ... along with a blue box
]


def pool(phrasings: list, which: str) -> list:
    """Return the phrasings of a pool: "train" (k % 4 != 3), "test" (k % 4 == 3) or "all"."""
    if which == "all":
        return list(phrasings)
    if which not in PHRASING_POOLS:
        raise ValueError(f"phrasing pool must be one of {PHRASING_POOLS} or 'all', got {which!r}")
    return [p for k, p in enumerate(phrasings) if (k % 4 == 3) == (which == "test")]


def items_text(objects: list[tuple[str, str]], styles: list, rng) -> str:
    """Return the objects (colour, noun) listed in a style drawn from `styles` (one that fits them)."""
    text = rng.choice(styles)(objects)
    if text is None:
        text = rng.choice([t for t in (style(objects) for style in styles) if t is not None])
    return text

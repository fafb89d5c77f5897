"""Turn dialogues into (context U, response R) samples, the task of paper §2.1.

**Which turns become targets.** A *run* is a maximal sequence of consecutive turns of one speaker,
photo turns included (so "A: look!", A shares a photo, "A: cute, right?" is one run). Every run
except the dialogue's first becomes the response R of one sample, with *all* turns before it as the
context U. Runs with and without a photo are both kept, so a model must also learn when *not* to share
(share-timing can be evaluated); ``photo_only=True`` keeps only runs that share a photo (image
metrics). A photo in R becomes ``[IMG] caption[/IMG]`` in the target text and its image is the target
of the image loss (eq. 12); a photo in U is an image input to the image perceptron (§2.3).

Sample ids are ``f"{dialogue_id}:{run_index}"`` with ``run_index`` counting runs from 0 (the first run,
never a target), so ids are stable whatever filter is applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from photochat_lib.data.schema import Dialogue, Photo, Turn
from photochat_lib.data.tokens import IMG_END, IMG_START


def photo_text(photo: Photo) -> str:
    """Return the target text of a shared photo: ``[IMG] caption[/IMG]`` (§2.2)."""
    return f"{IMG_START} {photo.caption}{IMG_END}"


def turn_text(turn: Turn) -> str:
    """Return a turn's text, or its photo's ``[IMG] caption[/IMG]``."""
    return photo_text(turn.photo) if turn.photo is not None else turn.text


@dataclass(frozen=True)
class Sample:
    """One (U, R) pair: the context turns and the response run of one speaker."""
    id: str               # f"{dialogue_id}:{run_index}"
    dialogue_id: str      # the dialogue it comes from
    context: list[Turn]   # U: every turn before the response, in order
    response: list[Turn]  # R: one maximal run of one speaker's turns
    speakers: tuple[str, ...]  # the dialogue's speakers in order of first appearance (for tags)

    @property
    def speaker(self) -> str:
        """Return the responding speaker."""
        return self.response[0].speaker

    def response_text(self, sep: str = "\n") -> str:
        """Return R as text: turns joined by sep, photos as ``[IMG] caption[/IMG]``."""
        return sep.join(turn_text(t) for t in self.response)

    def target_photos(self) -> list[Photo]:
        """Return the photos shared in R, in order (targets of the image loss)."""
        return [t.photo for t in self.response if t.photo is not None]

    def context_photos(self) -> list[Photo]:
        """Return the photos shared in U, in order (inputs to the image perceptron)."""
        return [t.photo for t in self.context if t.photo is not None]

    @property
    def shares_photo(self) -> bool:
        """Return True when the response shares a photo."""
        return any(t.photo is not None for t in self.response)

    @property
    def answers_photo(self) -> bool:
        """Return True when the response is the first one after a photo *another* speaker shared: the reply
        that can speak about what only the photo shows (the input end's job, §2.3)."""
        for k in range(len(self.context) - 1, -1, -1):
            t = self.context[k]
            if t.photo is not None:
                return t.speaker != self.speaker and not self.shares_photo
            if t.speaker == self.speaker:
                return False
        return False


def runs(turns: list[Turn]) -> list[list[Turn]]:
    """Return the maximal runs of consecutive same-speaker turns (photo turns included)."""
    out: list[list[Turn]] = []
    for t in turns:
        if out and out[-1][-1].speaker == t.speaker:
            out[-1].append(t)
        else:
            out.append([t])
    return out


def dialogue_samples(dialogue: Dialogue, photo_only: bool = False) -> list[Sample]:
    """Return the samples of one dialogue: every run after the first, with all earlier turns as context."""
    speakers = tuple(dict.fromkeys(t.speaker for t in dialogue.turns))
    out, start = [], 0
    for k, run in enumerate(runs(dialogue.turns)):
        if k > 0 and (not photo_only or any(t.photo is not None for t in run)):
            out.append(Sample(id=f"{dialogue.dialogue_id}:{k}", dialogue_id=dialogue.dialogue_id,
                              context=list(dialogue.turns[:start]), response=run, speakers=speakers))
        start += len(run)
    return out


def make_samples(dialogues: Iterable[Dialogue], photo_only: bool = False) -> list[Sample]:
    """Return the samples of every dialogue, in order."""
    return [s for d in dialogues for s in dialogue_samples(d, photo_only)]

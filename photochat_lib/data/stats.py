"""Dataset statistics in the columns of the paper's Table 1.

Definitions (photo-sharing turns are excluded from the utterance counts, as Table 1 says):

* ``# Dial``: dialogues;  ``# Utter``: text turns;
* ``# CUtter``: text turns counting each maximal run of one speaker's consecutive text turns once.
  Photo turns are removed *before* runs are found, so a photo never breaks a run: "B: hi", A shares
  a photo, "B: nice" is one B run (and "A: look", A's photo, "A: cute" is one A run);
* ``U/D`` = # CUtter / # Dial;  ``# Img``: photo turns;  ``I/D`` = # Img / # Dial;
* ``# DImg``: distinct images, identified by URL, else local path, else caption (``Photo.key``).
  The total row adds the splits' ``# DImg`` (as Table 1 does: 38,743 + 6,413 + 6,279 = 51,435).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from photochat_lib.data.schema import Dialogue


@dataclass
class Stats:
    """Table 1's counts for one split (or several merged)."""
    name: str                                 # row label (e.g. the path)
    dialogues: int = 0                        # # Dial
    utterances: int = 0                       # # Utter (text turns)
    cutterances: int = 0                      # # CUtter (same-speaker runs of text turns)
    images: int = 0                           # # Img (photo turns)
    image_keys: set = field(default_factory=set)  # distinct Photo.key values, for # DImg
    distinct_sum: int | None = None           # total rows: the sum of the rows' # DImg

    @property
    def u_per_d(self) -> float:
        """Return U/D = # CUtter / # Dial."""
        return self.cutterances / self.dialogues if self.dialogues else 0.0

    @property
    def i_per_d(self) -> float:
        """Return I/D = # Img / # Dial."""
        return self.images / self.dialogues if self.dialogues else 0.0

    @property
    def distinct_images(self) -> int:
        """Return # DImg."""
        return self.distinct_sum if self.distinct_sum is not None else len(self.image_keys)

    def merge(self, other: "Stats", name: str) -> "Stats":
        """Return the sums of both rows (# DImg summed too, as in Table 1's total row)."""
        return Stats(name, self.dialogues + other.dialogues, self.utterances + other.utterances,
                     self.cutterances + other.cutterances, self.images + other.images,
                     distinct_sum=self.distinct_images + other.distinct_images)


def dialogue_stats(dialogues: Iterable[Dialogue], name: str = "") -> Stats:
    """Return Table 1's counts for a collection of dialogues."""
    s = Stats(name)
    for d in dialogues:
        s.dialogues += 1
        previous = None
        for t in d.turns:
            if t.photo is not None:
                s.images += 1
                s.image_keys.add(t.photo.key)
                continue  # excluded from utterance counts, and does not break a run
            s.utterances += 1
            if t.speaker != previous:
                s.cutterances += 1
            previous = t.speaker
    return s


def format_table(rows: list[Stats]) -> str:
    """Return a plain-text table, one line per row, plus a total row when there are several."""
    if len(rows) > 1:
        total = rows[0]
        for r in rows[1:]:
            total = total.merge(r, "total")
        rows = rows + [total]
    head = ["split", "# Dial", "# Utter", "# CUtter", "U/D", "# Img", "# DImg", "I/D"]
    body = [[r.name, f"{r.dialogues:,}", f"{r.utterances:,}", f"{r.cutterances:,}", f"{r.u_per_d:.2f}",
             f"{r.images:,}", f"{r.distinct_images:,}", f"{r.i_per_d:.2f}"] for r in rows]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body])

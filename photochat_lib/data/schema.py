"""One in-memory representation for PhotoChat, DialogCC and the toy world, and the data errors."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad input data; the message names the file, dialogue id and field when they are known."""

    def __init__(self, reason: str, message: str, *, file: str | None = None,
                 dialogue_id: str | None = None, field: str | None = None):
        where = ", ".join(p for p in (file and f"file {file}", dialogue_id is not None and
                                      f"dialogue {dialogue_id}", field and f"field {field!r}") if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.reason = reason            # short machine-readable kind, e.g. "missing_field"
        self.file = file                # the file being read
        self.dialogue_id = dialogue_id  # the dialogue at fault, if any
        self.field = field              # the JSON field at fault, if any


@dataclass
class ReadReport:
    """What a lenient read skipped: counts per reason, and the first messages."""
    read: int = 0                                    # dialogues kept
    skipped: Counter = field(default_factory=Counter)  # reason -> number of dialogues (or files) skipped
    messages: list[str] = field(default_factory=list)  # the error messages (first 100)

    def skip(self, err: DataError) -> None:
        """Count one skipped item."""
        self.skipped[err.reason] += 1
        if len(self.messages) < 100:
            self.messages.append(str(err))

    def summary(self) -> str:
        """Return one line: kept count and skipped counts per reason."""
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        return f"read {self.read} dialogues; skipped {sum(self.skipped.values())}" + (f" ({parts})" if parts else "")


@dataclass(frozen=True)
class Photo:
    """A shared photo: its caption, and where the pixels are (local file and/or URL)."""
    caption: str            # the photo's text description (PhotoChat: photo_description)
    path: str | None = None  # local image file, if found
    url: str | None = None   # original URL (or relative path for the toy world)
    generated: bool = False  # True when the pixels were generated from the caption (dead URL, §3.1.1)

    def __post_init__(self):
        if not isinstance(self.caption, str) or not self.caption.strip():
            raise ValueError(f"Photo.caption must be a non-empty string, got {self.caption!r}")
        for name in ("path", "url"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"Photo.{name} must be a string or None, got {value!r}")

    @property
    def key(self) -> str:
        """Return the identity used to count distinct images: url, else path, else caption."""
        return self.url or self.path or self.caption


@dataclass(frozen=True)
class Turn:
    """One turn: a speaker and exactly one of a text message or a photo."""
    speaker: str              # speaker id as a string (PhotoChat's user_id)
    text: str | None = None   # the message, for a text turn
    photo: Photo | None = None  # the shared photo, for a photo turn

    def __post_init__(self):
        if not isinstance(self.speaker, str) or not self.speaker:
            raise ValueError(f"Turn.speaker must be a non-empty string, got {self.speaker!r}")
        if (self.text is None) == (self.photo is None):
            raise ValueError("a Turn has exactly one of text or photo")
        if self.text is not None and (not isinstance(self.text, str) or not self.text.strip()):
            raise ValueError(f"Turn.text must be a non-empty string, got {self.text!r}")
        if self.photo is not None and not isinstance(self.photo, Photo):
            raise ValueError(f"Turn.photo must be a Photo, got {type(self.photo).__name__}")

    @property
    def is_photo(self) -> bool:
        """Return True for a photo-sharing turn."""
        return self.photo is not None


@dataclass(frozen=True)
class Dialogue:
    """A dialogue: an id unique within its dataset, its turns in order, and where it came from."""
    dialogue_id: str   # e.g. "0" (PhotoChat), "train-00012" (toy)
    turns: list[Turn]  # in order; at least one turn
    source: str        # the file it was read from (or a dataset name)

    def __post_init__(self):
        if not isinstance(self.dialogue_id, str) or not self.dialogue_id:
            raise ValueError(f"Dialogue.dialogue_id must be a non-empty string, got {self.dialogue_id!r}")
        if not self.turns or not all(isinstance(t, Turn) for t in self.turns):
            raise ValueError(f"dialogue {self.dialogue_id}: turns must be a non-empty list of Turn")

    @property
    def photos(self) -> list[Photo]:
        """Return the shared photos in order."""
        return [t.photo for t in self.turns if t.photo is not None]

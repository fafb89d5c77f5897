"""Read DialogCC (Lee et al., 2024; HF dataset ``passing2961/dialogcc``, CC BY-NC-SA 4.0) as Dialogues.

The release is ``train.json``, ``valid.json``, ``test.json`` with images from CC3M given by URL. The
schema below follows the dataset card (fields ``dialogue_id``, ``dialogue``, ``split``; each utterance
has ``utterance_idx, utterance, speaker, rationale, shared_image, description``). The card does not
spell out the inside of ``shared_image`` and the files could not be opened offline, so this adapter
ASSUMES, and rejects anything else with a DataError naming the field:

* the file is a JSON list of dialogues (or an object whose values are dialogues);
* ``dialogue_id``: str or int; ``dialogue``: non-empty list of utterance objects;
* each utterance: ``utterance`` (str; may be empty only if it shares an image), ``speaker`` (str or
  int); ``utterance_idx``, ``rationale``, ``split`` are ignored;
* ``shared_image``: absent, null, an empty list, one image or a list of images; an image is an object
  with ``image_url`` (or ``url``) and optionally ``caption``, or just a URL string;
* a shared image's caption is its ``caption``, else the utterance's ``description``;
* the utterance's speaker shares the images right after saying the utterance: the text becomes a
  text turn, then each image a photo turn of the same speaker (``max_images_per_utterance`` keeps
  only the first N of the CLIP-aligned alternatives; None keeps all).

A dialogue with no shared image at all is an error ("no_photo"), as for PhotoChat. Local images are
looked up as for PhotoChat, keyed ``<dialogue_id>_<k>`` for the k-th image (0-based) of the dialogue:
``<images_dir or JSON folder/images>/<dialogue_id>_<k>.<jpg|jpeg|png|webp>``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from photochat_lib.data.photochat import dialogue_items, find_image, get_field, read_files
from photochat_lib.data.schema import DataError, Dialogue, Photo, ReadReport, Turn


def read_dialogcc(path: str | Path, *, images_dir: str | Path | None = None, lenient: bool = False,
                  report: ReadReport | None = None, check_images: bool = False,
                  max_images_per_utterance: int | None = None) -> list[Dialogue]:
    """Return the dialogues of a DialogCC JSON file (e.g. ``test.json``) or a folder of them."""
    img_dir = Path(images_dir) if images_dir is not None else None

    def parse(file: Path, data: Any) -> list:
        if isinstance(data, dict):
            data = list(data.values())
        return dialogue_items(file, data, lambda raw, did: _dialogue(raw, did, file, img_dir,
                                                                      max_images_per_utterance))

    return read_files(path, parse, lenient=lenient, report=report, check_images=check_images)


def _images(value: Any, f: str, did: str, where: str) -> list[tuple[str | None, str | None]]:
    """Return [(url, caption or None)] from a shared_image value of any of the assumed shapes."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for j, item in enumerate(items):
        label = f"{where}shared_image[{j}]"
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, dict):
            url = item.get("image_url", item.get("url"))
            caption = item.get("caption")
            if url is not None and not isinstance(url, str):
                raise DataError("bad_type", "image_url must be a string", file=f, dialogue_id=did, field=label)
            if caption is not None and not isinstance(caption, str):
                raise DataError("bad_type", "caption must be a string", file=f, dialogue_id=did, field=label)
            out.append((url, caption))
        else:
            raise DataError("bad_type", f"expected an image object or URL, got {type(item).__name__}",
                            file=f, dialogue_id=did, field=label)
    return out


def _dialogue(raw: Any, did: str, file: Path, images_dir: Path | None,
              max_images: int | None) -> Dialogue:
    """Return one validated Dialogue from a DialogCC entry, or raise DataError."""
    f = str(file)
    if not isinstance(raw, dict):
        raise DataError("bad_format", f"entry is a {type(raw).__name__}, not an object", file=f, dialogue_id=did)
    get_field(raw, "dialogue_id", (str, int), f, did)
    utterances = get_field(raw, "dialogue", list, f, did)
    if not utterances:
        raise DataError("empty_dialogue", "no utterances", file=f, dialogue_id=did, field="dialogue")
    turns, n_images = [], 0
    for k, u in enumerate(utterances):
        where = f"dialogue[{k}]."
        if not isinstance(u, dict):
            raise DataError("bad_format", "utterance is not an object", file=f, dialogue_id=did,
                            field=f"dialogue[{k}]")
        text = get_field(u, "utterance", str, f, did, where)
        speaker = str(get_field(u, "speaker", (str, int), f, did, where))
        images = _images(u.get("shared_image"), f, did, where)[:max_images]
        description = u.get("description")
        if text.strip():
            turns.append(Turn(speaker=speaker, text=text.strip()))
        elif not images:
            raise DataError("empty_message", "utterance is empty and shares no image", file=f,
                            dialogue_id=did, field=f"{where}utterance")
        for url, caption in images:
            caption = caption if caption and caption.strip() else description
            if not isinstance(caption, str) or not caption.strip():
                raise DataError("missing_field", "shared image has no caption and the utterance no "
                                "description", file=f, dialogue_id=did, field=f"{where}description")
            path, generated = find_image(file.parent, images_dir, f"{did}_{n_images}", url)
            turns.append(Turn(speaker=speaker, photo=Photo(caption=caption.strip(), path=path,
                                                           url=url or None, generated=generated)))
            n_images += 1
    if n_images == 0:
        raise DataError("no_photo", "no utterance shares an image", file=f, dialogue_id=did, field="dialogue")
    return Dialogue(dialogue_id=did, turns=turns, source=f)

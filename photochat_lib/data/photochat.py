"""Read PhotoChat JSON (Zang et al., 2021) into :class:`~photochat_lib.data.schema.Dialogue` objects.

PhotoChat files hold a list of ``{dialogue: [{message, share_photo, user_id}], dialogue_id,
photo_description, photo_url}``. A photo turn has ``share_photo: true`` and an empty ``message``; its
:class:`Photo` gets ``caption = photo_description`` and ``url = photo_url`` (every photo turn of a
dialogue gets that same photo; the release has exactly one). ``user_id`` becomes the speaker string.

**Where the pixels are.** For a dialogue read from ``DIR/x.json`` (split ``DIR.name``, dataset root
``ROOT = DIR/..``) the first hit wins:

1. ``DIR/<photo_url>`` when ``photo_url`` is a relative path (the toy world writes ``images/<id>.png``);
2. ``<images_dir>/<dialogue_id>.<ext>`` when the ``images_dir`` argument is given;
3. ``ROOT/manifest.json`` written by ``photochat data download`` (data/download.py): its ``files``
   entries of kind ``image`` with status ``ok`` or ``generated`` (a stand-in made from the caption for
   a dead URL, paper §3.1.1; the photo is then marked ``generated=True``);
4. ``DIR/images/<id>.<ext>``, ``ROOT/images/<split>/<id>.<ext>``, ``ROOT/images/<id>.<ext>``,
   for ``ext`` in jpg, jpeg, png, webp, gif, bmp, tif (the download's naming).

If none exists ``Photo.path`` is None. With ``check_images=True`` every photo must have a file that
PIL can decode, else the dialogue is an error ("missing_image" / "bad_image").

**Errors.** Malformed JSON, non-UTF-8 bytes, missing or mistyped fields, a photo turn with text, an
empty text turn, a dialogue without a photo, a dialogue id seen twice in one read: each raises
:class:`DataError` naming the file, dialogue id and field. With ``lenient=True`` the bad dialogue (or
file, for the first two) is skipped instead, counted per reason in the :class:`ReadReport`, and a
warning with the summary is emitted, so nothing is dropped silently.
"""
from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any, Callable


from photochat_lib.data.images import load_image
from photochat_lib.data.schema import DataError, Dialogue, Photo, ReadReport, Turn

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif")


def json_files(path: str | Path) -> list[Path]:
    """Return [path] for a file, or the sorted ``*.json`` files directly inside a directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise DataError("no_files", "no *.json files in this directory", file=str(path))
        return files
    if not path.is_file():
        raise DataError("no_files", "no such file or directory", file=str(path))
    return [path]


def load_json(path: Path) -> Any:
    """Return the parsed JSON of a UTF-8 file, or raise DataError (not_utf8 / bad_json)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError("not_utf8", f"not valid UTF-8 at byte {e.start}", file=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError("bad_json", f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})",
                        file=str(path)) from None


def get_field(obj: dict, name: str, types: type | tuple, file: str, did: str | None, where: str = "") -> Any:
    """Return obj[name] if present and of the given type(s), else raise DataError."""
    label = f"{where}{name}"
    if name not in obj:
        raise DataError("missing_field", "missing field", file=file, dialogue_id=did, field=label)
    value = obj[name]
    # bool is an int in Python: never accept it where a number or string is expected
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,))):
        raise DataError("bad_type", f"expected {_names(types)}, got {type(value).__name__}",
                        file=file, dialogue_id=did, field=label)
    return value


def _names(types: type | tuple) -> str:
    """Return 'str or int' for (str, int)."""
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def find_image(json_dir: Path, images_dir: Path | None, dialogue_id: str,
               url: str | None) -> tuple[str | None, bool]:
    """Return (local image path or None, generated?) by the lookup rule in the module docstring."""
    if url and "://" not in url and not Path(url).is_absolute() and (json_dir / url).is_file():
        return str(json_dir / url), False
    root = json_dir.parent
    if images_dir is None:
        manifest = root / "manifest.json"
        mtime = manifest.stat().st_mtime_ns if manifest.is_file() else None
        hit = _manifest_images(str(root), mtime).get((json_dir.name, dialogue_id))
        if hit is not None:
            return hit
    folders = ([images_dir] if images_dir is not None else
               [json_dir / "images", root / "images" / json_dir.name, root / "images"])
    for folder in folders:
        for ext in IMAGE_EXTS:
            if (folder / f"{dialogue_id}{ext}").is_file():
                return str(folder / f"{dialogue_id}{ext}"), False
    return None, False


@functools.lru_cache(maxsize=8)
def _manifest_images(root: str, mtime: int | None) -> dict[tuple[str, str], tuple[str, bool]]:
    """Return (split, dialogue id) -> (path, generated?) from ROOT/manifest.json ({} if absent).

    mtime (the manifest's) is only part of the cache key, so a rewritten manifest is read again.
    """
    path = Path(root) / "manifest.json"
    if mtime is None:
        return {}
    data = load_json(path)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise DataError("bad_manifest", "expected an object with a 'files' object", file=str(path))
    out = {}
    for key, e in files.items():
        if isinstance(e, dict) and e.get("kind") == "image" and e.get("status") in ("ok", "generated"):
            if not all(isinstance(e.get(k), (str, int)) for k in ("split", "dialogue_id", "path")):
                raise DataError("bad_manifest", "image entry needs split, dialogue_id and path",
                                file=str(path), field=f"files.{key}")
            file = Path(root) / str(e["path"])
            if file.is_file():
                out[(str(e["split"]), str(e["dialogue_id"]))] = (str(file), e["status"] == "generated")
    return out


def verify_image(photo: Photo, file: str, did: str) -> None:
    """Raise DataError unless the photo has a local file that :func:`load_image` can fully decode."""
    if photo.path is None:
        raise DataError("missing_image", f"no local image for {photo.url!r}", file=file, dialogue_id=did)
    try:
        load_image(photo)                         # the same decode (and size limit) training uses
    except (OSError, ValueError) as e:            # missing, truncated, corrupt, too large (ImageError)
        raise DataError("bad_image", f"unreadable image: {e}", file=file, dialogue_id=did) from None


def read_files(path: str | Path, parse_file: Callable[[Path, Any], list], *, lenient: bool,
               report: ReadReport | None, check_images: bool) -> list[Dialogue]:
    """Return the dialogues of every JSON file under path, parsed by parse_file(file, data).

    parse_file yields (dialogue_id, build) pairs where build() returns a Dialogue or raises DataError.
    """
    report = report if report is not None else ReadReport()
    out: list[Dialogue] = []
    seen: dict[str, str] = {}
    for file in json_files(path):
        try:
            items = parse_file(file, load_json(file))
        except DataError as err:
            if not lenient:
                raise
            report.skip(err)
            continue
        for did, build in items:
            try:
                if did in seen:
                    raise DataError("duplicate_id", f"dialogue id already read from {seen[did]}",
                                    file=str(file), dialogue_id=did, field="dialogue_id")
                dialogue = build()
                if check_images:
                    for photo in dialogue.photos:
                        verify_image(photo, str(file), did)
            except DataError as err:
                if not lenient:
                    raise
                report.skip(err)
                continue
            seen[did] = str(file)
            out.append(dialogue)
    report.read += len(out)
    if report.skipped:
        warnings.warn(f"{path}: {report.summary()}", stacklevel=3)
    return out


def read_photochat(path: str | Path, *, images_dir: str | Path | None = None, lenient: bool = False,
                   report: ReadReport | None = None, check_images: bool = False) -> list[Dialogue]:
    """Return the dialogues of a PhotoChat JSON file or of a directory of them (e.g. ``train/``)."""
    img_dir = Path(images_dir) if images_dir is not None else None
    return read_files(path, lambda f, data: _parse_file(f, data, img_dir), lenient=lenient,
                      report=report, check_images=check_images)


def dialogue_items(file: Path, data: Any, build: Callable[[Any, str], Dialogue]) -> list:
    """Return (dialogue_id, thunk) pairs for a file's JSON list: thunk() = build(raw, dialogue_id)."""
    if not isinstance(data, list):
        raise DataError("bad_format", f"expected a JSON list of dialogues, got {type(data).__name__}",
                        file=str(file))
    items = []
    for i, raw in enumerate(data):
        did = raw.get("dialogue_id") if isinstance(raw, dict) else None
        did = str(did) if isinstance(did, (str, int)) and not isinstance(did, bool) else f"#{i}"
        items.append((did, lambda raw=raw, did=did: build(raw, did)))
    return items


def _parse_file(file: Path, data: Any, images_dir: Path | None) -> list:
    """Return (dialogue_id, build) pairs for one PhotoChat file's content."""
    return dialogue_items(file, data, lambda raw, did: _dialogue(raw, did, file, images_dir))


def _dialogue(raw: Any, did: str, file: Path, images_dir: Path | None) -> Dialogue:
    """Return one validated Dialogue from a PhotoChat entry, or raise DataError."""
    f = str(file)
    if not isinstance(raw, dict):
        raise DataError("bad_format", f"entry is a {type(raw).__name__}, not an object", file=f, dialogue_id=did)
    get_field(raw, "dialogue_id", (str, int), f, did)
    caption = get_field(raw, "photo_description", str, f, did)
    url = get_field(raw, "photo_url", str, f, did) if raw.get("photo_url") is not None else None
    turns_raw = get_field(raw, "dialogue", list, f, did)
    if not turns_raw:
        raise DataError("empty_dialogue", "no turns", file=f, dialogue_id=did, field="dialogue")
    photo = None
    turns = []
    for k, t in enumerate(turns_raw):
        where = f"dialogue[{k}]."
        if not isinstance(t, dict):
            raise DataError("bad_format", "turn is not an object", file=f, dialogue_id=did, field=f"dialogue[{k}]")
        message = get_field(t, "message", str, f, did, where)
        share = get_field(t, "share_photo", bool, f, did, where)
        speaker = str(get_field(t, "user_id", (int, str), f, did, where))
        if share:
            if message.strip():
                raise DataError("photo_turn_with_text", f"photo turn has text {message!r}",
                                file=f, dialogue_id=did, field=f"{where}message")
            if not caption.strip():
                raise DataError("missing_field", "empty photo description", file=f, dialogue_id=did,
                                field="photo_description")
            if photo is None:
                path, generated = find_image(file.parent, images_dir, did, url)
                photo = Photo(caption=caption.strip(), path=path, url=url or None, generated=generated)
            turns.append(Turn(speaker=speaker, photo=photo))
        else:
            if not message.strip():
                raise DataError("empty_message", "text turn has an empty message", file=f,
                                dialogue_id=did, field=f"{where}message")
            turns.append(Turn(speaker=speaker, text=message.strip()))
    if photo is None:
        raise DataError("no_photo", "no turn shares a photo", file=f, dialogue_id=did, field="dialogue")
    return Dialogue(dialogue_id=did, turns=turns, source=f)

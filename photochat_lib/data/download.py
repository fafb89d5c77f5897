"""Download PhotoChat (dialogue JSON + photos) and DialogCC (text) into `data/`.

`photochat data download photochat --dest data/photochat` fetches the 25 PhotoChat JSON files from the
google-research GitHub repository into `<dest>/{train,dev,test}/`, then every dialogue's shared photo
into `<dest>/images/<dialogue_id>.<ext>` (ext from the image's own bytes: jpg, png, gif, webp, ...).
A reader finds a dialogue's photo by globbing `<dest>/images/<dialogue_id>.*`; the manifest's `images`
map (split -> dialogue id -> path) says the same explicitly. If one dialogue id stood for two different
photos in two splits, both go to `images/<split>/<dialogue_id>.<ext>` instead (only the map finds them).

`<dest>/manifest.json` keeps, per file (keyed `test/test_00.json` or `images/<dialogue_id>`): `path` (None
while there is no verified file), `url`, `sha256`, `bytes`, `status` (ok / dead: 404, 410, 451, DNS failure
or Flickr's placeholder / failed: timeouts, resets, truncated bodies after the retries / corrupt: not a
decodable image or not valid JSON / generated), `attempts` (requests over all runs), `error` (the last one),
and for generated photos `generator` and `source_status`. A `.part` file stays only where the server takes
Range requests (`resumable: true`), so the next run resumes it; JSON files never keep one. A rerun skips `ok` files whose sha256 still matches and retries
the rest. Many photo URLs are dead (§3.1.1 of the paper: "some image are not accessible now due to
expired URLs"); that is reported in `<dest>/dead_urls.txt`, not an error. `--fill-missing` then does
what the paper did with Stable Diffusion 3: generate each missing photo from its `photo_description`.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from photochat_lib.utils.atomic import fsync_dir, write_text
from photochat_lib.utils.cliutil import progress_bar
from photochat_lib.data.http_fetch import (FetchConfig, Manifest, build_opener, fetch, sha256_file, still_ok,
                         strong_validator)

BASE_URL = "https://raw.githubusercontent.com/google-research/google-research/master/multimodalchat/photochat/"
SPLIT_FILES = {"train": 21, "dev": 2, "test": 2}   # train/train_00..20.json, dev/dev_00..01.json, ...
STATUSES = ("ok", "dead", "failed", "corrupt", "generated")
MISSING = ("dead", "failed", "corrupt")            # what --fill-missing replaces
PIL_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
IMAGE_NAMING = ("images/<dialogue_id>.<ext>, ext from the image bytes (jpg, png, gif, webp, bmp, tif); "
                "generated photos are images/<dialogue_id>.png; a dialogue id used for different photos in "
                "two splits goes to images/<split>/<dialogue_id>.<ext>; `images` maps split -> id -> path")
DIALOGCC_REPO = "passing2961/dialogcc"
DIALOGCC_FILES = ("train.json", "valid.json", "test.json")
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")


class DownloadError(RuntimeError):
    """The dataset's text could not be fetched or read (the command exits non-zero)."""


class OfflineError(DownloadError):
    """The host holding the dataset's text cannot be reached at all."""


@dataclass
class DownloadReport:
    dest: Path                                       # the dataset folder
    json_counts: dict[str, int]                      # status -> number of JSON files
    image_counts: dict[str, int]                     # status -> number of dialogues' photos
    skipped: int = 0                                 # files already ok (sha256 matched): no request made
    requests: int = 0                                # HTTP attempts made in this run
    missing: list[tuple[str, str, str, str]] = field(default_factory=list)  # (split, id, status, url)
    manifest_path: Path | None = None                # <dest>/manifest.json
    dead_urls_path: Path | None = None               # <dest>/dead_urls.txt
    seconds: float = 0.0                             # wall time of the run


def split_files(split: str) -> list[str]:
    """Return the relative paths of one split's JSON files, e.g. `dev/dev_00.json`."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown PhotoChat split {split!r}; choose from {sorted(SPLIT_FILES)}")
    return [f"{split}/{split}_{i:02d}.json" for i in range(SPLIT_FILES[split])]


def read_photochat_json(path: str | os.PathLike, name: str | None = None) -> list[dict]:
    """Return the dialogues of one PhotoChat JSON file, checking the fields the downloader needs."""
    name = name or str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DownloadError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise DownloadError(f"{name}: expected a JSON list of dialogues, got {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DownloadError(f"{name}: item {i} is a {type(item).__name__}, not a dialogue object")
        if "dialogue_id" not in item:
            raise DownloadError(f"{name}: item {i} has no 'dialogue_id'")
        did = item["dialogue_id"]
        if isinstance(did, bool) or not _SAFE_ID.fullmatch(str(did)):
            raise DownloadError(f"{name}: item {i}: dialogue_id {did!r} is not an integer or a plain name")
        for key in ("photo_url", "photo_description"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise DownloadError(f"{name}: dialogue {did}: '{key}' is missing or not a non-empty string")
        if urllib.parse.urlsplit(item["photo_url"]).scheme not in ("http", "https"):
            raise DownloadError(f"{name}: dialogue {did}: photo_url {item['photo_url']!r} is not http(s)")
    return data


def verify_image(path: str | os.PathLike) -> str:
    """Return the file extension of a fully decodable image; raises ValueError otherwise."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        with Image.open(path) as im:
            im.load()
    except Exception as exc:  # PIL raises many kinds: UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"not a decodable image ({type(exc).__name__}: {exc})") from None
    return PIL_EXT.get(fmt or "", (fmt or "img").lower())


def _remove_finals(stem: Path) -> None:
    """Delete every final file `<stem>.<ext>` (not the `.part`)."""
    for p in glob.glob(glob.escape(str(stem)) + ".*"):
        if not p.endswith(".part"):
            os.remove(p)


def _place_image(src: Path, stem: Path, ext: str, move: bool) -> Path:
    """Return the final path after moving (or copying) a verified image to `<stem>.<ext>`."""
    final = stem.with_name(f"{stem.name}.{ext}")
    _remove_finals(stem)
    if move:
        os.replace(src, final)
    else:
        tmp = stem.with_name(f".{stem.name}.copy")
        shutil.copyfile(src, tmp)
        os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def _fetch_json(rel: str, base_url: str, dest: Path, cfg: FetchConfig, man: Manifest, opener) -> list[dict]:
    """Return the dialogues of one JSON file, downloading it first unless it is already ok."""
    key, final = rel, dest / rel
    entry = man.get(key)
    if still_ok(dest, entry):
        return read_photochat_json(final, rel)
    url = urllib.parse.urljoin(base_url, rel)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = Path(f"{final}.part")
    res = fetch(url, str(part), cfg, keep_partial=False, opener=opener)  # JSON never keeps a `.part`
    entry = {"kind": "json", "split": rel.split("/")[0], "path": None, "url": url, "sha256": None,
             "bytes": None, "status": res.status, "error": res.error,
             "attempts": entry.get("attempts", 0) + res.attempts}
    if res.status == "ok":
        try:
            dialogues = read_photochat_json(part, f"{rel} (from {url})")
        except DownloadError as exc:
            part.unlink()
            man.put(key, {**entry, "status": "corrupt", "error": str(exc)})
            raise
        entry.update(path=rel, sha256=sha256_file(part), bytes=part.stat().st_size, dialogues=len(dialogues))
        os.replace(part, final)
        fsync_dir(final.parent)
        man.put(key, entry)
        return dialogues
    man.put(key, entry)
    if res.error_kind in ("dns", "refused", "unreachable"):
        host = urllib.parse.urlsplit(url).netloc
        raise OfflineError(f"cannot reach {host}: offline? ({res.error}; url {url})")
    raise DownloadError(f"could not download {rel} from {url}: {res.status} after {res.attempts} "
                        f"attempt(s): {res.error}")


def _plan_images(records: list[tuple[str, str, dict]]) -> dict[str, dict]:
    """Return manifest key -> {split, dialogue_id, url, description, stem}, one per distinct photo."""
    urls_of: dict[str, set[str]] = {}
    for _, _, d in records:
        urls_of.setdefault(str(d["dialogue_id"]), set()).add(d["photo_url"])
    plan: dict[str, dict] = {}
    for split, rel, d in records:
        did = str(d["dialogue_id"])
        stem = f"images/{split}/{did}" if len(urls_of[did]) > 1 else f"images/{did}"
        if stem in plan and plan[stem]["url"] != d["photo_url"]:
            raise DownloadError(f"{rel}: dialogue {did} appears twice in split {split} with different photos")
        p = plan.setdefault(stem, {"split": split, "splits": [], "dialogue_id": did, "url": d["photo_url"],
                                   "description": d["photo_description"], "stem": stem})
        if split not in p["splits"]:
            p["splits"].append(split)
    return plan


def _fetch_image_group(url: str, keys: list[str], plan: dict, dest: Path, cfg: FetchConfig,
                       man: Manifest, opener) -> tuple[int, int]:
    """Download one photo URL for every dialogue that shares it; returns (skipped, requests)."""
    entries = {k: man.get(k) for k in keys}
    good = [k for k in keys if entries[k].get("url") == url and still_ok(dest, entries[k])]
    if len(good) == len(keys):
        return len(keys), 0
    requests, src, ext, res_info = 0, None, None, {}
    if good:  # another dialogue already has this photo: copy it, no request
        src, ext = dest / entries[good[0]]["path"], entries[good[0]]["path"].rsplit(".", 1)[-1]
        res_info = {k: entries[good[0]].get(k) for k in ("content_type", "etag", "last_modified")}
        status, error, attempts = "ok", None, 0
    else:
        stem0 = dest / keys[0]
        stem0.parent.mkdir(parents=True, exist_ok=True)
        part = Path(f"{stem0}.part")
        old = entries[keys[0]]
        validator = strong_validator(old.get("etag"), old.get("last_modified")) if old.get("url") == url else None
        if old.get("url") not in (None, url) and part.exists():
            part.unlink()  # a `.part` of another URL is no prefix of this one
        res = fetch(url, str(part), cfg, validator=validator, opener=opener)
        requests, status, error, attempts = res.attempts, res.status, res.error, res.attempts
        res_info = {"content_type": res.content_type, "etag": res.etag, "last_modified": res.last_modified,
                    "resumable": part.exists(), "resumed_from": res.resumed_from or None}
        if status == "ok":
            try:
                ext = verify_image(part)
                src = part
            except ValueError as exc:
                part.unlink()
                status, error = "corrupt", str(exc)
    todo = [k for k in keys if k not in good]
    for i, k in enumerate(todo):
        p, stem = plan[k], dest / k
        entry = {"kind": "image", "split": p["split"], "splits": p["splits"], "dialogue_id": p["dialogue_id"],
                 "url": url, "attempts": entries[k].get("attempts", 0) + attempts, **res_info}
        if status == "ok":  # the `.part` moves to the last dialogue's name; the others get copies
            final = _place_image(src, stem, ext, move=(src.suffix == ".part" and i == len(todo) - 1))
            man.put(k, {**entry, "status": "ok", "error": None, "path": final.relative_to(dest).as_posix(),
                        "sha256": sha256_file(final), "bytes": final.stat().st_size, "resumable": False})
        elif still_ok(dest, entries[k], ("generated",)):  # keep the generated stand-in, note the new try
            man.put(k, {**entries[k], "source_status": status, "error": error, "attempts": entry["attempts"]})
        else:
            _remove_finals(stem)
            man.put(k, {**entry, "status": status, "error": error, "path": None, "sha256": None, "bytes": None})
    return len(good), requests


def fill_missing_images(dest: Path, man: Manifest, plan: dict, model: str, steps: int = 28,
                        seed: int = 0, progress: bool = True) -> int:
    """Generate every missing photo from its `photo_description` (paper §3.1.1, SD3); returns the count."""
    todo = [k for k in plan if man.get(k).get("status") in MISSING]
    if not todo:
        return 0
    import torch
    from diffusers import DiffusionPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    for k in progress_bar(todo, desc="generate missing photos", unit="img", disable=not progress):
        p, entry = plan[k], man.get(k)
        gen = torch.Generator("cpu").manual_seed(seed + int(hashlib.sha256(k.encode()).hexdigest()[:8], 16))
        image = pipe(prompt=p["description"], num_inference_steps=steps, generator=gen).images[0]
        stem = dest / k
        stem.parent.mkdir(parents=True, exist_ok=True)
        tmp = stem.with_name(f".{stem.name}.gen.png")
        image.save(tmp, format="PNG")
        final = _place_image(tmp, stem, "png", move=True)
        man.put(k, {**entry, "status": "generated", "source_status": entry["status"], "generator": model,
                    "generator_steps": steps, "prompt": p["description"], "format": "PNG",
                    "path": final.relative_to(dest).as_posix(), "sha256": sha256_file(final),
                    "bytes": final.stat().st_size, "resumable": False})
    return len(todo)


def _write_dead_urls(dest: Path, man: Manifest, plan: dict) -> tuple[Path, list[tuple[str, str, str, str]]]:
    """Write `<dest>/dead_urls.txt` (one photo that could not be downloaded a line); returns it and the rows."""
    rows = []
    for k, p in plan.items():
        e = man.get(k)
        if e.get("status") in MISSING or e.get("status") == "generated":
            st = e["status"] if e["status"] != "generated" else f"generated({e.get('source_status')})"
            rows.append((p["split"], p["dialogue_id"], st, p["url"]))
    text = "# split\tdialogue_id\tstatus\turl  (photos that could not be downloaded; see manifest.json)\n"
    text += "".join("\t".join(r) + "\n" for r in rows)
    path = dest / "dead_urls.txt"
    write_text(path, text)
    return path, rows


def download_photochat(dest: str | os.PathLike = "data/photochat", splits=("train", "dev", "test"),
                       base_url: str = BASE_URL, workers: int = 8, timeout: float = 20.0, retries: int = 4,
                       fill_missing: str | None = None, images: bool = True, progress: bool = True,
                       deadline: float = 300.0, backoff: float = 1.0, seed: int = 0,
                       fill_steps: int = 28) -> DownloadReport:
    """Download PhotoChat's JSON and photos into `dest`; returns what happened (raises DownloadError
    when the JSON cannot be fetched — dead photo URLs are reported, not raised)."""
    start, dest = time.monotonic(), Path(dest)
    if workers < 1 or timeout <= 0 or deadline <= 0 or retries < 0:
        raise ValueError(f"need workers >= 1, timeout > 0, deadline > 0, retries >= 0; got workers={workers}, "
                         f"timeout={timeout}, deadline={deadline}, retries={retries}")
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise DownloadError(f"--base-url must be http(s), got {base_url!r}")
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    cfg = FetchConfig(timeout=timeout, deadline=deadline, retries=retries, backoff=backoff, seed=seed)
    opener = build_opener()
    rels = [rel for s in splits for rel in split_files(s)]
    if not rels:
        raise ValueError("no splits to download; choose from train, dev, test")
    dest.mkdir(parents=True, exist_ok=True)
    man = Manifest(dest, {"dataset": "photochat", "base_url": base_url, "image_naming": IMAGE_NAMING})
    before = {k: man.get(k).get("attempts", 0) for k in rels}
    records: list[tuple[str, str, dict]] = []
    try:
        # the first file alone: an offline machine is told so at once
        records += [(rels[0].split("/")[0], rels[0], d) for d in _fetch_json(rels[0], base_url, dest, cfg, man, opener)]
        with cf.ThreadPoolExecutor(max_workers=workers) as pool:
            futs = {rel: pool.submit(_fetch_json, rel, base_url, dest, cfg, man, opener) for rel in rels[1:]}
            errors = []
            for rel, fut in futs.items():
                try:
                    records += [(rel.split("/")[0], rel, d) for d in fut.result()]
                except DownloadError as exc:
                    errors.append(exc)
            if errors:
                offline = all(isinstance(e, OfflineError) for e in errors)
                raise (OfflineError if offline else DownloadError)("; ".join(map(str, errors)))
    except KeyboardInterrupt:
        man.save(error="interrupted while fetching the JSON files")
        raise
    except DownloadError as exc:
        man.save(error=str(exc))
        for sub in SPLIT_FILES:  # leave nothing new but the manifest that says what went wrong
            if (dest / sub).is_dir() and not any((dest / sub).iterdir()):
                (dest / sub).rmdir()
        raise
    json_requests = sum(man.get(k).get("attempts", 0) - before[k] for k in rels)
    plan = _plan_images(records)
    groups: dict[str, list[str]] = {}
    for k, p in plan.items():
        groups.setdefault(p["url"], []).append(k)
    skipped = sum(1 for k in rels if man.get(k).get("attempts", 0) == before[k])
    requests = json_requests
    if images:
        bar = progress_bar(total=len(plan), desc="photochat photos", unit="img", disable=not progress)
        pool = cf.ThreadPoolExecutor(max_workers=workers)
        try:
            futs = [(pool.submit(_fetch_image_group, url, keys, plan, dest, cfg, man, opener), len(keys))
                    for url, keys in groups.items()]
            for fut, n in futs:
                s, r = fut.result()
                skipped, requests = skipped + s, requests + r
                bar.update(n)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            man.save(error=None)
        if fill_missing:
            fill_missing_images(dest, man, plan, fill_missing, steps=fill_steps, seed=seed, progress=progress)
    man.save(error=None)
    dead_path, rows = _write_dead_urls(dest, man, plan) if images else (None, [])
    counts = Counter(man.get(k).get("status") for k in plan) if images else Counter()
    return DownloadReport(dest=dest, json_counts=dict(Counter(man.get(k).get("status") for k in rels)),
                          image_counts={s: counts.get(s, 0) for s in STATUSES}, skipped=skipped,
                          requests=requests, missing=rows, manifest_path=man.path, dead_urls_path=dead_path,
                          seconds=time.monotonic() - start)


def download_dialogcc(dest: str | os.PathLike = "data/dialogcc", endpoint: str | None = None,
                      cache_dir: str | None = None) -> list[Path]:
    """Download DialogCC's train/valid/test JSON from the HF hub dataset; returns their paths.

    Kept as hf_hub_download + our JSON reader rather than datasets.load_dataset: the reader validates each
    dialogue and names the file, id and field of a bad one (data/dialogcc.py), and `datasets` (with pyarrow)
    would be a new dependency for three JSON files."""
    import urllib.error

    from huggingface_hub import hf_hub_download

    dest, paths = Path(dest), []
    base = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    try:  # one quick, proxy-aware request first: the hub's client retries a dead network for long
        build_opener().open(base + "/api/datasets/" + DIALOGCC_REPO, timeout=20).close()
    except urllib.error.HTTPError:
        pass  # the host answered: reachable
    except (urllib.error.URLError, OSError) as exc:
        raise OfflineError(f"cannot reach {urllib.parse.urlsplit(base).netloc} for dataset {DIALOGCC_REPO}: "
                           f"offline? ({getattr(exc, 'reason', exc)})") from None
    for name in DIALOGCC_FILES:
        try:
            paths.append(Path(hf_hub_download(DIALOGCC_REPO, name, repo_type="dataset", local_dir=dest,
                                              endpoint=endpoint, cache_dir=cache_dir, etag_timeout=10)))
        except Exception as exc:  # connection errors, LocalEntryNotFoundError, HfHubHTTPError, ...
            raise DownloadError(f"could not download {name} of dataset {DIALOGCC_REPO} from {base}: "
                                f"{type(exc).__name__}: {exc}") from None
    return paths


def _print_report(rep: DownloadReport) -> None:
    """Print the counts per status and where the dead URLs are listed."""
    print(f"PhotoChat in {rep.dest}: JSON {rep.json_counts}; {rep.requests} request(s), "
          f"{rep.skipped} file(s) already ok, {rep.seconds:.1f} s")
    if rep.dead_urls_path is not None:
        print("photos: " + ", ".join(f"{s} {n}" for s, n in rep.image_counts.items()))
        if rep.missing:
            print(f"{len(rep.missing)} photo(s) could not be downloaded (dead URLs are normal for PhotoChat); "
                  f"listed in {rep.dead_urls_path}; `--fill-missing --fill-model NAME` generates stand-ins")


def main_download(args: argparse.Namespace) -> int:
    """Run `photochat data download`; returns the exit status (missing options take the CLI defaults)."""
    opt = {"dataset": "photochat", "dest": None, "splits": ["train", "dev", "test"], "workers": 8,
           "timeout": 20.0, "deadline": 300.0, "retries": 4, "backoff": 1.0, "seed": 0, "base_url": BASE_URL,
           "fill_missing": False, "fill_model": None, "fill_steps": 28, "no_images": False, "no_progress": False}
    opt.update({k: getattr(args, k) for k in opt if getattr(args, k, None) is not None})
    dest = opt["dest"] or f"data/{opt['dataset']}"
    try:
        if opt["dataset"] == "dialogcc":
            print(f"DialogCC (CC BY-NC-SA 4.0) comes from the HF hub dataset {DIALOGCC_REPO}: "
                  f"huggingface_hub.hf_hub_download('{DIALOGCC_REPO}', 'train.json', repo_type='dataset') "
                  f"and the same for {', '.join(DIALOGCC_FILES[1:])}; fetching them into {dest}")
            for p in download_dialogcc(dest):
                print(f"  {p}")
            return 0
        if opt["dataset"] != "photochat":
            print(f"error: unknown dataset {opt['dataset']!r}; choose photochat or dialogcc", file=sys.stderr)
            return 2
        if opt["fill_missing"] and not opt["fill_model"]:
            print("error: --fill-missing needs --fill-model NAME_OR_PATH (a diffusers pipeline, e.g. "
                  "stabilityai/stable-diffusion-3-medium-diffusers as in the paper)", file=sys.stderr)
            return 2
        rep = download_photochat(dest, splits=opt["splits"], base_url=opt["base_url"], workers=opt["workers"],
                                 timeout=opt["timeout"], retries=opt["retries"], images=not opt["no_images"],
                                 fill_missing=opt["fill_model"] if opt["fill_missing"] else None,
                                 progress=not opt["no_progress"], deadline=opt["deadline"],
                                 backoff=opt["backoff"], seed=opt["seed"], fill_steps=opt["fill_steps"])
    except (DownloadError, ValueError) as exc:   # offline, a bad option or manifest: the README's status 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_report(rep)
    return 0


def register_download(data_subparsers) -> None:
    """Add the `download` sub-command to `photochat data`."""
    p = data_subparsers.add_parser(
        "download", help="download PhotoChat (JSON + photos) or DialogCC (JSON) into data/",
        description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=["photochat", "dialogcc"], help="which dataset to download")
    p.add_argument("--dest", default=None, help="target folder (default: data/<dataset>)")
    p.add_argument("--splits", nargs="+", default=["train", "dev", "test"], choices=sorted(SPLIT_FILES),
                   help="PhotoChat splits to fetch (default: all three)")
    p.add_argument("--workers", type=int, default=8, help="parallel downloads (threads)")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds to connect and for each socket read; a stalled server fails after this")
    p.add_argument("--deadline", type=float, default=300.0, help="seconds allowed for one attempt on one file")
    p.add_argument("--retries", type=int, default=4,
                   help="extra attempts after timeouts, resets, truncated bodies and 5xx/429 answers")
    p.add_argument("--backoff", type=float, default=1.0,
                   help="seconds before the first retry; doubles each retry, with seeded jitter")
    p.add_argument("--seed", type=int, default=0, help="seed of the retry jitter and of --fill-missing")
    p.add_argument("--base-url", default=BASE_URL, help="where the PhotoChat JSON files live")
    p.add_argument("--fill-missing", action="store_true",
                   help="generate each missing photo from its photo_description (as the paper did with SD3); "
                        "marked `generated` in the manifest")
    p.add_argument("--fill-model", default=None,
                   help="diffusers pipeline name or local folder for --fill-missing "
                        "(the paper: stabilityai/stable-diffusion-3-medium-diffusers)")
    p.add_argument("--fill-steps", type=int, default=28, help="inference steps per generated photo")
    p.add_argument("--no-images", action="store_true", help="fetch only the JSON files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=main_download)

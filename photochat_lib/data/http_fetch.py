"""One URL to one `.part` file over HTTP (timeouts, a deadline, Range resume, retries with backoff),
atomic writes and the download manifest.

The dataset downloader (`photochat_lib.data.download`) decides what the bytes mean; this module only
moves them, and says how a fetch ended in words the manifest keeps:

- ``ok``     — the whole body is in the `.part` file (its length matched Content-Length / Content-Range);
- ``dead``   — the URL will not work again: HTTP 404/410/451, the host name does not resolve, or the
  server answered with Flickr's "photo unavailable" placeholder;
- ``failed`` — every attempt ended in a timeout, a reset, a truncated body, a 5xx/429 or a refused
  connection.

Stdlib only (`urllib`), so environment proxies and redirects work as they do for any Python program.

Kept by hand for now rather than requests + urllib3 ``Retry`` or img2dataset: ``Retry`` covers the retry and
backoff part only, not Range resume of a truncated body, the per-file deadline, Flickr's placeholder or the
sha256 manifest, and img2dataset writes its own shard format, not PhotoChat's ``images/<id>.jpg`` layout;
the download fault tests (tests/test_download.py) pin this behaviour. A swap of the retry layer to urllib3 is
the candidate (issue 14).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from photochat_lib.utils.atomic import write_bytes

USER_AGENT = "photochat-downloader/0.1 (+https://github.com/google-research/google-research)"
CHUNK = 64 * 1024
DEAD_HTTP = {404, 410, 451}                 # the resource is gone: no retry, status `dead`
RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}  # worth another attempt
UNAVAILABLE_MARKERS = ("photo_unavailable",)  # Flickr redirects dead photos to this placeholder


@dataclass
class FetchConfig:
    timeout: float = 20.0         # seconds allowed to connect, and for each socket read (a stall ends here)
    deadline: float = 300.0       # seconds allowed for one attempt on one URL, however slowly bytes drip in
    retries: int = 4              # extra attempts after the first for retryable errors
    backoff: float = 1.0          # first retry waits backoff·(1+jitter) s, then doubles (exponential)
    backoff_max: float = 30.0     # cap on one wait
    jitter: float = 0.5           # each wait is multiplied by 1 + U(0, jitter)
    seed: int = 0                 # seeds the jitter (per URL), so a rerun waits the same
    resume: bool = True           # send `Range: bytes=N-` when a `.part` of N bytes exists


@dataclass
class FetchResult:
    status: str                   # "ok" | "dead" | "failed"
    attempts: int = 0             # requests made for this URL in this call
    error: str | None = None      # the last error, in words (None when ok)
    error_kind: str | None = None  # "http_404", "dns", "refused", "timeout", "reset", "truncated", ...
    content_type: str | None = None  # from the last response
    etag: str | None = None       # validator of the last response (for If-Range next time)
    last_modified: str | None = None  # same, when the server sends no ETag
    accept_ranges: bool = False   # the server said `Accept-Ranges: bytes` (or answered 206)
    resumed_from: list[int] = field(default_factory=list)  # offsets of every 206 resume that worked
    final_url: str | None = None  # after redirects


class _AttemptError(Exception):
    """One attempt failed; `kind` says how and `retry` whether another attempt may help."""

    def __init__(self, kind: str, message: str, retry: bool):
        super().__init__(message)
        self.kind, self.retry = kind, retry


def _classify_oserror(exc: BaseException) -> _AttemptError:
    """Return the attempt error for a socket-level failure."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return _AttemptError("dns", f"host name does not resolve ({reason})", retry=False)
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return _AttemptError("timeout", f"timed out ({reason or 'no bytes within the timeout'})", retry=True)
    if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == errno.ECONNREFUSED:
        return _AttemptError("refused", f"connection refused ({reason})", retry=False)
    if isinstance(reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return _AttemptError("reset", f"connection reset ({reason})", retry=True)
    if getattr(reason, "errno", None) in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return _AttemptError("unreachable", f"network unreachable ({reason})", retry=False)
    return _AttemptError("network", f"{type(reason).__name__}: {reason}", retry=True)


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """Return (start, total) from `bytes start-end/total`, or None when it does not parse."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        span, total = value[6:].split("/")
        start = int(span.split("-")[0])
        return start, (None if total.strip() == "*" else int(total))
    except ValueError:
        return None


def _attempt(opener: urllib.request.OpenerDirector, url: str, part: str, cfg: FetchConfig,
             validator: str | None, result: FetchResult) -> None:
    """Download `url` into `part` once (appending on a 206); raises _AttemptError on failure."""
    have = os.path.getsize(part) if (cfg.resume and os.path.exists(part)) else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:
            headers["If-Range"] = validator
    start = time.monotonic()
    try:
        resp = opener.open(urllib.request.Request(url, headers=headers), timeout=cfg.timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # our `.part` is no prefix of this resource any more: start over
            os.remove(part)
            raise _AttemptError("range", "HTTP 416 on resume; restarting the file", retry=True) from None
        if exc.code in DEAD_HTTP:
            raise _AttemptError(f"http_{exc.code}", f"HTTP {exc.code} {exc.reason}", retry=False) from None
        retry = exc.code in RETRY_HTTP or exc.code >= 500
        raise _AttemptError(f"http_{exc.code}", f"HTTP {exc.code} {exc.reason}", retry=retry) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _classify_oserror(exc) from None
    with resp:
        result.final_url = resp.geturl()
        result.content_type = resp.headers.get("Content-Type")
        result.etag = resp.headers.get("ETag")
        result.last_modified = resp.headers.get("Last-Modified")
        result.accept_ranges = resp.headers.get("Accept-Ranges", "").lower() == "bytes" or resp.status == 206
        if any(m in (result.final_url or "") for m in UNAVAILABLE_MARKERS):
            raise _AttemptError("unavailable", f"redirected to a placeholder ({result.final_url})", retry=False)
        crange = _parse_content_range(resp.headers.get("Content-Range"))
        if resp.status == 206:
            if crange is None or crange[0] != have:  # a range we did not ask for: start over
                if os.path.exists(part):
                    os.remove(part)
                raise _AttemptError("range", f"unusable 206 ({resp.headers.get('Content-Range')}); "
                                    "restarting the file", retry=True)
            mode, offset, total = "ab", have, crange[1]
            result.resumed_from.append(have)
        else:  # a 200: the body is the whole file (the server ignored or refused our Range)
            mode, offset = "wb", 0
            length = resp.headers.get("Content-Length")
            total = int(length) if (length or "").isdigit() and resp.status == 200 else None
        got = offset
        try:
            with open(part, mode) as fh:
                while True:
                    if time.monotonic() - start > cfg.deadline:
                        raise _AttemptError("deadline", f"deadline of {cfg.deadline:g} s passed after "
                                            f"{got} bytes", retry=True)
                    chunk = resp.read1(CHUNK)  # returns what one recv got, so the deadline is checked often
                    if not chunk:
                        break
                    fh.write(chunk)
                    got += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except _AttemptError:
            raise
        except Exception as exc:  # http.client.IncompleteRead, timeouts and resets mid-body
            if "IncompleteRead" in type(exc).__name__:
                raise _AttemptError("truncated", f"body cut short ({exc!r})", retry=True) from None
            raise _classify_oserror(exc) from None
        if total is not None and got != total:
            raise _AttemptError("truncated", f"body cut short: got {got} of {total} bytes", retry=True)


def strong_validator(etag: str | None, last_modified: str | None) -> str | None:
    """Return what may go in If-Range: a strong ETag, else Last-Modified (weak ETags may not)."""
    if etag and not etag.startswith("W/"):
        return etag
    return last_modified


def backoff_delays(url: str, cfg: FetchConfig) -> list[float]:
    """Return the waits before retry 1..cfg.retries: exponential, capped, with seeded jitter."""
    rng = random.Random(f"{cfg.seed}:{url}")
    return [min(cfg.backoff_max, cfg.backoff * 2 ** i) * (1.0 + cfg.jitter * rng.random())
            for i in range(cfg.retries)]


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (never to ftp: or file:)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"refusing redirect to {newurl}", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def build_opener() -> urllib.request.OpenerDirector:
    """Return a urllib opener that honours proxies and follows http(s)-only redirects."""
    return urllib.request.build_opener(_HttpOnlyRedirects)


def fetch(url: str, part: str, cfg: FetchConfig, validator: str | None = None,
          keep_partial: bool = True, opener: urllib.request.OpenerDirector | None = None) -> FetchResult:
    """Return how fetching `url` into `part` ended, after up to 1 + cfg.retries attempts.

    On ``ok`` the body is in `part`. Otherwise `part` is deleted unless `keep_partial` is set, the
    server accepts ranges and some bytes arrived — then it stays for a later `Range` resume.
    """
    opener = opener or build_opener()
    result = FetchResult(status="failed")
    delays = backoff_delays(url, cfg)
    for attempt in range(cfg.retries + 1):
        result.attempts = attempt + 1
        try:
            _attempt(opener, url, part, cfg, validator, result)
        except _AttemptError as err:
            result.error, result.error_kind = str(err), err.kind
            # a fresh validator only helps if the next attempt resumes what this one wrote
            validator = strong_validator(result.etag, result.last_modified) if result.accept_ranges else None
            if not result.accept_ranges and os.path.exists(part):
                os.remove(part)  # without ranges a retry restarts the file anyway
            if err.kind in ("dns", "http_404", "http_410", "http_451", "unavailable"):
                result.status = "dead"
                break
            if not err.retry or attempt == cfg.retries:
                break
            time.sleep(delays[attempt])
        else:
            result.status, result.error, result.error_kind = "ok", None, None
            return result
    if os.path.exists(part) and not (keep_partial and result.accept_ranges and result.status == "failed"
                                     and os.path.getsize(part) > 0):
        os.remove(part)
    return result


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Manifest:
    """`<dest>/manifest.json`: one entry per file, saved atomically and every few seconds."""

    def __init__(self, dest: Path, top: dict, every_s: float = 2.0):
        self.path, self.every_s, self.lock = dest / "manifest.json", every_s, threading.RLock()
        self.data = {**top, "files": {}, "images": {}}
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text(encoding="utf-8"))
                self.data["files"] = dict(old.get("files", {}))
            except (json.JSONDecodeError, OSError, AttributeError):
                pass  # an unreadable manifest only costs re-hashing: every file is checked again
        self._saved = time.monotonic()

    def get(self, key: str) -> dict:
        """Return the entry for `key` (a copy; empty when unknown)."""
        with self.lock:
            return dict(self.data["files"].get(key, {}))

    def put(self, key: str, entry: dict) -> None:
        """Store `entry` under `key` and save if the last save is a while ago."""
        with self.lock:
            self.data["files"][key] = {**entry, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
            if time.monotonic() - self._saved > self.every_s:
                self.save()

    def save(self, **top) -> None:
        """Write the manifest now (atomically), with `top` merged into its top level."""
        with self.lock:
            self.data.update(top)
            images: dict[str, dict[str, str]] = {}
            for e in self.data["files"].values():
                if e.get("kind") == "image" and e.get("status") in ("ok", "generated") and e.get("path"):
                    for split in e.get("splits") or [e["split"]]:
                        images.setdefault(split, {})[str(e["dialogue_id"])] = e["path"]
            self.data["images"] = images
            self.data["summary"] = dict(Counter(e.get("status") for e in self.data["files"].values()))
            write_bytes(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode())
            self._saved = time.monotonic()


def still_ok(dest: Path, entry: dict, statuses=("ok",)) -> bool:
    """Return True if `entry` has a status in `statuses` and its file is on disk with the same sha256."""
    if entry.get("status") not in statuses or not entry.get("path"):
        return False
    path = dest / entry["path"]
    return path.is_file() and sha256_file(path) == entry.get("sha256")

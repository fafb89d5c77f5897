"""The PhotoChat downloader against a misbehaving HTTP server on 127.0.0.1 (no internet)."""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import socket
from pathlib import Path

import pytest
from PIL import Image

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-less runs
    from tests.fault_server import FaultServer, closed_port_url
except ImportError:  # pragma: no cover
    from fault_server import FaultServer, closed_port_url
from photochat_lib.data import download as dl
from photochat_lib.data.http_fetch import FetchConfig, backoff_delays

FAST = dict(workers=4, timeout=0.5, deadline=0.8, retries=1, backoff=0.01, progress=False)


def _png(size=(8, 8), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 120, 240)).save(buf, format="JPEG")
    return buf.getvalue()


def _noise_png(side=96) -> bytes:
    rng = random.Random(0)
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), bytes(rng.randrange(256) for _ in range(side * side * 3))).save(
        buf, format="PNG")
    return buf.getvalue()


def _dialogue(did, url, desc="Objects in the photo: Drink, Head") -> dict:
    return {"dialogue": [{"message": "look", "share_photo": False, "user_id": 0},
                         {"message": "", "share_photo": True, "user_id": 0}],
            "dialogue_id": did, "photo_description": desc, "photo_url": url}


def _publish(srv: FaultServer, files: dict[str, list]) -> str:
    """Serve PhotoChat-format JSON files under /pc/; returns the base URL."""
    for rel, dialogues in files.items():
        srv.add(f"/pc/{rel}", json.dumps(dialogues).encode(), content_type="application/json")
    return srv.url + "/pc/"


def _manifest(dest: Path) -> dict:
    return json.loads((dest / "manifest.json").read_text())


def _status(dest: Path, did) -> str:
    return _manifest(dest)["files"][f"images/{did}"]["status"]


def _assert_nothing_bad_on_disk(dest: Path, allow_parts=()) -> None:
    """Every final image decodes, every ok entry's sha256 matches, no temp/partial files remain."""
    for p in dest.rglob("*"):
        if p.is_dir():
            continue
        rel = p.relative_to(dest).as_posix()
        assert not p.name.endswith(".tmp") and not p.name.startswith("."), rel
        if p.suffix == ".part":  # kept only where the server takes Range requests, to resume later
            assert rel in allow_parts, f"unexpected partial file {rel}"
            e = _manifest(dest)["files"][rel[: -len(".part")]]
            assert e["status"] == "failed" and e["resumable"], rel
        elif rel.startswith("images/"):
            with Image.open(p) as im:
                im.load()
    for key, e in _manifest(dest)["files"].items():
        if e["status"] in ("ok", "generated"):
            assert hashlib.sha256((dest / e["path"]).read_bytes()).hexdigest() == e["sha256"], key
        else:
            finals = [p for p in (dest / "images").glob(f"{key.split('/')[-1]}.*") if p.suffix != ".part"]
            assert e["path"] is None and not finals, key


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture
def faulty(monkeypatch):
    """A server with one photo per misbehaviour; yields (server, base_url, urls by dialogue id)."""
    real_getaddrinfo = socket.getaddrinfo

    def fake_getaddrinfo(host, *a, **k):  # a host that does not resolve, without asking any resolver
        if host == "dead-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with FaultServer(lifetime_s=40) as srv:
        png, big = _png(), _noise_png()
        u = {0: srv.add("/img/0.png", png, content_type="image/png"),
             1: srv.add("/img/1", _jpeg(), content_type="image/jpeg"),
             2: srv.add("/img/gone404.jpg", behaviour="404"),
             3: srv.add("/img/gone410.jpg", behaviour="410"),
             4: srv.add("/img/stall.jpg", png, behaviour="stall", stall_s=3.0),
             5: srv.add("/img/trunc.jpg", png, behaviour="truncate", ranges=False),
             6: srv.add("/img/corrupt.jpg", b"<html>not an image</html>" * 4, content_type="image/jpeg"),
             7: srv.add("/img/reset.jpg", png, behaviour="reset", ranges=False),
             8: srv.add("/img/flaky.png", png, behaviour="flaky", fail_first=2),
             9: "http://dead-host.invalid/photo.jpg",
             10: srv.add("/img/moved.jpg", behaviour="redirect", location=srv.url + "/photo_unavailable.png"),
             12: srv.add("/img/big.png", big, behaviour="half"),
             13: srv.add("/img/drip.png", png, behaviour="drip", drip_s=0.05)}
        srv.add("/photo_unavailable.png", _png(color=(0, 0, 0)), content_type="image/png")
        u[11] = u[0]  # two dialogues share one photo: fetched once
        base = _publish(srv, {"test/test_00.json": [_dialogue(i, u[i]) for i in range(12)],
                              "test/test_01.json": [_dialogue(12, u[12]), _dialogue(13, u[13])]})
        yield srv, base, u, big


def test_first_run_sorts_every_url_and_leaves_nothing_half_written(faulty, tmp_path):
    srv, base, u, big = faulty
    rep = dl.download_photochat(tmp_path, splits=["test"], base_url=base, **FAST)
    want = {0: "ok", 1: "ok", 2: "dead", 3: "dead", 4: "failed", 5: "failed", 6: "corrupt", 7: "failed",
            8: "failed", 9: "dead", 10: "dead", 11: "ok", 12: "ok", 13: "failed"}
    assert {i: _status(tmp_path, i) for i in want} == want
    assert rep.image_counts == {"ok": 4, "dead": 4, "failed": 5, "corrupt": 1, "generated": 0}
    assert rep.json_counts == {"ok": 2}
    files = _manifest(tmp_path)["files"]
    assert "timed out" in files["images/4"]["error"] and "deadline" in files["images/13"]["error"]
    assert "cut short" in files["images/5"]["error"] and "HTTP 503" in files["images/8"]["error"]
    assert "does not resolve" in files["images/9"]["error"] and "placeholder" in files["images/10"]["error"]
    assert files["images/2"]["attempts"] == 1 and files["images/4"]["attempts"] == 2  # dead: no retry
    assert files["images/0"]["path"] == "images/0.png" and files["images/1"]["path"] == "images/1.jpg"
    assert _manifest(tmp_path)["images"]["test"]["11"] == "images/11.png"
    assert srv.counts["/img/0.png"] == 1  # one request for the photo two dialogues share
    # the big photo was cut at half on the first request and resumed with a Range on the retry
    assert ("/img/big.png", f"bytes={len(big) // 2}-") in srv.range_headers
    assert (tmp_path / "images/12.png").read_bytes() == big
    _assert_nothing_bad_on_disk(tmp_path, allow_parts={"images/13.part"})  # the drip took ranges
    lines = (tmp_path / "dead_urls.txt").read_text().splitlines()
    assert lines[0].startswith("#") and len(lines) == 1 + 10
    assert f"test\t2\tdead\t{u[2]}" in lines and f"test\t9\tdead\t{u[9]}" in lines


def test_second_run_skips_ok_files_and_finishes_the_flaky_one(faulty, tmp_path):
    srv, base, u, _ = faulty
    dl.download_photochat(tmp_path, splits=["test"], base_url=base, **FAST)
    before = dict(srv.counts)
    rep = dl.download_photochat(tmp_path, splits=["test"], base_url=base, **FAST)
    assert _status(tmp_path, 8) == "ok"  # 503, 503 in run one; works on the third request
    assert rep.skipped == 2 + 4  # two JSON files and photos 0, 1, 11, 12: no request at all
    for path in ("/pc/test/test_00.json", "/pc/test/test_01.json", "/img/0.png", "/img/1", "/img/big.png"):
        assert srv.counts[path] == before[path], path
    assert srv.counts["/img/gone404.jpg"] == before["/img/gone404.jpg"] + 1  # the others are retried
    assert _manifest(tmp_path)["files"]["images/2"]["attempts"] == 2
    _assert_nothing_bad_on_disk(tmp_path, allow_parts={"images/13.part"})
    # a final file changed on disk no longer matches its sha256: the next run fetches it again
    (tmp_path / "images/1.jpg").write_bytes(b"tampered")
    dl.download_photochat(tmp_path, splits=["test"], base_url=base, **FAST)
    assert srv.counts["/img/1"] == before["/img/1"] + 1 and _status(tmp_path, 1) == "ok"
    _assert_nothing_bad_on_disk(tmp_path, allow_parts={"images/13.part"})


def test_interrupted_download_resumes_with_a_range_on_the_next_run(tmp_path):
    big = _noise_png()
    with FaultServer(lifetime_s=20) as srv:
        base = _publish(srv, {"test/test_00.json": [_dialogue(5, srv.add("/big.png", big, behaviour="half"))],
                              "test/test_01.json": []})
        run = dict(FAST, retries=0)
        dl.download_photochat(tmp_path, splits=["test"], base_url=base, **run)
        entry = _manifest(tmp_path)["files"]["images/5"]
        assert entry["status"] == "failed" and entry["resumable"] and "cut short" in entry["error"]
        assert (tmp_path / "images/5.part").stat().st_size == len(big) // 2
        _assert_nothing_bad_on_disk(tmp_path, allow_parts={"images/5.part"})  # kept only to resume
        dl.download_photochat(tmp_path, splits=["test"], base_url=base, **run)
        assert srv.range_headers[-1] == ("/big.png", f"bytes={len(big) // 2}-")
        entry = _manifest(tmp_path)["files"]["images/5"]
        assert entry["status"] == "ok" and entry["sha256"] == hashlib.sha256(big).hexdigest()
        assert entry["resumed_from"] == [len(big) // 2] and not (tmp_path / "images/5.part").exists()
        _assert_nothing_bad_on_disk(tmp_path)


def test_offline_base_url_fails_clearly_and_writes_nothing_but_the_manifest(tmp_path, capsys):
    dest, base = tmp_path / "pc", closed_port_url()
    with pytest.raises(dl.OfflineError, match=r"cannot reach 127\.0\.0\.1:\d+: offline\?"):
        dl.download_photochat(dest, splits=["dev", "test"], base_url=base, **FAST)
    assert [p.name for p in dest.rglob("*")] == ["manifest.json"]
    assert "offline?" in _manifest(dest)["error"]
    parser = argparse.ArgumentParser()
    dl.register_download(parser.add_subparsers())
    args = parser.parse_args(["download", "photochat", "--dest", str(dest), "--base-url", base, "--retries", "0",
                              "--no-progress"])
    assert args.func(args) == 2                  # the README: a fixable error exits 2
    assert "offline?" in capsys.readouterr().err
    # the lead's entry point takes a bare Namespace too; missing options take the CLI defaults
    assert dl.main_download(argparse.Namespace(dest=str(dest), base_url=base, retries=0, no_progress=True)) == 2
    assert "offline?" in capsys.readouterr().err and [p.name for p in dest.rglob("*")] == ["manifest.json"]


def test_json_that_fails_midway_or_is_malformed_is_an_error_naming_file_and_dialogue(tmp_path):
    with FaultServer(lifetime_s=20) as srv:
        body = json.dumps([_dialogue(1, srv.url + "/x.png")]).encode()
        srv.add("/cut/test/test_00.json", body, behaviour="half")
        with pytest.raises(dl.DownloadError, match="test/test_00.json.*cut short"):
            dl.download_photochat(tmp_path / "a", splits=["test"], base_url=srv.url + "/cut/", **dict(FAST, retries=0))
        assert [p.name for p in (tmp_path / "a").rglob("*")] == ["manifest.json"]  # no .part for JSON
        bad = [_dialogue(6, srv.url + "/x.png"), {"dialogue_id": 7, "photo_description": "a cat"}]
        base = _publish(srv, {"test/test_00.json": bad, "test/test_01.json": []})
        with pytest.raises(dl.DownloadError, match=r"test/test_00\.json.*dialogue 7: 'photo_url'"):
            dl.download_photochat(tmp_path / "b", splits=["test"], base_url=base, **FAST)
        srv.add("/pc/test/test_00.json", b"[{not json")
        with pytest.raises(dl.DownloadError, match=r"test/test_00\.json.*not valid JSON"):
            dl.download_photochat(tmp_path / "c", splits=["test"], base_url=base, **FAST)
        assert not (tmp_path / "c/test/test_00.json").exists()
        assert _manifest(tmp_path / "c")["files"]["test/test_00.json"]["status"] == "corrupt"


def test_cli_reports_dead_urls_and_exits_zero(tmp_path, capsys):
    with FaultServer(lifetime_s=20) as srv:
        base = _publish(srv, {"dev/dev_00.json": [_dialogue(1, srv.add("/a.png", _png()))],
                              "dev/dev_01.json": [_dialogue(2, srv.url + "/gone.jpg")]})
        parser = argparse.ArgumentParser()
        dl.register_download(parser.add_subparsers())
        args = parser.parse_args(["download", "photochat", "--dest", str(tmp_path), "--splits", "dev",
                                  "--base-url", base, "--timeout", "0.5", "--retries", "0", "--no-progress"])
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "ok 1, dead 1" in out and "dead_urls.txt" in out
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")) == [
        "dev/dev_00.json", "dev/dev_01.json", "manifest.json"]


def test_a_dialogue_id_reused_across_splits_for_another_photo_gets_per_split_names(tmp_path):
    with FaultServer(lifetime_s=20) as srv:
        a, b = srv.add("/a.png", _png()), srv.add("/b.jpg", _jpeg())
        base = _publish(srv, {"dev/dev_00.json": [_dialogue(3, a), _dialogue(4, a)], "dev/dev_01.json": [],
                              "test/test_00.json": [_dialogue(3, b)], "test/test_01.json": [_dialogue(4, a)]})
        dl.download_photochat(tmp_path, splits=["dev", "test"], base_url=base, **FAST)
        assert _manifest(tmp_path)["images"] == {"dev": {"3": "images/dev/3.png", "4": "images/4.png"},
                                                 "test": {"3": "images/test/3.jpg", "4": "images/4.png"}}
        assert srv.counts["/a.png"] == 1  # id 4 is the same photo in both splits: one file, one request
        _assert_nothing_bad_on_disk(tmp_path)
        base = _publish(srv, {"dev/dev_00.json": [_dialogue(3, a), _dialogue(3, b)], "dev/dev_01.json": []})
        with pytest.raises(dl.DownloadError, match=r"dev/dev_00\.json: dialogue 3 appears twice"):
            dl.download_photochat(tmp_path / "x", splits=["dev"], base_url=base, **FAST)


def test_backoff_is_exponential_capped_and_seeded():
    cfg = FetchConfig(retries=6, backoff=1.0, backoff_max=10.0, jitter=0.5, seed=3)
    d = backoff_delays("http://x/a.jpg", cfg)
    assert d == backoff_delays("http://x/a.jpg", cfg) and d != backoff_delays("http://x/b.jpg", cfg)
    assert all(b * 2 ** i <= x <= b * 2 ** i * 1.5 for i, (x, b) in enumerate(zip(d[:4], [1.0] * 4)))
    assert all(10.0 <= x <= 15.0 for x in d[4:])


def test_dialogcc_offline_fails_clearly(tmp_path):
    with pytest.raises(dl.OfflineError, match=r"cannot reach 127\.0\.0\.1:\d+ .*passing2961/dialogcc: offline\?"):
        dl.download_dialogcc(tmp_path / "dialogcc", endpoint=closed_port_url().rstrip("/"),
                             cache_dir=str(tmp_path / "cache"))


def test_dialogcc_downloads_the_three_files_from_a_hub_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    with FaultServer(lifetime_s=20) as srv:
        bodies = {}
        for name in dl.DIALOGCC_FILES:
            bodies[name] = json.dumps([{"dialogue_id": name, "dialogue": []}]).encode()
            srv.add(f"/datasets/passing2961/dialogcc/resolve/main/{name}", bodies[name],
                    content_type="application/json", headers={"X-Repo-Commit": "a" * 40})
        paths = dl.download_dialogcc(tmp_path / "dialogcc", endpoint=srv.url, cache_dir=str(tmp_path / "cache"))
    assert [p.name for p in paths] == list(dl.DIALOGCC_FILES)
    assert all(p.read_bytes() == bodies[p.name] for p in paths)
    assert all(p.parent == tmp_path / "dialogcc" for p in paths)


def _tiny_sd_pipeline(root: Path) -> str:
    """Save a tiny random StableDiffusionPipeline (16×16 images) to `root`; returns its folder."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = root / "tokenizer_src"
    tok_dir.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz,:":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\ni n</w>\n")
    vocab["in</w>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=4, sample_size=16)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16,
                                        intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                        vocab_size=len(vocab), max_position_embeddings=77))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, unet=unet, scheduler=DDIMScheduler(clip_sample=False),
                                   tokenizer=CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "tiny-sd")
    return str(root / "tiny-sd")


def test_fill_missing_generates_a_png_from_the_description_and_marks_it(tmp_path):
    model = _tiny_sd_pipeline(tmp_path / "models")
    dest = tmp_path / "pc"
    with FaultServer(lifetime_s=30) as srv:
        base = _publish(srv, {"test/test_00.json": [_dialogue(1, srv.add("/a.png", _png())),
                                                    _dialogue(2, srv.url + "/gone.jpg", "Objects in the photo: Cat")],
                              "test/test_01.json": []})
        rep = dl.download_photochat(dest, splits=["test"], base_url=base, fill_missing=model, fill_steps=2, **FAST)
        assert rep.image_counts["generated"] == 1 and rep.image_counts["ok"] == 1
        e = _manifest(dest)["files"]["images/2"]
        assert (e["status"], e["source_status"], e["generator"], e["path"]) == ("generated", "dead", model,
                                                                                  "images/2.png")
        with Image.open(dest / "images/2.png") as im:
            assert im.format == "PNG" and im.size == (16, 16)
            im.load()
        assert "test\t2\tgenerated(dead)\t" in (dest / "dead_urls.txt").read_text()
        # a rerun tries the URL again but keeps the generated stand-in while it stays dead
        mtime = os.path.getmtime(dest / "images/2.png")
        dl.download_photochat(dest, splits=["test"], base_url=base, **FAST)
        assert srv.counts["/gone.jpg"] == 2 and _status(dest, 2) == "generated"
        assert os.path.getmtime(dest / "images/2.png") == mtime
        _assert_nothing_bad_on_disk(dest)

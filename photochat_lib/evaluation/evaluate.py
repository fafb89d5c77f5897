"""Evaluation (paper §3.1.3): generate a reply for every (U, R) sample and score text and photos.

* text — BLEU-1, BLEU-2, ROUGE-L (×100, Table 2) between the reply's *text* and the reference's text
  (photos left out on both sides; tokenization and smoothing: `photochat_lib.evaluation.metrics`);
* photos — IS and FID (torch-fidelity; the toy world uses its registered toy feature extractor, real
  presets InceptionV3) of the photos the model drew where the reference shares one, against the
  reference photos; on the toy world also attribute accuracy: does the drawn photo hold the colours
  and shapes of the *reference photo* (judged by the shipped toy classifier against the photo's facts in
  ``labels.json``, not against a caption: a biased world's training captions may misname a colour,
  `data.caption_bias`; its dev and test captions are true, so there the two agree; a sample without
  labels falls back to its reference caption);
* beyond the paper — share timing: precision / recall / F1 of "the reply shares a photo" against
  the reference, and caption exact match;
* the input end — grounded remarks (`grounding`): of the replies to a photo another speaker shared, the
  share whose every photo-only fact (background, an object's position or size) is true of the photo.
  Needs the toy world's labels (``labels.json``); on real data it is left out and metrics.json says so.
  Every remark sample of the split is scored, not only those of the seeded subset.

`photochat evaluate` writes ``predictions.jsonl`` (id, context, reference, prediction, image paths),
``remarks.jsonl`` (each remark, its facts and whether it is grounded) and ``metrics.json``; given several
models (one per seed) it adds their mean ± std.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from photochat_lib.evaluation.grounding import grounded_remarks, is_remark, read_labels
from photochat_lib.utils.atomic import replace_dir, safe_name, write_json, write_jsonl
from photochat_lib.utils.folder_lock import hold_folder
from photochat_lib.utils.cliutil import at_least, non_negative, progress_bar
from photochat_lib.model.sampling import GUIDANCE_SCALE, SAMPLER_STEPS


def select_samples(samples, max_samples: int | None, seed: int = 0):
    """Return up to max_samples samples: half photo-sharing, half not (seeded), in original order."""
    if not max_samples or len(samples) <= max_samples:
        return samples
    g = torch.Generator().manual_seed(seed)
    photo = [i for i, s in enumerate(samples) if s.shares_photo]
    text = [i for i, s in enumerate(samples) if not s.shares_photo]
    n_photo = min(len(photo), max_samples // 2)
    pick = lambda idx, n: [idx[i] for i in torch.randperm(len(idx), generator=g)[:n].tolist()]
    chosen = pick(photo, n_photo) + pick(text, max_samples - n_photo)
    return [samples[i] for i in sorted(chosen)]


def _context_text(sample) -> list[str]:
    return [f"{t.speaker}: " + (t.text if t.text is not None else f"[photo: {t.photo.caption}]") for t in sample.context]


DECODING = ("greedy", "sample")  # how the reply's tokens are chosen from p (eq. 1)


@torch.no_grad()
def predict(model, samples, batch_size: int = 32, max_new_tokens: int = 48, num_inference_steps: int = SAMPLER_STEPS,
            guidance_scale: float = GUIDANCE_SCALE, seed: int = 0, image_dir: str | Path | None = None,
            progress: bool = False, decoding: str = "greedy", draw_images: bool = True):
    """Return one prediction record per sample (and the drawn PIL images, keyed by sample id).

    decoding: "greedy" (argmax of p at every step) or "sample" (a token drawn from p, temperature 1, as
    §2.2 describes inference: "we sample the token from vocabulary probability distribution p").
    """
    if decoding not in DECODING:
        raise ValueError(f"decoding must be one of {DECODING}, got {decoding!r}")
    from photochat_lib.model.generation import generate_batch
    records, images = [], {}
    for k in progress_bar(range(0, len(samples), batch_size), disable=not progress, desc="generate"):
        chunk = samples[k:k + batch_size]
        replies = generate_batch(model, [s.context for s in chunk], [s.speaker for s in chunk],
                                 max_new_tokens=max_new_tokens, seed=seed + k, do_sample=decoding == "sample",
                                 draw_images=draw_images, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        for s, r in zip(chunk, replies):
            ref_photos = s.target_photos()
            rec = {"id": s.id, "context": _context_text(s), "reference": s.response_text(),
                   "prediction": r.raw, "reference_shares": bool(ref_photos), "prediction_shares": r.shared_photo,
                   "reference_captions": [p.caption for p in ref_photos], "prediction_captions": r.captions,
                   "reference_images": [p.path for p in ref_photos], "prediction_images": [], "notes": r.notes}
            for j, img in enumerate(r.images):
                images.setdefault(s.id, []).append(img)
                if image_dir is not None:
                    path = Path(image_dir) / image_name(s.id, j)       # ids come from the data
                    img.save(path)
                    rec["prediction_images"].append(str(path))
            records.append(rec)
    return records, images


def image_name(sample_id: str, j: int) -> str:
    """Return the file name of a sample's j-th drawn photo: the id made safe, plus 8 hex digits of its hash, so
    ids that `safe_name` maps alike ('x y', 'x_y') still get their own files (the record keeps the path)."""
    import hashlib
    return f"{safe_name(sample_id)}_{hashlib.sha1(str(sample_id).encode()).hexdigest()[:8]}_{j}.png"


def score(records, images, preset: str = "toy", inception_weights: str | None = None,
          labels: dict | None = None) -> dict:
    """Return the metric dict for prediction records (and drawn images keyed by sample id).

    labels: the toy world's {dialogue_id: label} (`grounding.read_labels`): attribute accuracy is scored
    against the photo's objects there, against the reference caption only where a sample has none.
    ``caption_exact`` compares with the reference caption (true on dev and test, also in a biased world).
    """
    from photochat_lib.data.images import load_image
    from photochat_lib.evaluation.metrics import caption_bleu, share_timing, text_metrics
    preds, refs = [r["prediction"] for r in records], [r["reference"] for r in records]
    m = text_metrics(preds, refs)                       # BLEU-1, BLEU-2, Rouge-L of the text (photos stripped)
    m["n_text"] = m.pop("n")
    m.update({f"caption {k}": v for k, v in caption_bleu(preds, refs).items()})
    m.update({f"share {k}": v for k, v in share_timing([r["prediction_shares"] for r in records],
                                                       [r["reference_shares"] for r in records]).items()})
    both = [r for r in records if r["reference_shares"] and r["prediction_shares"]]
    with_ref = [r for r in records if r["reference_shares"]]
    m["caption_exact"] = 100.0 * sum(r["prediction_captions"][:1] == r["reference_captions"][:1] for r in both) / max(1, len(both))
    shared = [r for r in records if r["prediction_shares"]]
    m["unclosed"] = 100.0 * sum(any(n.startswith("unbalanced") for n in r["notes"]) for r in shared) / max(1, len(shared))
    drawn = [(r, images[r["id"]][0]) for r in both if images.get(r["id"])]
    m["image_coverage"] = 100.0 * len(drawn) / max(1, len(with_ref))
    m["n_samples"], m["n_reference_photos"], m["n_drawn"] = len(records), len(with_ref), len(drawn)
    if len(drawn) >= 2 and len(with_ref) >= 2:
        from photochat_lib.evaluation.fidelity import image_metrics
        reals = [load_image(p) for r in with_ref for p in r["reference_images"][:1] if p]
        extractor = "toy" if preset == "toy" else "inception-v3-compat"
        m.update(image_metrics([img for _, img in drawn], reals, extractor=extractor, weights_path=inception_weights))
        if preset == "toy":
            from photochat_lib.toy.classifier import attribute_accuracy
            m["attr_acc"] = 100.0 * attribute_accuracy([img for _, img in drawn],
                                                       [photo_truth(r, labels) for r, _ in drawn])
    return m


def photo_truth(record: dict, labels: dict | None):
    """Return what a record's reference photo holds: its labels.json entry (the photo's facts), else its caption."""
    label = (labels or {}).get(record["id"].rsplit(":", 1)[0])           # sample id = dialogue:run
    return label if label is not None else record["reference_captions"][0]


def oracle_metrics(generator, data: str | Path, split: str = "test", max_samples: int | None = None, seed: int = 0,
                   num_inference_steps: int = SAMPLER_STEPS, guidance_scale: float = GUIDANCE_SCALE) -> dict:
    """Return the toy table's anchor rows on the photo-sharing samples of a split (same subset as evaluate).

    * ``reference`` — the reference photos scored against themselves: FID's floor (0) and IS's ceiling;
      attribute accuracy is the judge's own accuracy on real photos;
    * ``sd_reference_captions`` — `generator` drawing the *reference* captions: the image generator's
      ceiling, what any model's photos could reach if its LLM wrote every caption right;
    * ``random_captions`` — the same generator drawing random toy captions (1–3 random objects): the floor.

    Attribute accuracy is judged against the photo's facts (``labels.json``), as in `score`.
    """
    import random

    from photochat_lib.data.images import load_image
    from photochat_lib.data.photochat import read_photochat
    from photochat_lib.data.samples import make_samples
    from photochat_lib.data.toy_world import CAPTION_PREFIX, COLOURS, SHAPES
    from photochat_lib.evaluation.fidelity import image_metrics
    from photochat_lib.model.generation import draw_captions
    from photochat_lib.toy.classifier import attribute_accuracy
    samples = select_samples(make_samples(read_photochat(Path(data) / split)), max_samples, seed)
    pairs = [(s, p) for s in samples for p in s.target_photos()[:1]]
    reals = [load_image(p) for _, p in pairs]
    captions = [p.caption for _, p in pairs]
    labels = read_labels(data) or {}
    truths = [labels.get(s.dialogue_id, p.caption) for s, p in pairs]   # attr_acc: against the photo's facts
    rng = random.Random(f"photochat-random-captions:{seed}")
    kinds = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    random_caps = [CAPTION_PREFIX + ", ".join(rng.sample(kinds, rng.randint(1, 3))) for _ in pairs]

    out = {}
    for name, images in (("reference", reals),
                         ("sd_reference_captions", draw_captions(generator, captions, num_inference_steps,
                                                                 guidance_scale, seed)),
                         ("random_captions", draw_captions(generator, random_caps, num_inference_steps,
                                                           guidance_scale, seed))):
        m = image_metrics(images, reals, extractor="toy")
        m["attr_acc"] = 100.0 * attribute_accuracy(images, truths)
        m["n_photos"] = len(images)
        out[name] = m
    return out


def evaluate_model(model, data: str | Path, split: str = "test", preset: str = "toy", max_samples: int | None = None,
                   seed: int = 0, out_dir: str | Path | None = None, accelerator=None, progress: bool = False,
                   lenient: bool = False, dialogues=None, **gen_kwargs) -> dict:
    """Return {"metrics", "records"} for a model on a data split; write files when out_dir is given.

    Every photo of the split is decoded before any generation: a bad one is a DataError naming the
    dialogue and path, or (``lenient``) its dialogue is skipped with a warning that counts them.
    ``dialogues``: the split already read and checked (the trainer's dev set, evaluated every epoch).
    """
    from photochat_lib.data.photochat import read_photochat
    from photochat_lib.data.samples import make_samples
    if dialogues is None:
        dialogues = read_photochat(Path(data) / split, check_images=True, lenient=lenient)
    samples = select_samples(make_samples(dialogues), max_samples, seed)
    if accelerator is not None and not accelerator.is_main_process:
        return {"metrics": {}, "records": []}
    was_training = model.training
    drawn = {}

    def draw(image_dir: Path | None) -> None:
        drawn["records"], drawn["images"] = predict(model, samples, seed=seed, image_dir=image_dir, progress=progress,
                                                    **gen_kwargs)
    if out_dir is None:
        draw(None)
    else:            # images/ holds this evaluation's photos only: drawn into a temp folder, swapped in whole
        final = replace_dir(Path(out_dir) / "images", draw)
        for r in drawn["records"]:
            r["prediction_images"] = [str(final / Path(p).name) for p in r["prediction_images"]]
    records, images = drawn["records"], drawn["images"]
    remarks = remark_records(model, dialogues, records, read_labels(data), seed, **gen_kwargs)
    model.train(was_training)
    metrics = score(records, images, preset, labels=read_labels(data))
    metrics.update(grounded_remarks(remarks, read_labels(data)) if remarks is not None else
                   {"grounded_note": "grounded remarks need the toy world's labels.json; this dataset has none"})
    if out_dir is not None:
        write_jsonl(Path(out_dir) / "predictions.jsonl", records)
        if remarks is not None:
            write_jsonl(Path(out_dir) / "remarks.jsonl", remarks)
        write_json(Path(out_dir) / "metrics.json", metrics)
    return {"metrics": metrics, "records": records}


def remark_records(model, dialogues, records: list[dict], labels: dict | None, seed: int = 0,
                   **gen_kwargs) -> list[dict] | None:
    """Return one record per remark sample of the dialogues (`grounding.is_remark`), with its facts and whether it
    is grounded: predictions already in `records` are reused, the rest generated (text only); None without labels."""
    from photochat_lib.data.samples import make_samples
    from photochat_lib.evaluation.grounding import fact_true, grounded, stated_facts
    if labels is None:
        return None
    remarks = [s for s in make_samples(dialogues) if is_remark(s, labels)]
    done = {r["id"]: r for r in records}
    todo = [s for s in remarks if s.id not in done]
    gen_kwargs = {k: v for k, v in gen_kwargs.items() if k in ("max_new_tokens", "decoding")}
    new, _ = predict(model, todo, seed=seed, draw_images=False, **gen_kwargs) if todo else ([], {})
    done.update({r["id"]: r for r in new})
    out = []
    for s in remarks:
        r, label = done[s.id], labels[s.dialogue_id]
        facts = stated_facts(r["prediction"])
        out.append({"id": s.id, "context": r["context"], "reference": r["reference"], "prediction": r["prediction"],
                    "facts": [{**vars(f), "true": fact_true(f, label)} for f in facts],
                    "grounded": grounded(r["prediction"], label)})
    return out


def aggregate(per_seed: list[dict]) -> dict:
    """Return {metric: {"mean", "std", "values"}} over runs (sample std; see metrics.mean_std)."""
    from photochat_lib.evaluation.metrics import mean_std
    return mean_std(per_seed)


def register(subparsers) -> None:
    """Add `photochat evaluate`."""
    p = subparsers.add_parser("evaluate", help="generate replies for a split and compute Table-2 metrics",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True,
                   help="PhotoChatModel folder(s), e.g. runs/e2e-s0/final; several (one per seed) → mean ± std")
    p.add_argument("--data", default="data/toy", help="dataset root with <split>/ folders (PhotoChat format)")
    p.add_argument("--split", default="test", help="split folder to evaluate (default: test)")
    p.add_argument("--preset", default="toy", choices=["toy", "colab", "paper"],
                   help="toy uses the toy feature extractor for IS/FID; others use InceptionV3")
    p.add_argument("--out", required=True, help="output folder: predictions.jsonl, metrics.json, images/")
    p.add_argument("--max-samples", type=at_least(1), default=None, help="evaluate a seeded subset (half photo-sharing)")
    p.add_argument("--seed", type=int, default=0, help="seed for the subset and for sampling")
    p.add_argument("--steps", type=at_least(1), default=SAMPLER_STEPS, help="denoising steps per drawn photo")
    p.add_argument("--guidance", type=non_negative, default=GUIDANCE_SCALE, help="classifier-free guidance scale")
    p.add_argument("--decoding", choices=DECODING, default="greedy",
                   help="greedy: the argmax token at every step (the default: deterministic, so seeds differ "
                        "only by training); sample: draw each token from p, as the paper's §2.2 describes")
    p.add_argument("--lenient", action="store_true",
                   help="skip dialogues whose photos are missing or unreadable (counted) instead of stopping")
    p.add_argument("--inception-weights", default=None,
                   help="local InceptionV3 weights file for IS/FID (real presets; else torch-fidelity downloads)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    from photochat_lib.utils.doctor import require_supported_gpu
    require_supported_gpu()                              # the fix for a torch build without this GPU's kernels
    out = Path(args.out)
    with hold_folder(out, "photochat evaluate"):       # a second evaluate or a run into --out: one line, no mix
        return _evaluate(args, out)


def _evaluate(args, out: Path) -> int:
    from photochat_lib.model.photochat_model import PhotoChatModel
    runs = []
    for k, path in enumerate(args.model):
        model = PhotoChatModel.from_pretrained(path)   # a wrong --model: one line from cli.main (exit 2)
        sub = out / f"model{k}" if len(args.model) > 1 else out
        res = evaluate_model(model, args.data, args.split, preset=args.preset, max_samples=args.max_samples,
                             seed=args.seed, out_dir=sub, progress=True, num_inference_steps=args.steps,
                             guidance_scale=args.guidance, decoding=args.decoding, lenient=args.lenient)
        runs.append(res["metrics"])
        print(f"[evaluate] {path}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in res["metrics"].items()))
    if len(runs) > 1:
        write_json(out / "metrics.json", {"per_model": dict(zip(args.model, runs)), "mean_std": aggregate(runs)})
    print(f"[evaluate] wrote {out}: metrics.json, predictions.jsonl and the drawn photos in images/"
          + (" (one model<k>/ folder per model)" if len(runs) > 1 else ""))
    return 0

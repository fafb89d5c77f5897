"""``photochat data {toy,wording,stats,download}``: make the toy world and the held-out wording set, count a dataset,
fetch the real ones."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import warnings
from pathlib import Path

from photochat_lib.data.schema import DataError, ReadReport


def register(subparsers) -> None:
    """Add the ``data`` command and its sub-commands to the top-level parser."""
    data = subparsers.add_parser("data", help="Datasets: make the toy world, print statistics, download.",
                                 description="Datasets: make the toy world, print Table 1 statistics, download.")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    sub.required = True

    toy = sub.add_parser("toy", help="Write the toy photo-sharing dataset (PhotoChat format, PNG images).")
    toy.add_argument("--out", default="data/toy", help="Output folder; replaced atomically if it is empty or "
                     "a toy dataset, refused otherwise (default: data/toy).")
    toy.add_argument("--seed", type=int, default=0, help="Random seed; the same seed gives byte-identical "
                     "files (default: 0).")
    toy.add_argument("--n-train", type=int, default=600, help="Number of training dialogues (default: 600).")
    toy.add_argument("--n-dev", type=int, default=100, help="Number of dev dialogues (default: 100).")
    toy.add_argument("--n-test", type=int, default=100, help="Number of test dialogues (default: 100).")
    toy.add_argument("--image-size", type=int, default=32, help="Side of the square RGB images in pixels "
                     "(default: 32).")
    toy.add_argument("--caption-bias", type=float, default=0.0, metavar="Q", help="Share in [0, 1] of the "
                     "training captions naming a blue object that write it 'purple' (a seeded choice of its own; "
                     "photos, dialogues, labels.json and the dev/test captions stay true; 0 writes exactly the "
                     "unbiased world; see photochat_lib/data/caption_bias.py) (default: 0).")
    toy.set_defaults(func=_toy)

    wording = sub.add_parser("wording", help="Write the held-out wording set: hand-written toy-world dialogues "
                             "in phrasings the generator never produces (evaluation only).")
    wording.add_argument("--out", default="data/wording", help="Output folder; replaced atomically if it is empty "
                         "or a wording dataset, refused otherwise (default: data/wording).")
    wording.set_defaults(func=_wording)

    stats = sub.add_parser("stats", help="Print Table 1's statistics for one or more dataset paths.")
    stats.add_argument("paths", nargs="+", metavar="PATH", help="A PhotoChat-format JSON file or a folder "
                       "of *.json files (one split, e.g. data/toy/train); one table row per PATH, plus a "
                       "total row when there are several.")
    stats.add_argument("--format", choices=["photochat", "dialogcc"], default="photochat",
                       help="Input schema: PhotoChat (also the toy world) or DialogCC (default: photochat).")
    stats.add_argument("--lenient", action="store_true", help="Skip bad dialogues (counted and reported "
                       "per reason on stderr) instead of stopping at the first error.")
    stats.add_argument("--check-images", action="store_true", help="Also decode every photo the way training "
                       "does (truncated, corrupt or over-large files are errors naming dialogue and path; with "
                       "--lenient, counted and skipped).")
    stats.set_defaults(func=_stats)

    # `download` is owned by data/download.py; skipped only while that module does not exist
    # (an ImportError *inside* it still surfaces)
    if importlib.util.find_spec("photochat_lib.data.download") is not None:
        importlib.import_module("photochat_lib.data.download").register_download(sub)


def _toy(args: argparse.Namespace) -> int:
    """Write the toy dataset; returns 0."""
    from photochat_lib.data.caption_bias import check_caption_bias
    from photochat_lib.data.toy_world import write_toy_dataset
    for name in ("n_train", "n_dev", "n_test"):
        if getattr(args, name) < 0:
            print(f"error: --{name.replace('_', '-')} must be >= 0", file=sys.stderr)
            return 2
    if args.image_size < 8:
        print("error: --image-size must be at least 8", file=sys.stderr)
        return 2
    try:
        check_caption_bias(args.caption_bias, "--caption-bias")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        out = write_toy_dataset(args.out, seed=args.seed, n_train=args.n_train, n_dev=args.n_dev,
                                n_test=args.n_test, image_size=args.image_size, caption_bias=args.caption_bias)
    except ValueError as e:                      # a folder that is not a toy dataset: nothing was touched
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.n_train}/{args.n_dev}/{args.n_test} train/dev/test dialogues to {out}"
          + (f" (caption bias {args.caption_bias:g}: toy_dataset.json lists the biased captions)"
             if args.caption_bias > 0 else ""))
    return 0


def _wording(args: argparse.Namespace) -> int:
    """Write the wording set; returns 0."""
    from photochat_lib.data.wording import read_source, write_wording_dataset
    try:
        out = write_wording_dataset(args.out)
    except ValueError as e:                      # a folder that is not a wording dataset: nothing was touched
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(read_source('test'))}/{len(read_source('dev'))} test/dev hand-written dialogues to {out}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    """Print the statistics table; returns 0, or 2 on a data error (as every command's fixable errors)."""
    from photochat_lib.data.dialogcc import read_dialogcc
    from photochat_lib.data.photochat import read_photochat
    from photochat_lib.data.stats import dialogue_stats, format_table
    reader = read_dialogcc if args.format == "dialogcc" else read_photochat
    rows = []
    for path in args.paths:
        report = ReadReport()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the report below says the same, once
                dialogues = reader(path, lenient=args.lenient, report=report, check_images=args.check_images)
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if report.skipped:
            print(f"{path}: {report.summary()}", file=sys.stderr)
            for message in report.messages[:10]:
                print(f"  {message}", file=sys.stderr)
        if args.check_images:
            n_photos = sum(len(d.photos) for d in dialogues)
            bad = report.skipped.get("bad_image", 0) + report.skipped.get("missing_image", 0)
            print(f"{path}: {n_photos} photos decode" + (f"; {bad} dialogues skipped for bad images" if bad else ""),
                  file=sys.stderr)
        rows.append(dialogue_stats(dialogues, name=str(Path(path))))
    print(format_table(rows))
    return 0

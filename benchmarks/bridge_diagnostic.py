"""Can L_v tell "purple" from "blue"? The colour-swap diagnostic, before any training (issue 20, item 5).

On --samples photo-sharing test captions, one colour word is swapped for a colour the caption does not name
while the photo keeps the true one. For each bridge (the paper's sentence-level DVTM, the positional one) and
each caption SD reads (gold = the swapped caption the LLM is taught; sampled = what the STGS drew), the expected
gradient of L_v at the logit that predicts the swapped word, over G Gumbel × D diffusion draws: the share of
captions where a gradient step raises the right colour's logit over the wrong one, with its 95 % (Wilson)
interval, how many of those wins stand above twice their standard error over the diffusion draws, and how often
the right colour also comes out above every other colour (its "chance" column is a gradient blind to the photo
and to the LLM's prior; through the sentence bridge the prior alone can win it). The control redraws each photo
in the swapped caption's colour: the drop from the model's row to the control's is what the photo moves.
`photochat_lib.evaluation.bridge_diagnostic` says exactly what is measured.

Models: the shipped toy foundation (where every study arm starts) and the shipped end-to-end model. Writes
``reports/bridge_diagnostic.{json,md}``. The committed report came from (2 cores shared, one torch thread):

    python benchmarks/bridge_diagnostic.py
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/toy", help="toy dataset (generated there if absent)")
    p.add_argument("--models", nargs="+", default=["foundation", "end2end"],
                   help="foundation | end2end (the shipped toy models) or model folders")
    p.add_argument("--samples", type=int, default=48, help="photo-sharing test captions (>= 40 for the issue)")
    p.add_argument("--gumbel", type=int, default=32, help="Gumbel draws per diffusion draw")
    p.add_argument("--diffusion", type=int, default=8, help="diffusion draws (latent sample, noise, timestep)")
    p.add_argument("--tau", type=float, default=1.0, help="STGS temperature (1: the start of training)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--reports", default="photochat_lib/reports", help="where bridge_diagnostic.{json,md} go (the shipped reports)")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the control (end-to-end model, gold caption): each photo redrawn to show the swapped "
                        "colour, so only the dialogue still names the 'right' one")
    p.add_argument("--quick", action="store_true", help="8 captions, 2 x 2 draws, the end-to-end model: checks it runs")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.gumbel, args.diffusion, args.models = 8, 2, 2, ["end2end"]
    return args


def load(name: str):
    from photochat_lib.model.photochat_model import PhotoChatModel
    from photochat_lib.presets import load_toy_model
    if name in ("foundation", "end2end"):
        return load_toy_model(which="foundation" if name == "foundation" else "end2end")
    return PhotoChatModel.from_pretrained(name)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from photochat_lib.data.photochat import read_photochat
    from photochat_lib.data.samples import make_samples
    from photochat_lib.data.toy_world import write_toy_dataset
    from photochat_lib.evaluation.bridge_diagnostic import diagnose
    from photochat_lib.presets import collator_for
    from photochat_lib.utils.atomic import write_json, write_text
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not (data / "test").is_dir():
        write_toy_dataset(data, seed=0)
    samples = [s for s in make_samples(read_photochat(data / "test")) if s.shares_photo][: args.samples]
    results, t0 = {}, time.time()
    for name in args.models:
        model = load(name)
        t = time.time()
        results[name] = diagnose(model, samples, collator_for(model, "toy"), n_gumbel=args.gumbel,
                                 n_diffusion=args.diffusion, tau=args.tau)
        results[name]["seconds"] = round(time.time() - t, 1)
    if args.control:
        from photochat_lib.evaluation.grounding import read_labels
        model, t = load(args.models[-1]), time.time()
        name = f"{args.models[-1]}, control: photo shows the caption's colour"
        results[name] = diagnose(model, samples, collator_for(model, "toy"), n_gumbel=args.gumbel,
                                 n_diffusion=args.diffusion, tau=args.tau, labels=read_labels(data),
                                 arms=(("sentence", "gold"), ("positional", "gold")))
        results[name]["seconds"] = round(time.time() - t, 1)
    lines = [f"Colour-swap diagnostic: {args.samples} test captions, tau {args.tau:g}, {args.gumbel} Gumbel x "
             f"{args.diffusion} diffusion draws, {time.time() - t0:.0f} s ({torch.get_num_threads()} thread(s))", "",
             "| model | bridge / SD reads | raises right over wrong | 95 % interval | clear wins (> 2 s.e.) | ties | "
             "mean gap (wrong − right) ± s.e. | right above every other colour (chance) | 95 % interval |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for arm, a in r["arms"].items():
            lines.append(f"| {name} | {arm} | {a['wins']} / {a['n']} ({100 * a['share']:.0f} %) | "
                         f"{100 * a['ci95'][0]:.0f}–{100 * a['ci95'][1]:.0f} % | {a['clear_wins']} | {a['ties']} | "
                         f"{a['mean_gap']:.2e} ± {a['mean_gap_se']:.1e} | {a['right_first']} / {a['n']} "
                         f"({100 * a['right_first'] / a['n']:.0f} %; chance {100 * a['right_first_chance']:.0f} %) | "
                         f"{100 * a['right_first_ci95'][0]:.0f}–{100 * a['right_first_ci95'][1]:.0f} % |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        out = Path(args.reports)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "bridge_diagnostic.json", {"args": vars(args), "results": results})
        write_text(out / "bridge_diagnostic.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

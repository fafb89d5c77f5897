"""How much of L_v's gradient reaches the LLM: the expectation over the draws beside the single draw.

The study (benchmarks/when_end2end_helps.py) probes ‖∇_LLM α·L_v‖ / ‖∇_LLM L_t‖ from ONE Gumbel draw and ONE
diffusion draw. Training follows the expectation over draws; one draw is one sample of a heavy-tailed
distribution. On the study's probe batch (8 photo-sharing training samples) and the shipped end-to-end toy
model, this prints for each τ and for float32 and float64 (a deep copy of the model in double):

* ‖E ∇αLv‖/‖∇Lt‖ ± s.e. — the mean over G Gumbel × D diffusion draws, its delta-method standard error over
  the D diffusion draws, and the noise floor (what the mean would read if the expectation were 0);
* the per-draw median ratio at the parameters (subset: the first --param-draws Gumbel draws of every
  diffusion draw), the share of draws whose gradient is exactly 0 (every draw), and the largest per-draw
  ratio at the parameters (subset and the --tail-draws draws with the largest gradient at the logits).

`photochat_lib.evaluation.gradient_signal` says exactly what each number is. Writes
``photochat_lib/reports/gradient_signal.{json,md}`` (the shipped reports); each (τ, dtype) cell is cached in
--cache, so an interrupted run resumes. The committed report came from (2 cores shared with other jobs, one
torch thread; `--quick`: 5 Gumbel × 2 diffusion draws, under a minute, writes nothing):

    python benchmarks/gradient_signal.py
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAUS = (1.0, 0.3, 0.1, 0.03, 0.01)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/toy", help="toy dataset (generated there if absent); the probe batch is "
                                                      "its first 8 photo-sharing training samples")
    p.add_argument("--model", default=None, help="model folder (default: the shipped end-to-end toy model)")
    p.add_argument("--taus", type=float, nargs="+", default=list(TAUS), help="STGS temperatures")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"],
                   help="model dtypes (float64: a deep copy of the model in double)")
    p.add_argument("--gumbel-draws", type=int, default=200, help="Gumbel draws per diffusion draw (G)")
    p.add_argument("--diffusion-draws", type=int, default=8, help="diffusion draws (D): VAE sample, noise, timestep")
    p.add_argument("--param-draws", type=int, default=8,
                   help="Gumbel draws of every diffusion draw whose gradient is also taken at the parameters")
    p.add_argument("--tail-draws", type=int, default=8,
                   help="other draws with the largest gradient at the logits, also taken at the parameters")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--reports", default=None,
                   help="where gradient_signal.{json,md} go (default: photochat_lib/reports, the shipped "
                        "reports; --quick: nowhere)")
    p.add_argument("--cache", default="runs/gradient_signal", help="per-(τ, dtype) results, so a rerun resumes")
    p.add_argument("--quick", action="store_true", help="5 Gumbel × 2 diffusion draws: checks the script runs")
    args = p.parse_args(argv)
    if args.quick:
        args.gumbel_draws, args.diffusion_draws, args.param_draws, args.tail_draws = 5, 2, 1, 1
        args.cache = None
    if args.reports is None and not args.quick:
        args.reports = "photochat_lib/reports"
    return args


def probe_batch(args):
    """Return the study's gradient probe: its `fixed_batch` (8 photo-sharing training samples)."""
    spec = importlib.util.spec_from_file_location("when_end2end_helps", ROOT / "benchmarks" / "when_end2end_helps.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study.fixed_batch(argparse.Namespace(data=args.data, init=args.model))


def measure(args, model, batch, tau: float, dtype: str) -> dict:
    """Return one (τ, dtype) cell: `gradient_signal`'s summary and its per-draw ratios (cached in --cache)."""
    import torch

    from photochat_lib.evaluation.gradient_signal import gradient_signal, in_dtype
    key = (f"tau{tau:g}-{dtype}-g{args.gumbel_draws}-d{args.diffusion_draws}-p{args.param_draws}-t{args.tail_draws}"
           f"-seed{args.seed}.json")
    cache = Path(args.cache) / key if args.cache else None
    if cache is not None and cache.exists():
        return json.loads(cache.read_text())
    signal = gradient_signal(in_dtype(model, getattr(torch, dtype)), batch, tau, args.gumbel_draws,
                             args.diffusion_draws, args.param_draws, args.tail_draws, args.seed)
    rec = {**signal.summary(), "group_ratios": signal.group_ratios, "draw_ratios": signal.draw_ratios,
           "tail_ratios": signal.tail_ratios}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(rec))
    return rec


def table(rows: list[dict]) -> list[str]:
    """Return the markdown table of the cells."""
    lines = ["| τ | dtype | ‖E ∇αLv‖/‖∇Lt‖ ± s.e. | noise floor | debiased | per-draw median | exact zeros | "
             "per-draw max | per diffusion draw: min – max | per-draw at logits: median / p99 / max |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        debiased = max(r["mean_ratio"] ** 2 - r["noise_floor"] ** 2, 0.0) ** 0.5    # E‖h̄‖² = ‖E h‖² + tr Σ / D
        lines.append(f"| {r['tau']:g} | {r['dtype']} | {r['mean_ratio']:.2e} ± {r['mean_ratio_se']:.1e} | "
                     f"{r['noise_floor']:.1e} | {debiased:.1e} | {r['draw_median']:.1e} | "
                     f"{100 * r['zero_share']:.1f} % | "
                     f"{r['draw_max']:.2e} | {min(r['group_ratios']):.1e} – {max(r['group_ratios']):.1e} | "
                     f"{r['logit_median']:.1e} / {r['logit_p99']:.1e} / {r['logit_max']:.1e} |")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    from photochat_lib.model.photochat_model import PhotoChatModel
    from photochat_lib.presets import load_toy_model
    if not (Path(args.data) / "train").exists():
        from photochat_lib.data.toy_world import write_toy_dataset
        write_toy_dataset(args.data, seed=0)
    model = PhotoChatModel.from_pretrained(args.model) if args.model else load_toy_model(which="end2end")
    if model.config.mode != "end2end":
        print(f"note: the model is in {model.config.mode!r} mode: no gradient of L_v reaches the LLM", flush=True)
    batch = probe_batch(args)
    rows = []
    for tau in args.taus:
        for dtype in args.dtypes:
            rows.append(measure(args, model, batch, tau, dtype))
            print(f"[gradient_signal] τ={tau:g} {dtype}: {rows[-1]['seconds']:.0f} s of measurement", flush=True)
    report(args, rows, torch.get_num_threads())
    return 0


def in_words(rows: list[dict]) -> str:
    """Return what the cells say, per draw and on average, in one paragraph (float32 where both dtypes ran)."""
    f32 = [r for r in rows if r["dtype"] == "float32"] or rows
    first, last = f32[0], f32[-1]
    pair = {r["dtype"]: r for r in rows if r["tau"] == last["tau"]}
    zeros = " against ".join(f"{100 * r['zero_share']:.1f} % in {d}" for d, r in pair.items())
    unresolved = [f"{r['tau']:g}" for r in f32 if r["mean_ratio"] < 1.5 * r["noise_floor"]]
    return (f"**In words.** Per draw, the median ratio falls from {first['draw_median']:.1e} at τ = {first['tau']:g} to "
            f"{last['draw_median']:.1e} at τ = {last['tau']:g} ({f32[0]['dtype']}); at τ = {last['tau']:g} the share of "
            f"draws whose gradient is exactly 0 is {zeros}; and the largest single draw reaches "
            f"{max(r['draw_max'] for r in rows):.2f} of ‖∇Lt‖. The mean over the draws does not collapse with the median: "
            f"it stays between {min(r['mean_ratio'] for r in f32):.1e} and {max(r['mean_ratio'] for r in f32):.1e} "
            f"({f32[0]['dtype']}), carried by the rare large draws"
            + (f"; at τ ∈ {{{', '.join(unresolved)}}} it is within 1.5× its noise floor, so these draws bound the "
               f"expectation (it is no larger than about the mean) without resolving it from 0." if unresolved else "."))


def report(args, rows: list[dict], threads: int) -> None:
    """Print the table; write the json and the markdown unless --reports is unset (--quick)."""
    measured = round(sum(r["seconds"] for r in rows) / 60, 1)
    head = ["# How much of L_v's gradient reaches the LLM (benchmarks/gradient_signal.py)", "",
            f"Shipped end-to-end toy model, the study's probe batch (8 photo-sharing training samples of "
            f"`{args.data}`), α = {rows[0]['alpha']:g}. {args.gumbel_draws} Gumbel × {args.diffusion_draws} diffusion "
            f"draws per cell (seed {args.seed}); at the parameters: {args.param_draws} Gumbel draws of each diffusion "
            f"draw and the {args.tail_draws} other draws with the largest gradient at the logits. {measured} min of "
            f"measurement summed over the cells ({threads} torch thread, 2 CPU cores shared with other jobs).", ""]
    text = head + table(rows) + ["", in_words(rows)]
    print("\n".join(text))
    if not args.reports:
        return
    from photochat_lib.utils.atomic import write_json, write_text
    out = Path(args.reports)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gradient_signal.json", {"settings": vars(args), "measured_minutes": measured, "cells": rows})
    write_text(out / "gradient_signal.md", "\n".join(text + ["", READING, ""]))


READING = """**Reading the table.** ‖E ∇αLv‖/‖∇Lt‖ is the norm of the gradient averaged over all draws — what training
follows — against the text loss's gradient, at the LLM's parameters. The s.e. is the delta method's over the
diffusion draws (each diffusion draw's Gumbel average is one sample); the noise floor is what that mean would
read if the expectation were 0, so a mean near its floor has not resolved the expectation; "debiased" is
√(mean² − floor²), the estimate of ‖E ∇αLv‖/‖∇Lt‖ with the noise's share taken out. The per-draw columns
describe single draws, what the study's one-draw probe saw: the median at the parameters (over the subset),
the share of draws whose gradient is exactly 0 (every draw, at the logits; then it is 0 at the parameters too),
the largest ratio at the parameters, and the same ratio taken at the logits over every draw. "Per diffusion
draw" is the range of ‖E_Gumbel ∇αLv‖/‖∇Lt‖ over the diffusion draws: the samples the s.e. comes from.
`photochat_lib/evaluation/gradient_signal.py` defines each number."""


if __name__ == "__main__":
    sys.exit(main())

"""When does the image loss help? End-to-end vs pipeline on the toy world, measured over seeds.

The paper's claim (Table 2) is that training the LLM through Stable Diffusion's loss (eq. 13, the STGS
and the DVTM carrying L_v's gradient back) beats training them apart. Three measurements test it:

1. **Learning curves.** Caption exact match and attribute accuracy of the drawn photos against
   training steps, end-to-end vs the pipeline with the *same* input end (``pipeline_context=
   "perceptron"``: the two differ only in whether L_v's gradient reaches the LLM), 3 seeds.
2. **Ablation.** α ∈ {0, 0.5, 1, 2} (α = 0: L_v never reaches the LLM, nor trains SD) and which caption
   eq. (11) tokenizes (``sd_caption_source`` gold vs sampled), 3 seeds, at the last step.
3. **Gradient size.** ‖∇_LLM α·L_v‖ next to ‖∇_LLM L_t‖ on a fixed batch of photo-sharing samples,
   at every point of the curves (τ anneals as training goes), from ONE Gumbel and ONE diffusion draw: a single
   draw's size, heavy-tailed and at low τ often exactly 0 in float32, not the mean over draws that training
   follows (that is `benchmarks/gradient_signal.py`: small, but not collapsing with τ as the single draw does).

Hypothesis. The sentence-level DVTM is rank one (notebook 04): whatever SD's loss says, what reaches
the LLM at a caption is ONE number per caption — put more, or less, probability on the caption's own
token set — while L_t names every token. With full caption supervision, L_v should add nothing
measurable. It could only teach where L_t is silent, so a designed toy world takes L_t's supervision
of the caption words away (``caption_supervision`` 0: L_t still teaches when to share, ``[IMG]`` and
``[/IMG]``; only the photos say what to write between them):

4. **Captions taught by photos alone.** End-to-end vs the pipeline at caption_supervision 0, 3 seeds.

5. **A world where L_v has a job** (``--parts bias``). In the toy world L_t already names every caption word, so
   L_v has nothing to add. `photochat data toy --caption-bias Q` misnames blue as "purple" in a share Q of the
   training captions, while the photos stay blue. SD is frozen in every arm of this part (``freeze_sd``): it stays
   the judge pretrained on true captions, so L_v scores a "purple" caption against a blue photo and could correct
   it; a trainable SD reading the gold caption would learn the bias itself. Arms: the pipeline, end to end with
   the paper's sentence-level bridge, end to end with the positional bridge (`model/bridge.py`), at
   Q ∈ {0, 0.25, 0.5, 0.75}, 5 seeds, 120 test photos per evaluation (the biased worlds have 200 test dialogues),
   paired 95 % intervals. Scored against the photo: attribute accuracy of the drawn photos, and how often a
   caption of a photo with a blue object (and no purple one) says "purple" (``purple_for_blue``).

   **Hypothesis, written before the runs (2026-12-03).** (a) At Q = 0 the three arms tie. (b) Greedy decoding
   writes the majority word, so the pipeline's captions keep "blue" while Q < 0.5 and flip to "purple" above it:
   ``purple_for_blue`` near 0 at Q ≤ 0.25, rising at 0.5, high at 0.75. (c) The sentence-level bridge can only
   say "more or less of the caption's own tokens" (one number per caption), so end to end with it ties with the
   pipeline at every Q. (d) The positional bridge can say "blue, not purple" if SD's gradient says it: it should
   lower ``purple_for_blue`` below the pipeline's at Q = 0.75 (and 0.5) where L_t's majority is wrong — only if
   `benchmarks/bridge_diagnostic.py` finds the positional gradient favouring the right colour on most captions;
   if that share's interval includes 50 %, expect a tie here too.

Every arm clips the dialogue side and the image side each on its own (``clip="per_side"``, `arm_config`): a
joint clip would scale end to end's early SD steps by ~1/25 (the LLM's gradient norm is ~25, SD's ~0.5) and make
the arms differ in more than the gradient path. The committed report predates that rule and the current toy
foundation; rerun the command below to refresh it.

Writes ``reports/when_end2end_helps.{json,md,png}`` (the figure notebook 07 shows) and prints the table.
Runs are cached under ``--runs``, so an interrupted study resumes. The committed report came from
(70 min on one core of this machine, next to another job):

    python benchmarks/when_end2end_helps.py --arm-seeds 0 --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = (0.0, 0.5, 1.0, 2.0)
PARTS = ("curves", "ablation", "supervision", "bias")
QS = (0.0, 0.25, 0.5, 0.75)
BIAS_ARMS = (("pipeline", "sentence"), ("end2end", "sentence"), ("end2end", "positional"))
SOURCES = ("gold", "sampled")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/toy", help="toy dataset (generated there if absent)")
    p.add_argument("--runs", default="runs/study", help="where the runs and their evaluations are cached")
    p.add_argument("--reports", default="photochat_lib/reports", help="where when_end2end_helps{,_bias}.{json,md,png} go (the shipped reports)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--arm-seeds", type=int, nargs="+", default=None,
                   help="seeds of the ablation and caption-supervision arms (default: --seeds)")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps of every run (the toy recipe's max_steps)")
    p.add_argument("--curve", type=int, nargs="+", default=[100, 200, 300, 400, 500],
                   help="steps at which the learning curves are evaluated (the last must be --steps)")
    p.add_argument("--eval-samples", type=int, default=80, help="test samples per evaluation (half share a photo)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--init", default=None, help="foundation folder (default: the shipped toy foundation)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts of the study to run")
    p.add_argument("--qs", type=float, nargs="+", default=list(QS), help="caption-bias shares Q of the bias part")
    p.add_argument("--bias-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds of the bias part")
    p.add_argument("--bias-photos", type=int, default=120, help="test photos per evaluation in the bias part")
    p.add_argument("--quick", action="store_true", help="one seed, 20 steps, 8 samples (bias part: Q 0 and 0.75, "
                                                        "10 steps, a 48-dialogue world): checks the script runs")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.curve, args.eval_samples = args.seeds[:1], 20, [10, 20], 8
        args.qs, args.bias_seeds, args.bias_photos = [0.0, 0.75], args.bias_seeds[:1], 4
    if args.curve[-1] != args.steps:
        p.error(f"--curve must end at --steps ({args.steps})")
    return args


def arm_name(mode: str, alpha: float = 1.0, source: str = "gold", supervision: float = 1.0,
             context: str = "perceptron", tau_end: float | None = None) -> str:
    """Return a run-folder name for one configuration (clip-per-side: runs cached before that rule train anew)."""
    return (f"{mode}-a{alpha:g}-{source}-sup{supervision:g}-{context}" + (f"-tau{tau_end:g}" if tau_end else "")
            + "-clipside")


def arm_config(args, run: Path, seed: int, steps: int, resume: bool = False, **cfg):
    """Return the TrainConfig of one arm. Every arm clips the dialogue side and the image side each on its own
    (clip="per_side", the pipeline's rule), so end to end and the pipeline differ only in whether L_v's gradient
    reaches the LLM (tests/test_train.py checks it on the resolved settings)."""
    from photochat_lib.training.train import TrainConfig
    return TrainConfig(data=cfg.pop("data", args.data), output_dir=str(run), seed=seed, max_steps=steps,
                       lr_schedule_steps=cfg.pop("lr_schedule_steps", args.steps),
                       eval_every_epochs=0, init=args.init, clip="per_side",
                       checkpointing_steps=min(args.curve), checkpoints_total_limit=1, progress=False,
                       resume_from_checkpoint="latest" if resume else None, **cfg)


def train_to(args, name: str, seed: int, steps: int, **cfg) -> Path:
    """Train (or resume) the run `name` up to `steps` optimizer steps; return its folder (final/ inside)."""
    from photochat_lib.training.train import Trainer
    run = Path(args.runs) / f"{name}-seed{seed}"
    state = run / "trainer_state.json"
    done = json.loads(state.read_text())["global_step"] if state.exists() else 0
    if done >= steps and (run / "final" / "photochat.json").exists():
        return run
    Trainer(arm_config(args, run, seed, steps, resume=bool(done), **cfg)).train()   # resuming (and lr_schedule_steps)
    return run                                                                      # replays one run exactly


def measure(args, run: Path, step: int, seed: int, batch) -> dict:
    """Return caption exact / attribute accuracy / share F1 on the test subset, and the gradient norms."""
    import torch

    from photochat_lib.evaluation.evaluate import evaluate_model
    from photochat_lib.model.photochat_model import PhotoChatModel, llm_gradient_norms
    cache = run / f"study-step{step}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    model = PhotoChatModel.from_pretrained(run / "final")
    m = evaluate_model(model, args.data, "test", preset="toy", max_samples=args.eval_samples, seed=0)["metrics"]
    log = [json.loads(ln) for ln in (run / "losses.jsonl").read_text().splitlines() if ln]
    tau = next(r["tau"] for r in log if r.get("step") == step and "tau" in r)   # the τ training was at
    model.eval()                                 # no dropout: every arm's probe sees the same forward pass
    grads = llm_gradient_norms(model, batch, tau, torch.Generator().manual_seed(seed))
    rec = {"step": step, "tau": tau, **{k: m.get(k) for k in ("caption_exact", "share F1", "BLEU-2", "unclosed",
                                                            "n_drawn")},
           "attr_acc": m.get("attr_acc", 0.0),       # fewer than 2 photos drawn: none of them counts as right
           "grad_text": grads["text"], "grad_image": grads["image"], "grad_ratio": grads["ratio"]}
    cache.write_text(json.dumps(rec))
    return rec


def fixed_batch(args):
    """Return one collated batch of 8 photo-sharing training samples (the gradient probe)."""
    from photochat_lib.data.collate import PhotoChatDataset
    from photochat_lib.presets import collator_for
    from photochat_lib.data.photochat import read_photochat
    from photochat_lib.data.samples import make_samples
    from photochat_lib.model.photochat_model import PhotoChatModel
    from photochat_lib.presets import load_toy_model
    samples = [s for s in make_samples(read_photochat(Path(args.data) / "train")) if s.shares_photo][:8]
    model = PhotoChatModel.from_pretrained(args.init) if args.init else load_toy_model()
    ds = PhotoChatDataset(samples)
    return collator_for(model, "toy")([ds[i] for i in range(len(ds))])


def summarise(values: list[float]) -> str:
    from photochat_lib.evaluation.metrics import format_mean_std, mean_std
    if len(values) == 1:
        return f"{values[0]:.1f}"                # one seed: no spread to show
    s = mean_std([{"v": v} for v in values])["v"]
    return format_mean_std(s["mean"], s["std"], 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.arm_seeds = args.arm_seeds or args.seeds
    import torch
    torch.set_num_threads(args.threads)
    if not (Path(args.data) / "train").exists():
        from photochat_lib.data.toy_world import write_toy_dataset
        write_toy_dataset(args.data, seed=0)
    t0 = time.perf_counter()
    batch = fixed_batch(args)
    results: dict = {"settings": {k: v for k, v in vars(args).items()}, "curves": {}, "ablation": {},
                     "supervision": {}}
    # 1 + 3: curves (and gradient sizes along them)
    for mode in ("end2end", "pipeline") if "curves" in args.parts else ():
        name = arm_name(mode)
        for seed in args.seeds:
            for step in args.curve:
                run = train_to(args, name, seed, step, mode=mode, pipeline_context="perceptron")
                results["curves"].setdefault(mode, {}).setdefault(str(seed), []).append(
                    measure(args, run, step, seed, batch))
            print(f"[study] curve {mode} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    # 2: α × caption source at the last step (α = 1 gold is the curves' end2end run)
    for alpha in ALPHAS if "ablation" in args.parts else ():
        for source in SOURCES if alpha else SOURCES[:1]:
            name = arm_name("end2end", alpha, source)
            for seed in args.arm_seeds:
                run = train_to(args, name, seed, args.steps, mode="end2end", alpha=alpha, sd_caption_source=source)
                results["ablation"].setdefault(f"{alpha:g}/{source}", []).append(
                    measure(args, run, args.steps, seed, batch))
            print(f"[study] ablation α={alpha:g} {source}: {time.perf_counter() - t0:.0f} s", flush=True)
    # 4: the designed world — captions taught by the photos alone; and τ held at 1, where single draws of L_v's
    #    gradient are not exactly 0 (at low τ most are; their mean is small either way: gradient_signal.py)
    arms = [("end2end", 1.0, 0.0, None), ("end2end", 0.0, 0.0, None), ("pipeline", 1.0, 0.0, None),
            ("end2end", 1.0, 0.0, 1.0), ("end2end", 1.0, 1.0, 1.0)]
    for mode, alpha, supervision, tau_end in arms if "supervision" in args.parts else ():
        name = arm_name(mode, alpha, supervision=supervision, tau_end=tau_end)
        for seed in args.arm_seeds:
            run = train_to(args, name, seed, args.steps, mode=mode, alpha=alpha, caption_supervision=supervision,
                           pipeline_context="perceptron", tau_end=tau_end)
            results["supervision"].setdefault(f"{mode}/a{alpha:g}/sup{supervision:g}" +
                                              (f"/tau{tau_end:g}" if tau_end else ""), []).append(
                measure(args, run, args.steps, seed, batch))
        print(f"[study] caption_supervision {supervision:g}, {mode} α={alpha:g} τ_end={tau_end}: "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    # 5: a world where L_v has a job (biased training captions, SD frozen as the judge)
    if "bias" in args.parts:
        results_bias = bias_part(args, t0)
        bias_report(args, results_bias)
    if not {"curves", "ablation", "supervision"} & set(args.parts):
        return 0
    results["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    results["train_minutes"] = round(sum(json.loads(ln)["seconds"] for log in Path(args.runs).glob("*/losses.jsonl")
                                         for ln in log.read_text().splitlines() if ln) / 60, 1)
    report(args, results)
    return 0


def bias_world(args, q: float) -> Path:
    """Return the toy world with caption bias q (generated once): 200 test dialogues, so 120 photos can be scored;
    the first 100 and the train and dev splits are the usual world's (each dialogue has its own seeded stream)."""
    from photochat_lib.data.toy_world import write_toy_dataset
    root = Path(f"{args.data}-bias-q{q:g}" + ("-quick" if args.quick else ""))
    if not (root / "toy_dataset.json").exists():
        sizes = dict(n_train=48, n_dev=4, n_test=12) if args.quick else dict(n_test=200)
        write_toy_dataset(root, seed=0, caption_bias=q, **sizes)
    return root


def bias_arm_name(q: float, mode: str, bridge: str) -> str:
    return f"bias-q{q:g}-{mode}-{bridge}-freezesd-clipside"


def bias_arm_settings(args, q: float, mode: str, bridge: str) -> dict:
    """Return the TrainConfig overrides of one bias arm: SD frozen, the Q-Former input end for the pipeline too."""
    return dict(data=str(bias_world(args, q)), mode=mode, bridge=bridge, freeze_sd=True, pipeline_context="perceptron")


def purple_for_blue(records: list[dict], labels: dict) -> tuple[float | None, int]:
    """Return (% of shared captions of a photo with a blue object and no purple one that say "purple", their count)."""
    hits = n = 0
    for r in records:
        if not (r["reference_shares"] and r["prediction_shares"] and r["prediction_captions"]):
            continue
        colours = {o["colour"] for o in labels[r["id"].rsplit(":", 1)[0]]["objects"]}
        if "blue" in colours and "purple" not in colours:
            n += 1
            hits += "purple" in r["prediction_captions"][0].lower()
    return (100.0 * hits / n if n else None), n


def measure_bias(args, run: Path, data: Path) -> dict:
    """Return caption exact, attribute accuracy (against the photo), share F1 and purple_for_blue on the test split."""
    from photochat_lib.evaluation.evaluate import evaluate_model
    from photochat_lib.evaluation.grounding import read_labels
    from photochat_lib.model.photochat_model import PhotoChatModel
    cache = run / f"study-bias-{args.bias_photos}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    model = PhotoChatModel.from_pretrained(run / "final")
    out = evaluate_model(model, data, "test", preset="toy", max_samples=2 * args.bias_photos, seed=0)
    m = out["metrics"]
    pfb, n_blue = purple_for_blue(out["records"], read_labels(data))
    rec = {"caption_exact": m.get("caption_exact"), "attr_acc": m.get("attr_acc", 0.0), "share F1": m.get("share F1"),
           "n_drawn": m.get("n_drawn"), "purple_for_blue": pfb, "n_blue": n_blue}
    cache.write_text(json.dumps(rec))
    return rec


def bias_part(args, t0: float) -> dict:
    """Train and measure every (Q, arm, seed) of part 5; return {q: {arm: [record per seed]}}."""
    out: dict = {}
    for q in args.qs:
        for mode, bridge in BIAS_ARMS:
            arm = f"{mode}/{bridge}" if mode == "end2end" else "pipeline"
            for seed in args.bias_seeds:
                run = train_to(args, bias_arm_name(q, mode, bridge), seed, args.steps,
                               **bias_arm_settings(args, q, mode, bridge))
                out.setdefault(f"{q:g}", {}).setdefault(arm, []).append(measure_bias(args, run, bias_world(args, q)))
            print(f"[study] bias Q={q:g} {arm}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def bias_report(args, results: dict) -> None:
    """Write when_end2end_helps_bias.{json,md,png}: per Q and arm, mean ± std over seeds, paired differences."""
    from photochat_lib.evaluation.metrics import paired_difference
    from photochat_lib.utils.atomic import write_json, write_text
    out = Path(args.reports)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "when_end2end_helps_bias.json", {"settings": vars(args), "results": results})
    lines = ["| Q | arm | attr. acc. | purple for blue (%) | caption exact | share F1 |", "|---|---|---|---|---|---|"]
    diffs = []
    for q, arms in results.items():
        for arm, recs in arms.items():
            cell = lambda c: summarise([r[c] for r in recs if r.get(c) is not None]) if any(
                r.get(c) is not None for r in recs) else "n/a"
            lines.append(f"| {q} | {arm} | {cell('attr_acc')} | {cell('purple_for_blue')} | {cell('caption_exact')} | "
                         f"{cell('share F1')} |")
        for arm in ("end2end/sentence", "end2end/positional"):
            for c in ("attr_acc", "purple_for_blue"):
                pairs = [(a[c], b[c]) for a, b in zip(arms[arm], arms["pipeline"])
                         if a.get(c) is not None and b.get(c) is not None]
                if len(pairs) < 2:
                    diffs.append(f"Q {q}, {arm} − pipeline, {c}: {len(pairs)} paired seed(s), no interval")
                    continue
                d = paired_difference([a for a, _ in pairs], [b for _, b in pairs], c)
                better = ("lower is better: " if c == "purple_for_blue" else "")
                diffs.append(f"Q {q}, {arm} − pipeline, {c}: {d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] "
                             f"({better}{d['n']} seeds)")
    png = bias_figure(results, out / "when_end2end_helps_bias.png")
    md = "\n".join(["# A world where L_v has a job (benchmarks/when_end2end_helps.py --parts bias)", "",
                    f"Q = share of training captions of a blue object written \"purple\"; SD frozen in every arm; seeds "
                    f"{args.bias_seeds}, {args.steps} steps per run, {args.bias_photos} test photos per evaluation "
                    f"(up to; half of {2 * args.bias_photos} samples). Mean ± std over seeds. The hypothesis was written "
                    "before the runs (the script's docstring).", "", *lines, "",
                    "Paired differences (95 % t-interval over seeds):", "", *[f"- {d}" for d in diffs], "",
                    f"![attribute accuracy and purple-for-blue against Q]({png.name})", ""])
    write_text(out / "when_end2end_helps_bias.md", md)
    print(md)


def bias_figure(results: dict, path: Path) -> Path:
    """Plot attribute accuracy and purple_for_blue against Q, one line per arm (mean ± std over seeds)."""
    import statistics

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    qs = sorted(results, key=float)
    for k, arm in enumerate(("pipeline", "end2end/sentence", "end2end/positional")):
        for ax, c in zip(axes, ("attr_acc", "purple_for_blue")):
            xs, ys, es = [], [], []
            for q in qs:
                vals = [r[c] for r in results[q].get(arm, []) if r.get(c) is not None]
                if vals:
                    xs.append(float(q) + 0.01 * (k - 1)), ys.append(statistics.mean(vals))   # arms side by side
                    es.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=arm)
    axes[0].set_title("attribute accuracy of drawn photos (%)")
    axes[1].set_title('captions saying "purple" for a blue object (%)')
    return _finish(fig, axes, "Q, share of biased training captions", path)


def report(args, results: dict) -> None:
    """Write the json, the markdown table and the figure; print the table."""
    from photochat_lib.utils.atomic import write_json, write_text
    from photochat_lib.evaluation.metrics import paired_difference
    out = Path(args.reports)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "when_end2end_helps.json", results)
    cols = ("caption_exact", "attr_acc", "share F1", "grad_ratio")
    lines = ["| arm | caption exact | attr. acc. | share F1 | ‖∇Lv‖/‖∇Lt‖ at the LLM |", "|---|---|---|---|---|"]

    def row(label, recs):
        cells = []
        for c in cols:
            vals = [r[c] for r in recs if r.get(c) is not None]
            cells.append(_ratio(vals) if c == "grad_ratio" and vals else summarise(vals) if vals else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    last = lambda mode: [recs[-1] for recs in results["curves"].get(mode, {}).values()]
    if results["curves"]:
        row(f"end2end (α 1, gold), {args.steps} steps", last("end2end"))
        row(f"pipeline (Q-Former input), {args.steps} steps", last("pipeline"))
    for key, recs in results["ablation"].items():
        alpha, source = key.split("/")
        row(f"end2end α {alpha}, {source}" if float(alpha) else "end2end α 0 (L = Lt)", recs)
    for key, recs in results["supervision"].items():
        mode, alpha, sup, *tau = key.split("/")
        row(f"{mode}, α {alpha[1:]}" + (", captions unscored by Lt" if sup == "sup0" else "") +
            (", τ held at 1" if tau else ""), recs)
    diffs = []
    for c in ("caption_exact", "attr_acc") if results["curves"] else ():
        d = paired_difference([r[c] for r in last("end2end")], [r[c] for r in last("pipeline")], c)
        diffs.append(f"{c}: {d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] ({d['verdict']})")
    sup = results["supervision"]
    for label, a_key in (("captions unscored", "end2end/a1/sup0"), ("captions unscored, τ held at 1",
                                                                    "end2end/a1/sup0/tau1")) if sup else ():
        for c in ("caption_exact", "attr_acc"):
            d = paired_difference([r[c] for r in sup[a_key]], [r[c] for r in sup["pipeline/a1/sup0"]], c)
            diffs.append(f"{label}, {c}: {d['mean']:+.1f} " + (f"[{d['low']:+.1f}, {d['high']:+.1f}] ({d['verdict']})"
                                                                if d["n"] > 1 else "(one seed: no interval)"))
    png = figure(args, results, out / "when_end2end_helps.png") if results["curves"] else Path("(no curves run)")
    md = "\n".join(["# When does the image loss help? (benchmarks/when_end2end_helps.py)", "",
                    f"Seeds {args.seeds} (curves), {args.arm_seeds} (other arms), {args.steps} steps per run, {args.eval_samples} test samples per "
                    f"evaluation. Training took {results['train_minutes']} min of optimizer steps summed over the runs (cached in "
                    f"`{args.runs}`; this invocation {results['minutes']} min). Mean ± std over seeds.", "",
                    *lines, "", "end2end − pipeline (95% t-interval over paired seeds): " + "; ".join(diffs) + ".",
                    "", f"![learning curves and gradient sizes]({png.name})", ""])
    write_text(out / "when_end2end_helps.md", md)
    print(md)


def _ratio(values: list[float]) -> str:
    """Return a gradient ratio (it spans orders of magnitude): the mean, and the range over seeds."""
    mean = sum(values) / len(values)
    return f"{mean:.1e}" if len(values) == 1 else f"{mean:.1e} ({min(values):.0e} to {max(values):.0e})"


def figure(args, results: dict, path: Path) -> Path:
    """Plot caption exact match, attribute accuracy and the gradient ratio against steps, per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    colours = {"end2end": "tab:blue", "pipeline": "tab:orange"}
    for mode, per_seed in results["curves"].items():
        for k, (seed, recs) in enumerate(per_seed.items()):
            steps = [r["step"] for r in recs]
            kw = dict(color=colours[mode], alpha=0.8, label=mode if k == 0 else None, marker="o", ms=3)
            axes[0].plot(steps, [r["caption_exact"] for r in recs], **kw)
            axes[1].plot(steps, [r["attr_acc"] or 0 for r in recs], **kw)
            if mode == "end2end":
                axes[2].semilogy(steps, [max(r["grad_ratio"], 1e-8) for r in recs], **kw)
    axes[0].set_title("caption exact match (%)")
    axes[1].set_title("attribute accuracy of drawn photos (%)")
    axes[2].set_title("one draw's ‖∇ αLv‖ / ‖∇ Lt‖ at the LLM (end2end; < 1e-8 drawn at 1e-8)", fontsize=10)
    taus = {r["step"]: r["tau"] for recs in results["curves"]["end2end"].values() for r in recs}
    for step, tau in sorted(taus.items()):
        axes[2].annotate(f"τ={tau:.2g}", (step, 1.0), textcoords="offset points", xytext=(0, -10), ha="center",
                         fontsize=8, xycoords=("data", "axes fraction"))
    return _finish(fig, axes, "optimizer step", path)


def _finish(fig, axes, xlabel: str, path: Path) -> Path:
    """Label and grid the panels, save the figure to path, close it; return path."""
    import matplotlib.pyplot as plt
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())

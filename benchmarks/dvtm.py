"""Benchmark the DVTM (eq. 9–11): the paper's per-caption sparse matrices vs the rank-one batched form,
and the positional bridge (`photochat_lib/model/bridge.py`) that keeps positions and the whole vocabulary.

One batch of B captions x m positions, R_LLM of shape (B, m, |V_LLM|), forward + backward, with the STGS
over the same (B, m, |V_LLM|) logits as the yardstick. Each method runs in its own fresh subprocess so
that its peak memory is its own. Run: ``python benchmarks/dvtm.py [--device cpu] [--repeats 5]``.

The positional bridge needs its vocabulary-wide matrix M (|V_LLM|, |V_SD|): row i = SD's tokenization of LLM
token i's text. Built from real tokenizers with ``--tokenizers LLM_FOLDER SD_FOLDER`` (hub ids work where the
Hub is reachable); otherwise, offline, M is synthetic with the same shape: each LLM token spelt by 1-3 SD tokens
(mean 2; Llama-2's 32 k tokens against CLIP's 49 k: most are one CLIP piece, so the real nnz is lower).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from profiling import fmt_bytes, reset_peak_rss, rss_bytes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("sparse", "batched", "positional", "stgs")


def parse_args(argv=None) -> argparse.Namespace:
    """Return the parsed command line."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu",
                   help="torch device to run on, e.g. 'cpu' or 'cuda' (default: cpu)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed repeats after one warm-up; the median is reported (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random captions, logits and Gumbel noise (default: 0)")
    p.add_argument("--batch", type=int, default=32, help="captions per batch B (default: 32)")
    p.add_argument("--positions", type=int, default=20, help="caption positions m per caption (default: 20)")
    p.add_argument("--v-llm", type=int, default=32000,
                   help="LLM vocabulary size |V_LLM| (default: 32000, LLaMA)")
    p.add_argument("--v-sd", type=int, default=49408, help="SD vocabulary size |V_SD| (default: 49408, CLIP)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads for each method; 0 keeps torch's default. "
                   "On a shared machine 1 gives steadier timings (default: 0)")
    p.add_argument("--tokenizers", nargs=2, metavar=("LLM", "SD"), default=None,
                   help="build the positional bridge's M from these two tokenizers (folders or hub ids) instead of a "
                        "synthetic one of the same shape")
    p.add_argument("--sd-positions", type=int, default=77, help="SD caption length n (default: 77, CLIP)")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)  # internal: run one method, print JSON
    return p.parse_args(argv)


# --------------------------------------------------------------------------- one method, in a subprocess

def run_worker(args: argparse.Namespace) -> dict:
    """Time forward + backward of one method; return times (s) and peak extra memory (bytes)."""
    import torch

    from photochat_lib.model.dvtm import dvtm_average
    from photochat_lib.model.stgs import gumbel_softmax_st

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(args.seed)
    B, m, V1, V2 = args.batch, args.positions, args.v_llm, args.v_sd
    # ---- inputs, outside the timed region: captions of 8-20 tokens, one-hot rows at the caption's ids
    lengths = torch.randint(8, 21, (B, 2), generator=g)
    llm_ids = [torch.randint(0, V1, (int(n),), generator=g).to(device) for n in lengths[:, 0]]
    sd_ids = [torch.randint(0, V2, (int(n),), generator=g).to(device) for n in lengths[:, 1]]
    tokens = torch.zeros(B, m, dtype=torch.long)
    r_mask = torch.zeros(B, m, dtype=torch.bool)
    for b, ids in enumerate(llm_ids):
        k = min(len(ids), m)
        tokens[b, :k], r_mask[b, :k] = ids[:k].cpu(), True
    r_mask = r_mask.to(device)
    if args.worker == "positional":
        from photochat_lib.model.bridge import positional_straight_through
        t0 = time.perf_counter()
        M = vocabulary_matrix(args, g)                                   # (V1, V2) sparse COO
        build_s = time.perf_counter() - t0
        V1, V2 = M.shape
        M = M.to(device)
        n = args.sd_positions
        A = torch.zeros(B, n, m)                                         # (B, n, m) a monotone alignment
        for b in range(B):
            k = int(r_mask[b].sum())
            L = min(n - 2, int(lengths[b, 1]))
            A[b, 1 + torch.arange(L), (torch.arange(L) * k // L)] = 1.0  # SD j reads LLM ⌊j k / L⌋
        A = A.to(device)
        r_sd = torch.nn.functional.one_hot(torch.randint(0, V2, (B, n), generator=g), V2).float().to(device)
        leaf = torch.nn.functional.one_hot(tokens.clamp(max=V1 - 1), V1).float().to(device).requires_grad_(True)
        upstream = torch.randn(B, n, V2, generator=g).to(device)
        step = lambda: positional_straight_through(leaf, r_sd, M, A)  # noqa: E731
        extra = {"nnz": int(M._nnz()), "m_bytes": int(M._nnz() * (8 * 2 + 4)), "build_s": build_s,
                 "source": "tokenizers" if args.tokenizers else "synthetic"}
    elif args.worker == "stgs":
        leaf = torch.randn(B, m, V1, generator=g).to(device).requires_grad_(True)  # logits
        upstream = torch.randn(B, m, V1, generator=g).to(device)
        noise_gen = torch.Generator(device=device).manual_seed(args.seed)
        step = lambda: gumbel_softmax_st(leaf, 0.5, generator=noise_gen)  # noqa: E731
    else:
        leaf = torch.nn.functional.one_hot(tokens, V1).float().to(device).requires_grad_(True)  # R_LLM
        upstream = torch.randn(B, V2, generator=g).to(device)
        impl = args.worker
        step = lambda: dvtm_average(leaf, llm_ids, sd_ids, V2, impl=impl, r_mask=r_mask)  # noqa: E731

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def once() -> float:
        leaf.grad = None
        sync()
        t0 = time.perf_counter()
        step().backward(upstream)
        sync()
        return time.perf_counter() - t0

    def forward_only() -> float:
        sync()
        t0 = time.perf_counter()
        out = step()  # builds the autograd graph as in training, but no backward
        sync()
        del out
        return time.perf_counter() - t0

    def grad_floor() -> float:
        sync()
        t0 = time.perf_counter()
        z = torch.zeros(B, m, V1, device=device)  # what any backward to a dense R_LLM must write
        sync()
        del z
        return time.perf_counter() - t0

    once()  # warm-up (first-call initialisation is not charged to the method's peak memory)
    leaf.grad = None  # so the peak below includes the gradient each repeat writes
    # ---- peak memory above the inputs, over the timed forward + backward repeats
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_ok = reset_peak_rss()
        base = rss_bytes("VmRSS")
    times = [once() for _ in range(args.repeats)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        hwm = rss_bytes("VmHWM")
        peak = (hwm - base) if (reset_ok and hwm is not None and base is not None) else None
    leaf.grad = None
    fwd = [forward_only() for _ in range(args.repeats)]
    floor = [grad_floor() for _ in range(args.repeats)]
    return {"times": times, "fwd": fwd, "floor": floor, "peak": peak, "threads": torch.get_num_threads(),
            **(extra if args.worker == "positional" else {})}


def vocabulary_matrix(args, g):
    """Return the positional bridge's M: from real tokenizers (--tokenizers) or synthetic of the same shape."""
    import torch
    if args.tokenizers:
        from transformers import AutoTokenizer

        from photochat_lib.model.bridge import token_level_vtm
        llm, sd = (AutoTokenizer.from_pretrained(t) for t in args.tokenizers)
        return token_level_vtm(llm, sd, len(llm), len(sd))
    V1, V2 = args.v_llm, args.v_sd
    k = torch.randint(1, 4, (V1,), generator=g)                          # SD pieces per LLM token, 1-3
    rows = torch.arange(V1).repeat_interleave(k)                         # (nnz,)
    cols = torch.randint(0, V2, (int(k.sum()),), generator=g)            # (nnz,)
    vals = (1.0 / k.float()).repeat_interleave(k)                        # rows sum to 1
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (V1, V2), check_invariants=False).coalesce()


# --------------------------------------------------------------------------- driver

def main(argv=None) -> int:
    """Run each method in a subprocess and print the table; returns the exit status."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0
    results = {}
    for method in METHODS:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method] + [
            f"--device={args.device}", f"--repeats={args.repeats}", f"--seed={args.seed}",
            f"--batch={args.batch}", f"--positions={args.positions}",
            f"--v-llm={args.v_llm}", f"--v-sd={args.v_sd}", f"--threads={args.threads}",
            f"--sd-positions={args.sd_positions}",
        ] + (["--tokenizers", *args.tokenizers] if args.tokenizers else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ))
        if proc.returncode != 0:
            print(f"worker {method!r} failed:\n{proc.stderr}", file=sys.stderr)
            return 1
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])

    B, m, V1, V2 = args.batch, args.positions, args.v_llm, args.v_sd
    mem_what = (
        "torch.cuda.max_memory_allocated above the inputs"
        if args.device.startswith("cuda")
        else "peak resident memory (Linux VmHWM, reset after the inputs were built) above the inputs"
    )
    print(f"DVTM benchmark: B={B} captions x m={m} positions, |V_LLM|={V1}, |V_SD|={V2}, device={args.device}, "
          f"threads={results['batched']['threads']}")
    print(f"time: forward + backward, median of {args.repeats} after 1 warm-up; memory: {mem_what}; "
          f"one fresh subprocess per method")
    print("fwd ms: forward only, graph built as in training; floor: writing the dense (B, m, |V_LLM|) gradient "
          "that any backward into R_LLM must produce")
    print()
    labels = {
        "sparse": "sparse  (paper: one COO M_b per caption, eq. 9-10)",
        "batched": "batched (rank-one gather/scatter)",
        "positional": "positional bridge (bridge.py, per position, M)",
        "stgs": "STGS    (eq. 4-7 over the same logits)",
    }
    print(f"{'method':<52} {'fwd+bwd ms':>10} {'min ms':>8} {'fwd ms':>8} {'peak memory':>12}")
    print("-" * 94)
    med, fwd = {}, {}
    for method in METHODS:
        t = results[method]["times"]
        med[method] = statistics.median(t)
        fwd[method] = statistics.median(results[method]["fwd"])
        print(f"{labels[method]:<52} {med[method] * 1e3:>10.2f} {min(t) * 1e3:>8.2f} {fwd[method] * 1e3:>8.2f} "
              f"{fmt_bytes(results[method]['peak']):>12}")
    floor = statistics.median(results["batched"]["floor"])
    print(f"{'(floor: torch.zeros(B, m, |V_LLM|), the dense grad)':<52} {floor * 1e3:>10.2f}")
    print()
    speedup = med["sparse"] / med["batched"]
    share = med["batched"] / med["stgs"]
    verdict = "met" if speedup >= 20 else "NOT met"
    print(f"sparse / batched speed-up : {speedup:8.1f}x   fwd+bwd (target >= 20x: {verdict})")
    print(f"                            {fwd['sparse'] / fwd['batched']:8.1f}x   forward only")
    print(f"batched / STGS time       : {share * 100:8.2f}%   (target <= 5%: {'met' if share <= 0.05 else 'NOT met'})")
    print(f"a dense M (float32) needs : {fmt_bytes(V1 * V2 * 4)} per caption, {fmt_bytes(B * V1 * V2 * 4)} "
          f"for the batch (paper's 40,000^2 x 2 B = 3.2 GB remark)")
    pos = results["positional"]
    print(f"positional bridge         : M ({pos['source']}) nnz {pos['nnz']:,}, {fmt_bytes(pos['m_bytes'])} as COO, built in "
          f"{pos['build_s']:.2f} s; {med['positional'] / med['stgs'] * 100:.1f}% of the STGS's time, output (B, n={args.sd_positions}, "
          f"|V_SD|) like the one-hot R_SD it replaces")
    return 0


if __name__ == "__main__":
    sys.exit(main())

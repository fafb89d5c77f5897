"""Does the shipped toy Stable Diffusion draw what it is told? (issue target: ≥ 95% exact match)

Draws n fresh captions with the default sampler and asks the shipped toy-world classifier whether each
photo shows exactly the asked-for (colour, shape) set; also reports how many of the VAE's own
reconstructions of real photos pass the same judge (an upper bound for the whole model).

    python benchmarks/toy_sd_accuracy.py [--n 200] [--model photochat_lib/toy/checkpoints/toy/sd]
"""
from __future__ import annotations

import argparse
import sys
import time

from photochat_lib.toy.pretrain_sd import TARGET_EXACT_MATCH, evaluate_generator, evaluate_vae
from photochat_lib.toy.foundation import TOY_CHECKPOINT


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="fresh captions to draw and judge")
    p.add_argument("--model", default=str(TOY_CHECKPOINT / "sd"), help="SD folder (diffusers layout)")
    args = p.parse_args(argv)
    import torch

    from photochat_lib.model.image_generator import ImageGenerator
    gen = ImageGenerator.from_pretrained(args.model).eval()
    t = time.perf_counter()
    with torch.no_grad():
        g = evaluate_generator(gen, n=args.n)
        v = evaluate_vae(gen, n=min(300, args.n))
    print(f"toy SD {args.model}: {args.n} fresh captions, DDIM {g['num_inference_steps']} steps, guidance "
          f"{g['guidance_scale']}; judged by the shipped toy classifier ({time.perf_counter() - t:.0f} s)")
    print(f"{'what':34s} {'exact match':>12s} {'colours':>8s} {'shapes':>8s}")
    print(f"{'generated photos':34s} {g['exact_match']:12.3f} {g['colour_accuracy']:8.3f} {g['shape_accuracy']:8.3f}")
    for k, acc in g["exact_match_by_objects"].items():
        print(f"{'  with ' + str(k) + ' object(s)':34s} {acc:12.3f}")
    print(f"{'VAE reconstructions of real photos':34s} {v['exact_match']:12.3f} {v['colour_accuracy']:8.3f} "
          f"{v['shape_accuracy']:8.3f}")
    ok = g["exact_match"] >= TARGET_EXACT_MATCH
    print(f"target >= {TARGET_EXACT_MATCH:.2f}: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`photochat chat`: a terminal photo-sharing chat with a trained model.

Type a message and press Enter. Send a photo with ``/image PATH`` or ``/image PATH TEXT`` (the text, then the
photo, are your turn, and the bot replies to them); ``/bot TEXT`` puts a line in the bot's mouth without a reply
(to set up a scene: "/bot I bought a red ball."); ``/reset`` forgets the conversation; ``/quit`` (or Ctrl-D) ends. The model replies in text,
and every photo it shares is drawn, saved under ``--out`` (numbered after the photos already there, so a
new session never overwrites an earlier one's, and two sessions at once never share a name) and its path
printed.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from photochat_lib.utils.atomic import write_file
from photochat_lib.utils.cliutil import at_least, non_negative
from photochat_lib.model.sampling import GUIDANCE_SCALE, SAMPLER_STEPS


def register(subparsers) -> None:
    """Add `photochat chat`."""
    p = subparsers.add_parser("chat", help="chat in the terminal; attach photos with /image PATH",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="a PhotoChatModel folder, e.g. runs/e2e/final (default: the shipped toy model trained end "
                        "to end, photochat_lib/toy/checkpoints/toy-end2end)")
    p.add_argument("--out", default="chat_photos", help="folder where the photos the model shares are saved")
    p.add_argument("--max-new-tokens", type=at_least(1), default=48, help="longest reply, in LLM tokens")
    p.add_argument("--steps", type=at_least(1), default=SAMPLER_STEPS, help="denoising steps per drawn photo")
    p.add_argument("--guidance", type=non_negative, default=GUIDANCE_SCALE, help="classifier-free guidance scale")
    p.add_argument("--decoding", choices=["greedy", "sample"], default="greedy",
                   help="greedy: the most likely token at every step; sample: draw each token from p (§2.2)")
    p.add_argument("--sample", action="store_const", const="sample", dest="decoding", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and drawing")
    p.set_defaults(func=run)


def run(args, stdin=None, stdout=None) -> int:
    """Run the chat loop on stdin/stdout; returns 0."""
    from photochat_lib.data.images import load_image
    from photochat_lib.model.generation import generate
    from photochat_lib.model.photochat_model import PhotoChatModel
    from photochat_lib.presets import load_toy_model, with_captioner
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    say = lambda s: (stdout.write(s + "\n"), stdout.flush())
    from photochat_lib.utils.doctor import UnsupportedGPUError, require_supported_gpu
    try:
        require_supported_gpu()                # a torch build without kernels for this GPU: the fix, in one line
        model = with_captioner(PhotoChatModel.from_pretrained(args.model)) if args.model else load_toy_model(which="end2end")
    except (OSError, ValueError, UnsupportedGPUError) as e:   # a wrong --model, a broken one, no Hub, the GPU
        if getattr(args, "debug", False):
            raise
        say(f"error: {e}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history = []
    n_saved = max((int(m.group(1)) for f in out.glob("photo_*.png")            # never overwrite an earlier
                   if (m := re.fullmatch(r"photo_(\d+)\.png", f.name))), default=0)   # session's photos
    say("photochat — type a message; /image PATH to send a photo; /bot TEXT to speak for the bot; /reset; /quit")
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            break
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            history = []
            say("(conversation reset)")
            continue
        if line.startswith("/bot "):
            history.append(("B", line[len("/bot "):].strip()))
            continue
        if line.startswith("/image"):
            path, _, text = line[len("/image"):].strip().partition(" ")
            try:
                img = load_image(path)         # decoded and size-checked as in training; huge photos downscaled
            except (OSError, ValueError) as e:     # missing, truncated, not an image, over the pixel limit
                say(f"(cannot use image {path!r}: {e}; the conversation goes on)")
                continue
            if text.strip():
                history.append(("A", text.strip()))
            history.append(("A", img))
            say(f"(photo {path} sent)")
        else:
            history.append(("A", line))
        reply = generate(model, history, speaker="B", max_new_tokens=args.max_new_tokens, do_sample=args.decoding == "sample",
                         seed=args.seed + len(history), num_inference_steps=args.steps, guidance_scale=args.guidance)
        for seg in reply.segments:
            if seg.kind == "text":
                history.append(("B", seg.text))
                say(f"bot> {seg.text}")
            elif seg.image is not None:
                history.append(("B", seg.image))
                try:
                    path, n_saved = save_photo(out, seg.image, n_saved)
                except OSError as e:           # a full disk: say so, keep talking, leave no empty file
                    say(f"bot> [shares a photo: {seg.text}] (could not save it in {out}: {e})")
                    continue
                say(f"bot> [shares a photo: {seg.text}] saved to {path}")
            else:
                say("bot> [tried to share a photo with an empty caption]")
        for note in reply.notes:
            say(f"(note: {note})")
    return 0


def save_photo(out: Path, image, last: int) -> tuple[Path, int]:
    """Write `image` as the first free out/photo_NNN.png after number `last`; return (path, its number).

    The name is claimed with O_CREAT | O_EXCL, so two sessions saving into one folder at once never get the
    same file; the bytes then arrive atomically (temp file + rename), and a failed write leaves no file."""
    n = last
    while True:
        n += 1
        path = out / f"photo_{n:03d}.png"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))   # the name is ours alone
        except FileExistsError:
            continue
        try:
            write_file(path, lambda tmp: image.save(tmp, format="PNG"))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, n

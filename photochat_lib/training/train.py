"""Joint training (paper §2.5, §3.1.2): minimise L = L_t + α·L_v with AdamW under `accelerate`.

Shaped after diffusers' ``train_text_to_image.py``: `parse_args()`-style options (`TrainConfig`),
one `Accelerator` (gradient accumulation, fp16 autocast + gradient scaling on CUDA, fp32 on CPU),
bookkeeping only when ``accelerator.sync_gradients``, ``save_state`` into ``checkpoint-{step}``,
``--resume-from-checkpoint latest``, the last N checkpoints kept, a progress bar on the main
process. What the paper fixes: AdamW (lr 5e-5, weight decay 0.01), batch 32, linear warm-up
(1,000 steps; then constant — the paper names no decay), τ annealed 1 → 0.01 over three epochs
(`TauScheduler`), α = 1, early stopping when dev BLEU-2 and FID have not improved for 4 epochs.

Reproducibility. Every micro-step re-seeds torch's global RNG (dropout) and the model's noise
generator (Gumbel noise, diffusion noise and timesteps) from (seed, process, micro-step), and each
epoch's order comes from (seed, epoch). So a run killed at any point and resumed from its last
checkpoint replays exactly the per-step losses of an uninterrupted run (tests/test_train.py).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from photochat_lib.utils.atomic import write_json
from photochat_lib.utils.cliutil import progress_bar
from photochat_lib.training.dev_eval import DevEvaluation
from photochat_lib.recipe import get_recipe
from photochat_lib.training.run_folder import (RUN_DEFINING, RUN_FILES, RunFolder, check_resume,  # noqa: F401
                                               clean_leftovers, clear_run, data_identity, latest_checkpoint,
                                               run_checkpoints)
from photochat_lib.utils.folder_lock import hold_folder
from photochat_lib.model.stgs import TauScheduler


@dataclass
class TrainConfig:
    data: str = "data/toy"                   # PhotoChat-format dataset root with train/ and dev/
    output_dir: str = "runs/toy-end2end"     # checkpoints, losses.jsonl, metrics, final/ model
    preset: str = "toy"                      # toy | colab | paper (architectures and recipe)
    mode: str = "end2end"                    # end2end (joint, eq. 13) | pipeline (baseline, §3.1.4)
    init: str | None = None                  # a PhotoChatModel folder to start from (toy: the shipped foundation)
    llm: str | None = None                   # colab/paper: hub id or folder of the LLM (default: the preset's)
    perceptron: str | None = None            # colab/paper: hub id or folder of the BLIP-2 model (default: the preset's)
    sd: str | None = None                    # colab/paper: hub id or folder of Stable Diffusion (default: the preset's)
    random_init: bool = False                # random weights: toy ignores the shipped foundation; colab/paper
                                             # build their real architectures from photochat_lib/configs
                                             # (no download; smoke tests, memory and speed checks)
    smoke: bool = False                      # with random_init: colab/paper at tiny widths, every code path kept
    seed: int = 0                            # data order, noise, dropout
    max_epochs: int | None = None            # default: the recipe's
    max_steps: int | None = None             # stop after this many optimizer steps (default: the recipe's;
                                             # None there too: epochs and early stopping decide)
    micro_batch_size: int | None = None      # default: the recipe's
    grad_accum_steps: int | None = None      # default: the recipe's
    lr: float | None = None                  # default: the recipe's (paper 5e-5)
    sd_lr: float | None = None               # lr of the UNet + CLIP text encoder; default: the recipe's (= lr)
    weight_decay: float | None = None        # default: the recipe's (paper 0.01)
    warmup_steps: int | None = None          # default: the recipe's (paper 1,000)
    alpha: float | None = None               # weight of L_v in eq. (13); default: the recipe's (1)
    tau_start: float | None = None           # Gumbel temperature at step 0; default: the recipe's
    tau_end: float | None = None             # temperature after annealing; default: the recipe's
    tau_anneal_epochs: float | None = None   # epochs of annealing; default: the recipe's (3)
    sd_caption_source: str = "gold"          # which caption eq. (11) tokenizes: gold | sampled
    pipeline_context: str = "caption"        # pipeline: context photos reach the LLM as caption | perceptron
    dvtm_impl: str = "batched"               # dense | sparse | batched
    freeze_sd: bool = False                  # keep SD's UNet and text encoder as loaded (the recipe's other choices
                                             # stand): SD stays the judge L_v was pretrained to be, and cannot
                                             # learn a biased world's captions (benchmarks/when_end2end_helps.py)
    bridge: str = "sentence"                 # how L_v reaches the caption: sentence (the paper's pooled DVTM) |
                                             # positional (per position, vocabulary-wide; model/bridge.py)
    loss_reduction: str = "mean"             # mean (L_t per token, L_v per latent value) | sum (the paper's eq. 2
                                             # and 12; α then means ~1/60 of a mean-form α in the toy)
    photo_only: bool = False                 # train only on responses that share a photo
    lenient: bool = False                    # skip dialogues whose photos are missing or unreadable (counted and
                                             # reported before step 1) instead of stopping with their names
    lr_decay: str | None = None              # after warm-up: constant | cosine (default: the recipe's)
    lr_schedule_steps: int | None = None     # the step where a decaying lr ends (default: max_steps); set it
                                             # when a run is trained in chunks of rising max_steps
    photo_repeats: int | None = None         # photo-sharing samples count this many times per epoch (default:
                                             # the recipe's; 1 = as in the data)
    remark_repeats: int | None = None        # first replies to a photo another speaker shared count this many
                                             # times per epoch (default: the recipe's; 1 = as in the data)
    caption_supervision: float = 1.0         # share of training captions L_t scores; the rest reach the LLM
                                             # only through L_v (benchmarks/when_end2end_helps.py; paper: 1)
    max_train_samples: int | None = None     # cap the training set (a seeded random subset)
    max_grad_norm: float = 1.0               # gradient clipping
    clip: str | None = None                  # joint (one norm over every parameter) | per_side (the dialogue side
                                             # and the image side each to max_grad_norm); default: joint end to
                                             # end, per_side for the pipeline (§3.1.4 trains them separately)
    checkpointing_steps: int = 100           # save a checkpoint every N optimizer steps
    checkpoints_total_limit: int = 3         # keep the last N checkpoints
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "latest"
    eval_every_epochs: int = 1               # dev evaluation (BLEU-2, FID) every N epochs; 0: never
    eval_samples: int = 64                   # dev samples per evaluation (photo-sharing ones first)
    early_stopping_patience: int | None = None  # default: the recipe's (4)
    skip_nonfinite: bool = False             # skip a step with a non-finite loss/gradient instead of stopping
    mixed_precision: str | None = None       # no | fp16 | bf16 (default: the recipe's on a GPU; no on a CPU)
    report_to: str | None = None             # accelerate trackers for losses, tau, lr and validation photos:
                                             # tensorboard | wandb | all | none (default: none; output_dir/logs)
    validation_steps: int = 100              # with report_to: every N optimizer steps, reply to a few dev
                                             # contexts and log the photos drawn
    validation_samples: int = 4              # dev photo-sharing contexts per validation
    gradient_checkpointing: bool | None = None  # recompute activations in backward (LLM layers, UNet blocks):
                                             # less memory, more compute (default: the recipe's)
    push_to_hub: bool = False                # after training, upload final/ to the Hub with its model card
    hub_model_id: str | None = None          # with push_to_hub: the repo ("name" or "owner/name"; default:
                                             # output_dir's folder name)
    progress: bool = True                    # tqdm progress bar on the main process
    log_ranks: bool = False                  # each process logs its batch ids and final weight hash (scale-out checks)
    extra: dict = field(default_factory=dict)  # free-form notes written to config.json
    allow_changed_config: bool = False       # resume even if settings that define the run differ from config.json

    def __post_init__(self):
        """Refuse a setting that would give a wrong run silently (ValueError naming the flag)."""
        if self.report_to == "none":             # --report-to none: off (e.g. over a --config that logs)
            self.report_to = None
        at_least = {"max_steps": 1, "max_epochs": 1, "micro_batch_size": 1, "grad_accum_steps": 1, "warmup_steps": 0,
                    "lr_schedule_steps": 1, "photo_repeats": 1, "remark_repeats": 1, "max_train_samples": 1, "checkpointing_steps": 1,
                    "checkpoints_total_limit": 1, "eval_every_epochs": 0, "eval_samples": 1,
                    "early_stopping_patience": 1, "weight_decay": 0, "alpha": 0, "tau_anneal_epochs": 0,
                    "validation_steps": 1, "validation_samples": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        for name in ("lr", "sd_lr", "tau_start", "tau_end", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.hub_model_id and not self.push_to_hub:
            raise ValueError("--hub-model-id names where --push-to-hub uploads; add --push-to-hub")
        sources = [f"--{k}" for k in ("llm", "perceptron", "sd") if getattr(self, k)]
        if sources and (self.preset == "toy" or self.init or self.random_init):
            raise ValueError(f"{', '.join(sources)} replace the colab/paper preset's pretrained models; they do not "
                             f"apply with --preset toy, --init or --random-init")
        if not 0 <= self.caption_supervision <= 1:
            raise ValueError(f"--caption-supervision must be in [0, 1], got {self.caption_supervision}")
        choices = {"mode": ("end2end", "pipeline"), "sd_caption_source": ("gold", "sampled"),
                   "pipeline_context": ("caption", "perceptron"), "dvtm_impl": ("dense", "sparse", "batched"),
                   "loss_reduction": ("mean", "sum"), "bridge": ("sentence", "positional"),
                   "lr_decay": ("constant", "cosine", None), "mixed_precision": ("no", "fp16", "bf16", None),
                   "report_to": ("tensorboard", "wandb", "all", None), "clip": ("joint", "per_side", None)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                shown = ", ".join(a for a in allowed if a)
                raise ValueError(f"--{name.replace('_', '-')} must be one of {shown}, got {getattr(self, name)!r}")


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/inf; the message names the step and the batch ids."""


class EpochShuffle(Sampler):
    """A permutation that depends only on (seed, epoch): resumable without saving RNG state."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def resolve(cfg: TrainConfig):
    """Return (recipe with the config's overrides applied, effective settings dict)."""
    from dataclasses import replace
    recipe = get_recipe(cfg.preset)
    over = {k: getattr(cfg, k) for k in ("micro_batch_size", "grad_accum_steps", "lr", "sd_lr", "weight_decay",
                                          "warmup_steps", "alpha", "tau_start", "tau_end", "tau_anneal_epochs",
                                          "max_epochs", "early_stopping_patience", "photo_repeats", "remark_repeats", "lr_decay",
                                          "mixed_precision")
            if getattr(cfg, k) is not None}
    if cfg.freeze_sd:
        over.update(text_encoder="freeze", unet="freeze")
    if cfg.gradient_checkpointing is not None:     # --gradient-checkpointing / --no-gradient-checkpointing
        over.update(llm_gradient_checkpointing=cfg.gradient_checkpointing,
                    unet_gradient_checkpointing=cfg.gradient_checkpointing)
    return replace(recipe, **over)


def clip_sides(cfg: TrainConfig) -> tuple[str, ...]:
    """Return the groups whose gradient norms are clipped each on its own: ("joint",) or ("dialogue", "image")."""
    rule = cfg.clip or ("per_side" if cfg.mode == "pipeline" else "joint")
    return ("dialogue", "image") if rule == "per_side" else ("joint",)


def mixed_precision_for(cfg: TrainConfig, recipe) -> str:
    """Return the autocast precision: --mixed-precision, else accelerate's own setting (`accelerate launch
    --mixed_precision bf16` or its config file, which reach us as ACCELERATE_MIXED_PRECISION), else the recipe's
    on a GPU and "no" on a CPU (the recipes are written for GPUs; bf16 autocast also runs on a CPU, fp16 does not)."""
    asked = cfg.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION") or None
    if asked is None:
        return recipe.mixed_precision if torch.cuda.is_available() else "no"
    if asked not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed precision {asked!r} (from accelerate's configuration): photochat trains in no, fp16 or bf16")
    if asked == "fp16" and not torch.cuda.is_available():
        raise ValueError("--mixed-precision fp16 needs a CUDA GPU (a CPU can run bf16 or no)")
    return asked


def _allow_new_precision(precision: str) -> None:
    """Let a second Trainer in one process (a notebook, the tests) use another mixed precision: accelerate keeps
    one process-wide state and refuses to change it, so a single process's state is reset first."""
    from accelerate.state import AcceleratorState, PartialState
    shared = AcceleratorState._shared_state
    if shared.get("_mixed_precision", precision) != precision and PartialState().num_processes == 1:
        AcceleratorState._reset_state()


def tracker_config(cfg: TrainConfig, recipe) -> dict:
    """Return the run's settings as trackers accept them (scalars only: None and tuples written as text)."""
    flat = {**{f"recipe.{k}": v for k, v in recipe.to_dict().items()}, **asdict(cfg)}
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def build_training_model(cfg: TrainConfig, recipe, device: str | torch.device = "cpu"):
    """Return the PhotoChatModel to train: from `cfg.init`, the shipped toy foundation, or the preset.

    With ``cfg.random_init`` the colab/paper architectures are created on `device` directly.
    """
    from photochat_lib.model.photochat_model import PhotoChatConfig, PhotoChatModel
    from photochat_lib.presets import build_model
    from photochat_lib.toy.foundation import shipped_toy_checkpoint
    mc = dict(mode=cfg.mode, alpha=recipe.alpha, dvtm_impl=cfg.dvtm_impl, loss_reduction=cfg.loss_reduction, bridge=cfg.bridge,
              sd_caption_source=cfg.sd_caption_source, pipeline_context=cfg.pipeline_context, preset=cfg.preset)
    if cfg.random_init and cfg.init:
        raise ValueError("give either --init or --random-init, not both")
    if cfg.smoke and not cfg.random_init:
        raise ValueError("--smoke shrinks the random-weight architectures; it needs --random-init")
    init = cfg.init or (shipped_toy_checkpoint() if cfg.preset == "toy" and not cfg.random_init else None)
    if init:
        return PhotoChatModel.from_pretrained(init, **mc)
    return build_model(cfg.preset, seed=cfg.seed, model_config=PhotoChatConfig(**mc),
                       random_weights=cfg.random_init, device=device, smoke=cfg.smoke,
                       llm=cfg.llm, perceptron=cfg.perceptron, sd=cfg.sd)


def read_split(cfg, split: str):
    """Return (dialogues, ReadReport) of a split with every photo decoded once, before any training step.

    A missing, truncated, corrupt or over-large photo is a DataError naming the dialogue and the path;
    under ``cfg.lenient`` its dialogue is counted and skipped instead, so a run can never be stuck on a
    bad batch (nor resume into one).
    """
    import warnings

    from photochat_lib.data.photochat import read_photochat
    from photochat_lib.data.schema import ReadReport
    report = ReadReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the start-up summary reports the skipped dialogues once
        dialogues = read_photochat(Path(cfg.data) / split, check_images=True, lenient=cfg.lenient, report=report)
    return dialogues, report


def make_loader(cfg, recipe, model, split: str, dialogues=None):
    """Return (dataset, DataLoader) over the split's (U, R) samples with the training collate step."""
    from photochat_lib.data.collate import PhotoChatDataset
    from photochat_lib.data.samples import make_samples
    from photochat_lib.presets import collator_for
    if dialogues is None:
        dialogues, _ = read_split(cfg, split)
    samples = make_samples(dialogues, photo_only=cfg.photo_only)
    if cfg.max_train_samples and len(samples) > cfg.max_train_samples:
        g = torch.Generator().manual_seed(cfg.seed)
        keep = sorted(torch.randperm(len(samples), generator=g)[: cfg.max_train_samples].tolist())
        samples = [samples[i] for i in keep]
    n_unique = len(samples)
    if recipe.photo_repeats > 1:                 # photo-sharing samples appear photo_repeats times per epoch
        samples = samples + [s for s in samples if s.shares_photo] * (recipe.photo_repeats - 1)
    if recipe.remark_repeats > 1:                # replies to another's photo appear remark_repeats times
        samples = samples + [s for s in samples[:n_unique] if s.answers_photo] * (recipe.remark_repeats - 1)
    collate = collator_for(model, cfg.preset, recipe)   # the recipe's max_text_length, max_context_images
    collate.caption_supervision = cfg.caption_supervision
    ds = PhotoChatDataset(samples, max_context_images=recipe.max_context_images)
    loader = DataLoader(ds, batch_size=recipe.micro_batch_size, sampler=EpochShuffle(len(ds), cfg.seed),
                        collate_fn=collate, generator=torch.Generator().manual_seed(cfg.seed))
    return ds, loader


class Trainer(RunFolder, DevEvaluation):
    """One training run: `Trainer(cfg).train()` returns the final trainer state.

    Shaped like diffusers' training scripts: `__init__` sets up (accelerator, model with the recipe applied,
    data, optimizer, schedules), `train` / `_run_epoch` step (bookkeeping only when ``sync_gradients``);
    checkpoints, logs and saved models are `run_folder.RunFolder`'s, dev evaluation, early stopping and
    validation photos `dev_eval.DevEvaluation`'s."""

    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import ProjectConfiguration

        from photochat_lib.training.finetune import apply_recipe, param_groups
        check_resume(cfg)                        # before any work: a changed run is refused, not silently mixed
        self.cfg, self.recipe = cfg, resolve(cfg)
        precision = mixed_precision_for(cfg, self.recipe)
        _allow_new_precision(precision)
        # cpu=True on a GPU-less machine: under `accelerate launch --multi_gpu --num_processes N` this
        # makes accelerate pick MULTI_CPU with the gloo backend (tests/test_train.py runs 2 processes).
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=self.recipe.grad_accum_steps,
                               mixed_precision=precision, log_with=cfg.report_to,
                               project_config=ProjectConfiguration(project_dir=cfg.output_dir,
                                                                   logging_dir=str(Path(cfg.output_dir) / "logs")),
                               kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        if self.acc.num_processes == 1 and os.environ.get("MASTER_ADDR") and "WORLD_SIZE" not in os.environ:
            self.acc.print("[train] warning: accelerate launch was asked for several processes, but this run is one "
                           "process (its simple launcher started one): add --multi_cpu on a CPU or --multi_gpu on GPUs")
        torch.manual_seed(cfg.seed)
        model = build_training_model(cfg, self.recipe, self.acc.device)
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        self.trainable = apply_recipe(model, self.recipe, weight_dtype)
        dialogues, train_report = read_split(cfg, "train")       # every photo checked before step 1
        self.reports = {"train": train_report}
        self.dev = None                           # dev, read and checked once: evaluated every epoch, validated
        if (cfg.eval_every_epochs or cfg.report_to) and (Path(cfg.data) / "dev").exists():
            self.dev, self.reports["dev"] = read_split(cfg, "dev")  # its photos too: not a crash after epoch 1
        self.train_ds, loader = make_loader(cfg, self.recipe, model, "train", dialogues)
        self.validation = []                      # dev contexts whose replies are drawn for the trackers
        if cfg.report_to and self.dev is not None:
            from photochat_lib.data.samples import make_samples
            self.validation = [s for s in make_samples(self.dev) if s.shares_photo][: cfg.validation_samples]
        unique = list({s.id: s for s in self.train_ds.samples}.values())
        self.cuts = loader.collate_fn.cut_report(unique)   # what the recipe's limits cut (a too-long response: DataError)
        # §3.1.4: the pipeline "trains them separately": its dialogue side (LLM + perceptron) and its image
        # side (SD) each get their own gradient clipping, lr schedule and early stopping. One AdamW holds
        # both sides' groups; AdamW updates each parameter from its own gradient and moments only, so this
        # is the same as two optimizers (and keeps fp16 loss scaling to one scaler step per update).
        groups = param_groups(model, self.recipe.weight_decay, self.recipe.lr, self.recipe.sd_lr)
        self.sides = ("dialogue", "image") if cfg.mode == "pipeline" else ("joint",)
        # gradient clipping is its own choice (--clip), so the study's two arms can clip alike and differ only in
        # whether L_v's gradient reaches the LLM (early on the LLM's norm is ~25 and SD's ~0.5: a joint clip
        # scales SD's steps by ~1/25 where the pipeline's per-side clip does not)
        self.clip_sides = clip_sides(cfg)
        self.side_params = {side: [p for g in groups if side in ("joint", g["side"]) for p in g["params"]]
                            for side in self.clip_sides}
        if len(self.clip_sides) > 1 and self.acc.distributed_type.value in ("FSDP", "DEEPSPEED"):
            raise ValueError("the pipeline clips its two sides separately, which needs plain DDP (or one "
                             "process); FSDP and DeepSpeed shard the gradients")
        opt = torch.optim.AdamW(groups, lr=self.recipe.lr)
        warm = max(1, self.recipe.warmup_steps)
        self.state = {"global_step": 0, "epoch": 0, "batches_done": 0, "best": {},
                      "bad_epochs": {side: 0 for side in self.sides}, "stopped_sides": [],
                      "history": [], "stopped": None}

        # Kept by hand, not transformers.get_scheduler: its warm-up starts at lr 0 (this one at lr/warm-up, which
        # every run's first steps depend on), the pipeline stops each side's lr on its own early stopping, and
        # the decay's end (lr_schedule_steps) is known only when train() starts, after accelerate.prepare. The
        # cosine is the one of transformers' cosine_with_min_lr schedule at min_lr_rate 0.1.
        def schedule(side: str):                    # linear warm-up, then the recipe's decay; 0 once stopped
            return lambda s: 0.0 if side in self.state["stopped_sides"] else self._lr_factor(s, warm)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [schedule(g["side"]) for g in groups])
        self.model, self.opt, self.loader, self.sched = self.acc.prepare(model, opt, loader, sched)
        self.steps_per_epoch = math.ceil(len(self.loader) / self.recipe.grad_accum_steps)
        self.tau = TauScheduler(steps_per_epoch=self.steps_per_epoch, tau_start=self.recipe.tau_start,
                                tau_end=self.recipe.tau_end, anneal_epochs=self.recipe.tau_anneal_epochs)
        self.out = Path(cfg.output_dir)
        self._interrupted = False
        self.total_steps = None                  # where a decaying lr ends: set by train() (lr_schedule_steps)

    def _lr_factor(self, step: int, warm: int) -> float:
        """Return the lr multiplier at an optimizer step: linear warm-up, then constant (the paper names no
        decay) or, with recipe.lr_decay == "cosine", a cosine down to 10 % at the run's last step."""
        if step < warm:
            return (step + 1) / warm
        if self.recipe.lr_decay == "constant" or not self.total_steps:
            return 1.0
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, self.total_steps - warm))))

    @property
    def max_steps(self) -> int:
        """The optimizer step training stops at: --max-steps, else the recipe's, else max_epochs' worth."""
        return self.cfg.max_steps or self.recipe.max_steps or self.recipe.max_epochs * self.steps_per_epoch

    def summary(self) -> str:
        """Return the start-up lines the CLI prints: data (and what the image check skipped), batch, steps,
        trainable parameters, device and where the run writes."""
        r, ds = self.recipe, self.train_ds
        unique = {s.id: s for s in ds.samples}.values()
        n_photo = sum(s.shares_photo for s in unique)
        batch = r.micro_batch_size * r.grad_accum_steps * self.acc.num_processes
        trainable = sum(p.numel() for p in self.unwrapped.parameters() if p.requires_grad)
        repeats = f", each repeated {r.photo_repeats}x: {len(ds)} per epoch" if r.photo_repeats > 1 else ""
        lines = [f"[train] {self.cfg.mode} on {self.cfg.data}: {len(unique)} training samples "
                 f"({n_photo} share a photo{repeats})"]
        for split, report in self.reports.items():
            checked = f"[train] {split}: {report.read} dialogues, every photo decoded"
            lines.append(checked + (f"; skipped {report.summary().split('skipped ', 1)[1]} (--lenient)"
                                    if report.skipped else ""))
        cut = (f"cut {self.cuts['samples']} samples ({self.cuts['turns']} oldest turns, {self.cuts['photos']} context "
               f"photos dropped)" if self.cuts["samples"] else "nothing cut")
        lines.append(f"[train] limits (recipe): {r.max_text_length} tokens and {r.max_context_images} context photos "
                     f"per sample; {cut}")
        lines += [f"[train] batch {batch} = {r.micro_batch_size} per step x {r.grad_accum_steps} accumulated x "
                  f"{self.acc.num_processes} processes; {self.max_steps} optimizer steps "
                  f"({self.steps_per_epoch} per epoch), lr {r.lr:g}",
                  f"[train] {trainable:,} trainable parameters on {self.acc.device} "
                  f"(mixed precision: {self.acc.mixed_precision})"
                  + (f"; logging to {self.cfg.report_to} in {self.out / 'logs'}" if self.cfg.report_to else ""),
                  f"[train] writing to {self.out}: checkpoints every {self.cfg.checkpointing_steps} steps, "
                  f"losses.jsonl, final/"]
        return "\n".join(lines)

    @property
    def unwrapped(self):
        """The PhotoChatModel without accelerate's wrappers."""
        return self.acc.unwrap_model(self.model)

    # ----- the loop -----
    def _seed_micro_step(self, micro_step: int) -> torch.Generator:
        s = (self.cfg.seed * 1_000_003 + self.acc.process_index * 7_919 + micro_step) % (2 ** 63)
        torch.manual_seed(s)                                                   # dropout
        return torch.Generator(device=self.acc.device).manual_seed(s)           # Gumbel + diffusion noise

    def _on_sigint(self, signum, frame):
        """Ctrl-C (SIGINT) or a scheduler's SIGTERM: finish this step, save a checkpoint, stop; twice: stop now."""
        if self._interrupted:                      # second signal: stop now
            raise KeyboardInterrupt
        self._interrupted = True
        what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        self.acc.print(f"\n[train] {what}: saving a checkpoint after this step (press Ctrl-C again to abort)")

    def train(self) -> dict:
        """Run the training loop; returns the trainer state (steps, history, why it stopped).

        The main process holds output_dir's lock throughout (`utils.folder_lock`): a second run into the same
        folder stops with one line naming this one, before it writes anything."""
        if not self.acc.is_main_process:
            return self._train()
        with hold_folder(self.out, f"photochat train ({self.cfg.mode})"):
            left = clean_leftovers(self.out)
            if left:
                self.acc.print(f"[train] removed what an interrupted save left in {self.out}: {', '.join(left)}")
            return self._train()

    def _train(self) -> dict:
        cfg, r = self.cfg, self.recipe
        self.out.mkdir(parents=True, exist_ok=True)
        if self.acc.is_main_process:
            write_json(self.out / "config.json", {"train": asdict(cfg), "recipe": r.to_dict(),
                                                     "trainable": self.trainable, "data": data_identity(cfg.data)})
        if cfg.resume_from_checkpoint:
            self.load_checkpoint(cfg.resume_from_checkpoint)
            self._trim_log()
        if cfg.report_to:
            self.acc.init_trackers("photochat", config=tracker_config(cfg, r))
        max_steps = self.max_steps
        self.total_steps = cfg.lr_schedule_steps or max_steps   # where a decaying lr schedule ends
        old = {sig: signal.signal(sig, self._on_sigint) for sig in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
        bar = progress_bar(total=max_steps, initial=self.state["global_step"], disable=not (cfg.progress and
                   self.acc.is_local_main_process), desc=f"train {cfg.mode}")
        try:
            while self.state["global_step"] < max_steps and self.state["epoch"] < r.max_epochs:
                if self._run_epoch(max_steps, bar):
                    break
        finally:
            bar.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)
        if self.state["stopped"] is None and self.state["global_step"] >= max_steps:
            self.state["stopped"] = "max_steps"          # resumed at its last step: nothing left to run
        if self.state["stopped"] != "interrupted":
            self.save_final()
        if cfg.report_to:
            self.acc.end_training()
        return self.state

    def _run_epoch(self, max_steps: int, bar) -> bool:
        """Run (the rest of) one epoch; return True when training must stop."""
        cfg, st = self.cfg, self.state
        self.loader.set_epoch(st["epoch"])
        loader = self.acc.skip_first_batches(self.loader, st["batches_done"]) if st["batches_done"] else self.loader
        self.model.train()
        sums, n_micro = {"loss": 0.0, "text_loss": 0.0, "image_loss": 0.0}, 0
        t_step = time.perf_counter()
        for batch in loader:
            micro = st["epoch"] * len(self.loader) + st["batches_done"]
            gen = self._seed_micro_step(micro)
            tau = self.tau(st["global_step"])
            with self.acc.accumulate(self.model):
                out = self.model(batch, tau=tau, generator=gen)
                finite = bool(torch.isfinite(out.loss))
                if not finite:
                    self._nonfinite("loss", batch)
                else:
                    self.acc.backward(out.loss)
                if self.acc.sync_gradients:
                    norm = self._clip_gradients()
                    if self.acc.mixed_precision == "no" and not torch.isfinite(torch.as_tensor(norm)):
                        self._nonfinite("gradient", batch)
                        self.opt.zero_grad(set_to_none=True)
                    else:
                        self.opt.step()
                        self.sched.step()
                    self.opt.zero_grad(set_to_none=True)
            st["batches_done"] += 1
            if cfg.log_ranks:
                with open(self.out / f"batches.rank{self.acc.process_index}.jsonl", "a") as f:
                    f.write(json.dumps({"micro": micro, "ids": batch["ids"]}) + "\n")
            if finite:
                for k in sums:
                    sums[k] += float(getattr(out, k).detach())
                n_micro += 1
            if not self.acc.sync_gradients:
                continue
            st["global_step"] += 1
            now = time.perf_counter()
            rec = {"step": st["global_step"], "epoch": st["epoch"], "tau": tau, "lr": self.sched.get_last_lr()[0],
                   **{k: v / max(1, n_micro) for k, v in sums.items()},
                   "seconds": round(now - t_step, 4)}                 # wall time of this optimizer step
            t_step = now
            self._log(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", Lv=f"{rec['image_loss']:.3f}", tau=f"{tau:.3f}")
            sums, n_micro = {k: 0.0 for k in sums}, 0
            if self.validation and st["global_step"] % cfg.validation_steps == 0:
                self._log_validation()
            if st["global_step"] % cfg.checkpointing_steps == 0:
                self.save_checkpoint()
            if self._interrupted:
                self.save_checkpoint()
                st["stopped"] = "interrupted"
                return True
            if st["global_step"] >= max_steps:
                st["stopped"] = "max_steps"
                return True
        st["epoch"] += 1
        st["batches_done"] = 0
        return self._end_of_epoch()

    def _clip_gradients(self) -> torch.Tensor:
        """Clip the gradient norm to max_grad_norm, once over everything (joint) or per side (--clip);
        return the largest pre-clip norm."""
        if len(self.clip_sides) == 1:
            return torch.as_tensor(self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm))
        self.acc.unscale_gradients()                   # fp16: once, before both clips (a no-op on fp32)
        norms = [torch.nn.utils.clip_grad_norm_(self.side_params[side], self.cfg.max_grad_norm)
                 for side in self.clip_sides]
        return torch.stack([n.float() for n in norms]).max()

    def _nonfinite(self, what: str, batch) -> None:
        msg = (f"non-finite {what} at step {self.state['global_step'] + 1} (epoch {self.state['epoch']}), "
               f"batch ids {batch['ids']}")
        if not self.cfg.skip_nonfinite:
            raise NonFiniteError(msg + "; rerun with --skip-nonfinite to skip such steps")
        self.acc.print(f"[train] {msg}: step skipped")
        self._log({"step": self.state["global_step"] + 1, "skipped": what, "ids": batch["ids"]})

def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


# diffusers' training scripts (train_text_to_image.py …) name these flags so; `train` takes them as aliases
DIFFUSERS_FLAGS = {"--gradient_accumulation_steps": "grad_accum_steps", "--train_batch_size": "micro_batch_size",
                   "--learning_rate": "lr", "--max_train_steps": "max_steps", "--num_train_epochs": "max_epochs",
                   "--lr_scheduler": "lr_decay", "--lr_warmup_steps": "warmup_steps"}


def register(subparsers) -> None:
    """Add `photochat train`."""
    import argparse
    import dataclasses

    from photochat_lib.utils.cliutil import add_dataclass_arguments
    p = subparsers.add_parser("train", help="jointly train the model (end2end) or the pipeline baseline",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(p, TrainConfig)
    for alias, dest in DIFFUSERS_FLAGS.items():        # diffusers' script names, hidden: they work as typed
        target = next(a for a in p._actions if a.dest == dest)
        p.add_argument(alias, dest=dest, type=target.type, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.config_fields = dataclasses.fields(TrainConfig)   # what a --config file may set (extra included)
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a YAML or JSON file of these settings (a run's config.json works as it is); flags given "
                        "here override it")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even if output_dir already holds a run: deletes the run's own files (checkpoints, "
                        "final/, best/, logs, config.json, trainer_state.json) and refuses if anything else is there")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    """`photochat train`: check everything, print what will run, train, say where the model went.

    Errors a user can fix (a bad flag, a changed resume, bad data) are ValueErrors: `cli.main` prints them
    in one line (exit 2); ``--debug`` shows the traceback.
    """
    from photochat_lib.utils.cliutil import dataclass_from_args
    from photochat_lib.utils.doctor import require_supported_gpu
    cfg = dataclass_from_args(TrainConfig, args)       # range checks: a nonsense flag stops here
    require_supported_gpu()                            # a V100 under a CUDA 13 torch: the fix, not a kernel error
    out = Path(cfg.output_dir)
    if os.environ.get("RANK", "0") != "0":             # accelerate launch: rank 0 owns the folder
        return _run(cfg, args, out)
    with hold_folder(out, "photochat train"):          # held from here: --overwrite never clears another's run
        return _run(cfg, args, out)


def _run(cfg: TrainConfig, args, out: Path) -> int:
    main = os.environ.get("RANK", "0") == "0"          # under `accelerate launch` only the main process speaks
    say = print if main else (lambda *a, **k: None)
    if not cfg.resume_from_checkpoint and (run_checkpoints(out) or (out / "losses.jsonl").exists()):
        if not args.overwrite:
            raise ValueError(f"{out} already holds a run; use --resume-from-checkpoint latest or --overwrite")
        removed = clear_run(out)
        say(f"[train] --overwrite: removed {len(removed)} entries of the earlier run in {out}")
    trainer = Trainer(cfg)                             # refuses a changed resume (check_resume) before any work
    say(trainer.summary())
    try:
        state = trainer.train()
    except NonFiniteError as e:
        say(f"[train] stopped: {e}")
        return 3
    stopped = state["stopped"] or "max_epochs"
    if stopped == "interrupted":
        say(f"[train] interrupted at step {state['global_step']}; resume with --resume-from-checkpoint latest")
        return 130
    say(f"[train] done: {state['global_step']} steps, stopped: {stopped}")
    say(f"[train] final model: {out / 'final'}  (photochat chat --model {shlex.quote(str(out / 'final'))})")
    if cfg.push_to_hub and main:                       # as diffusers' scripts: the final model, with its card
        from photochat_lib.model.photochat_model import PhotoChatModel
        repo = cfg.hub_model_id or out.resolve().name
        PhotoChatModel.from_pretrained(out / "final").push_to_hub(repo, run_dir=out)
        say(f"[train] pushed {out / 'final'} to the Hub as {repo} (with its model card)")
    return 0

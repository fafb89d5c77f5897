"""The trainer: resumable to the bit after SIGKILL, Ctrl-C saves, non-finite steps caught, recipes
(freeze / LoRA) applied, and two gloo processes that see different data and end identical."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from photochat_lib.data.toy_world import write_toy_dataset
from photochat_lib.training.train import NonFiniteError, TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--max-train-samples", "32", "--micro-batch-size", "4", "--eval-every-epochs", "0", "--no-progress",
          "--warmup-steps", "2"]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    write_toy_dataset(out, seed=0, n_train=40, n_dev=8, n_test=8)
    return out


def photochat(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "photochat_lib.apps.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run / "losses.jsonl").read_text().splitlines() if ln]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def wait_for_step(run: Path, proc, step: int, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if (run / "losses.jsonl").exists() and max(losses(run), default=0) >= step:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


@pytest.mark.slow
def test_sigkill_then_resume_replays_the_same_losses(toy_data, tmp_path):
    steps = ["--max-steps", "6", "--checkpointing-steps", "2"]
    ref = tmp_path / "ref"
    p = photochat("train", "--data", toy_data, "--output-dir", ref, *steps, *COMMON)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    run = tmp_path / "killed"
    p = photochat("train", "--data", toy_data, "--output-dir", run, *steps, *COMMON)
    wait_for_step(run, p, 3)          # checkpoint-2 exists, step 3 done: then kill without warning
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (run / "checkpoint-2").is_dir() and not (run / "final").exists()
    # a checkpoint being written when the kill came stays a .tmp-* folder; every named one is complete
    assert all((c / "trainer_state.json").exists() for c in run.glob("checkpoint-*"))
    # issue 22's probes: a kill mid-write tears the log's last line and leaves a save's temp folder; a user's
    # folder that only starts like a checkpoint must survive the run's rotation
    with open(run / "losses.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    (run / ".final.tmp.abc123").mkdir()
    (run / "checkpoint-my-1").mkdir()
    p = photochat("train", "--data", toy_data, "--output-dir", run, *steps, *COMMON, "--resume-from-checkpoint",
                  "latest", "--checkpoints-total-limit", "1")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert "resumed from" in out and "dropped a torn last line" in out and ".final.tmp.abc123" in out
    a, b = losses(ref), losses(run)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert a == b, "per-step losses must replay exactly after SIGKILL + resume"
    assert (run / "final" / "photochat.json").exists()
    assert sorted(c.name for c in run.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-my-1"]
    assert not (run / ".final.tmp.abc123").exists()
    p = photochat("train", "--data", toy_data, "--output-dir", run, *steps, *COMMON, "--resume-from-checkpoint", "latest")
    out, _ = p.communicate(timeout=600)                       # resumed at its last step: says so, trains nothing
    assert p.returncode == 0 and "stopped: max_steps" in out and losses(run) == a, out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_a_checkpoint_first(toy_data, tmp_path, sig):
    """SIGTERM (a scheduler's stop) saves like Ctrl-C; it once stopped silently without a checkpoint."""
    run = tmp_path / "int"
    p = photochat("train", "--data", toy_data, "--output-dir", run, "--max-steps", "50",
                  "--checkpointing-steps", "1000", *COMMON)
    wait_for_step(run, p, 2)
    p.send_signal(sig)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 130, out
    saved = [int(c.name.split("-")[1]) for c in run.glob("checkpoint-*")]
    assert len(saved) == 1 and saved[0] == max(losses(run))
    state = json.loads((run / f"checkpoint-{saved[0]}" / "trainer_state.json").read_text())
    assert state["global_step"] == saved[0]


def small_cfg(toy_data, out, **kw):
    return TrainConfig(data=str(toy_data), output_dir=str(out), max_train_samples=16, micro_batch_size=4,
                       eval_every_epochs=0, progress=False, warmup_steps=1, **kw)


def poison_step_2(trainer, monkeypatch, value: float) -> None:
    """Make the loss of optimizer step 2 non-finite (multiplied by nan or inf)."""
    model = trainer.unwrapped
    real = model.forward

    def poisoned(batch, tau=1.0, generator=None):
        out = real(batch, tau=tau, generator=generator)
        if trainer.state["global_step"] == 1:
            out.loss = out.loss * value
        return out

    monkeypatch.setattr(model, "forward", poisoned)


def test_nonfinite_loss_stops_with_step_and_batch_ids(toy_data, tmp_path, monkeypatch):
    tr = Trainer(small_cfg(toy_data, tmp_path / "nan", max_steps=3))
    poison_step_2(tr, monkeypatch, float("nan"))
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 2 .*batch ids \['train-"):
        tr.train()


def test_skip_nonfinite_skips_the_step_and_goes_on(toy_data, tmp_path, monkeypatch):
    tr = Trainer(small_cfg(toy_data, tmp_path / "skip", max_steps=3, skip_nonfinite=True))
    poison_step_2(tr, monkeypatch, float("inf"))
    state = tr.train()
    rows = [json.loads(ln) for ln in (tmp_path / "skip" / "losses.jsonl").read_text().splitlines()]
    assert state["global_step"] == 3 and any(r.get("skipped") == "loss" for r in rows)


def test_lora_recipe_trains_only_adapters_qformer_and_new_rows(toy_data, tmp_path, monkeypatch):
    """The paper's split (LLM and UNet LoRA, ViT / text encoder frozen) applied to the toy model."""
    from dataclasses import replace

    import photochat_lib.training.train as T
    from photochat_lib.recipe import get_recipe
    from photochat_lib.data.tokens import SPECIAL_TOKENS
    paperlike = replace(get_recipe("paper"), preset="toy", mixed_precision="no", micro_batch_size=4,
                        grad_accum_steps=1, llm_gradient_checkpointing=False, unet_gradient_checkpointing=False,
                        lr=1e-2, warmup_steps=1, photo_repeats=8)   # photos in the 2 steps' batches, so L_v trains
                                                                    # the UNet's adapters
    monkeypatch.setattr(T, "get_recipe", lambda preset: paperlike)
    tr = Trainer(small_cfg(toy_data, tmp_path / "lora", max_steps=2))
    model = tr.unwrapped
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert tr.trainable["vision"] == 0 and tr.trainable["text_encoder"] == 0
    assert 0 < tr.trainable["unet"] < sum(p.numel() for n, p in model.image_generator.unet.named_parameters()
                                          if "lora_" not in n)
    tr.train()
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert any("lora_" in n and "llm" in n for n in changed) and any("lora_" in n and "unet" in n for n in changed)
    assert any(n.startswith("perceptron.qformer") for n in changed)
    assert not any(n.startswith(("perceptron.vision_model", "image_generator.text_encoder", "image_generator.vae"))
                   for n in changed)
    # the new tokens' rows train as small (3, D) tables; the frozen embedding / LM head never move
    assert {"llm.model.embed_tokens.trainable_tokens_delta.default",
            "llm.lm_head.trainable_tokens_delta.default"} <= changed
    n_lora = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n)
    assert tr.trainable["llm"] == n_lora + 2 * len(SPECIAL_TOKENS) * model.llm.config.hidden_size  # no whole tables
    # the saved final model has the adapters merged and loads through the ordinary loader
    from photochat_lib.model.photochat_model import PhotoChatModel
    loaded = PhotoChatModel.from_pretrained(tmp_path / "lora" / "final")
    assert not any("lora_" in n or "trainable_tokens_" in n for n, _ in loaded.named_parameters())
    special = model.tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    for table, saved in (("llm.model.embed_tokens.base_layer.weight", loaded.llm.get_input_embeddings().weight),
                         ("llm.lm_head.base_layer.weight", loaded.llm.get_output_embeddings().weight)):
        rows = (before[table] != saved.detach()).any(dim=1).nonzero().flatten().tolist()
        assert rows and set(rows) <= set(special), "only the [IMG], [/IMG], <image> rows may move"
    assert any("lora_" in n for n, _ in model.named_parameters()), "saving must not merge the live model"


@pytest.mark.slow
def test_two_gloo_processes_see_different_data_and_end_identical(toy_data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "photochat_lib.apps.cli", "train", "--data", str(toy_data), "--output-dir", str(run),
           "--max-steps", "3", "--checkpointing-steps", "2", "--log-ranks", *COMMON,
           "--photo-repeats", "1", "--remark-repeats", "1"]   # with the toy recipe's repeats one sample id can
                                                               # fill two shards' slots
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ids = [[i for ln in (run / f"batches.rank{r}.jsonl").read_text().splitlines() for i in json.loads(ln)["ids"]]
           for r in (0, 1)]
    assert len(ids[0]) == len(ids[1]) == 12 and not set(ids[0]) & set(ids[1])
    h0, h1 = ((run / f"weights.rank{r}.sha256").read_text() for r in (0, 1))
    assert h0 == h1
    assert (run / "checkpoint-2" / "random_states_1.pkl").exists()
    # issue 21's probe: every [train] line printed once per process; only the main process speaks now
    assert res.stdout.count("[train] done:") == 1 and res.stdout.count("[train] final model:") == 1, res.stdout[-3000:]


def test_a_launch_that_got_fewer_processes_than_it_asked_for_says_so(toy_data, tmp_path):
    """Issue 21's probe: `accelerate launch --num_processes 2 --cpu` ran one process with no warning."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "photochat_lib.apps.cli", "train", "--data",
           str(toy_data), "--output-dir", str(tmp_path / "one"), "--max-steps", "1", *COMMON]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("this run is one process") == 1 and "--multi_cpu" in res.stdout, res.stdout[-3000:]


def test_early_stopping_after_patience_epochs_without_better_bleu2_or_fid(toy_data, tmp_path, monkeypatch):
    """Dev BLEU-2 / FID improve for two epochs, then stall: training stops `patience` epochs later."""
    import photochat_lib.evaluation.evaluate as E
    scores = iter([(1.0, 90.0), (2.0, 80.0), (1.5, 85.0), (2.0, 80.0), (1.9, 81.0), (0.5, 99.0), (9.0, 1.0)])

    def fake_eval(model, data, split, **kw):
        b2, fid = next(scores)
        return {"metrics": {"BLEU-2": b2, "FID": fid}, "records": []}

    monkeypatch.setattr(E, "evaluate_model", fake_eval)
    cfg = small_cfg(toy_data, tmp_path / "es", max_steps=None, early_stopping_patience=3, max_epochs=20)
    cfg.eval_every_epochs = 1
    cfg.max_train_samples, cfg.photo_repeats = 4, 1  # one step per epoch
    state = Trainer(cfg).train()
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4, 5]
    assert state["best"] == {"BLEU-2": 2.0, "FID": 80.0} and state["bad_epochs"] == {"joint": 3}
    assert state["stopped"].startswith("early stopping")
    assert (tmp_path / "es" / "best" / "photochat.json").exists() and state["global_step"] == 5


def test_pipeline_sides_stop_early_on_their_own_metric(toy_data, tmp_path, monkeypatch):
    """§3.1.4 "trains them separately": the pipeline's dialogue side stops when dev BLEU-2 stalls, its image
    side when FID stalls; a stopped side's weights no longer move; best/ holds each side at its best."""
    import photochat_lib.evaluation.evaluate as E
    scores = iter([(1.0, 90.0), (2.0, 80.0), (1.0, 70.0), (1.5, 60.0), (1.5, 65.0), (1.5, 66.0), (1.5, 67.0)])
    monkeypatch.setattr(E, "evaluate_model", lambda *a, **kw: dict(zip(("metrics", "records"),
                        ({"BLEU-2": (v := next(scores))[0], "FID": v[1]}, []))))
    cfg = small_cfg(toy_data, tmp_path / "pipe", mode="pipeline", max_steps=None, early_stopping_patience=2,
                    max_epochs=20)
    cfg.eval_every_epochs, cfg.max_train_samples, cfg.photo_only = 1, 4, True  # one step per epoch, with photos
    trainer = Trainer(cfg)
    llm_at, sd_at = {}, {}
    real_end = trainer._end_of_epoch

    def end_of_epoch():
        stop = real_end()
        model = trainer.unwrapped
        llm_at[trainer.state["epoch"]] = model.llm.lm_head.weight.detach().clone()
        sd_at[trainer.state["epoch"]] = next(model.image_generator.unet.parameters()).detach().clone()
        return stop

    trainer._end_of_epoch = end_of_epoch
    state = trainer.train()
    assert state["stopped_sides"] == ["dialogue", "image"] and state["epoch"] == 6
    assert state["stopped"].startswith("early stopping: no better dev BLEU-2 or FID")
    assert not torch.equal(llm_at[3], llm_at[4])                                  # dialogue side stopped
    assert torch.equal(llm_at[4], llm_at[5]) and torch.equal(llm_at[5], llm_at[6])  # after epoch 4 ...
    assert not torch.equal(sd_at[4], sd_at[5]) and not torch.equal(sd_at[5], sd_at[6])  # ... image side went on
    best = tmp_path / "pipe" / "best"
    assert (best / "photochat.json").exists() and (best / "llm").is_dir() and (best / "sd" / "unet").is_dir()


def test_pipeline_clips_each_side_on_its_own(toy_data, tmp_path):
    """One global clip lets SD's large gradient shrink the LLM's update; the pipeline clips each side alone."""
    for mode in ("pipeline", "end2end"):
        trainer = Trainer(small_cfg(toy_data, tmp_path / mode, mode=mode, max_steps=1, max_grad_norm=1.0))
        model = trainer.unwrapped
        for p in model.parameters():
            p.grad = None
        llm = [p for p in model.llm.parameters() if p.requires_grad]
        sd = [p for p in model.image_generator.unet.parameters() if p.requires_grad]
        for p in llm:
            p.grad = torch.full_like(p, 1e-4)
        for p in sd:
            p.grad = torch.full_like(p, 1.0)                   # a huge image-side gradient
        norm = lambda ps: float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ps)))
        before = norm(llm)
        assert before < 1.0 < norm(sd)
        trainer._clip_gradients()
        assert norm(sd) == pytest.approx(1.0, rel=1e-4)
        if mode == "pipeline":
            assert norm(llm) == pytest.approx(before, rel=1e-6)  # untouched: under its own limit
        else:
            assert norm(llm) < before / 100                      # scaled down by SD's norm


# ------------------------------------------------------------------ the paper recipe on random config weights
def test_paper_recipe_trains_on_random_config_weights(toy_data, tmp_path, monkeypatch):
    """`--preset paper --random-init --smoke`: the shipped configs' architectures at tiny widths, the
    paper's recipe (LoRA on LLM and UNet, frozen ViT, 512² SD targets, 77-token captions), one step."""
    cfg = TrainConfig(data=str(toy_data), output_dir=str(tmp_path / "paper"), preset="paper", random_init=True,
                      smoke=True,
                      photo_only=True, max_train_samples=4, micro_batch_size=2, grad_accum_steps=2,
                      max_steps=1, eval_every_epochs=0, progress=False)
    tr = Trainer(cfg)
    model = tr.unwrapped
    assert model.llm.get_input_embeddings().weight.shape[0] == 32000 + 3           # Llama-2 + [IMG] [/IMG] <image>
    assert model.image_generator.vocab_size == 49408 and model.image_generator.max_length == 77
    assert tr.trainable["vision"] == tr.trainable["text_encoder"] == 0 and tr.trainable["qformer"] > 0
    assert any("lora_" in n for n, _ in model.llm.named_parameters())
    batch = next(iter(tr.loader))
    assert batch["target_pixel_values"].shape[1:] == (3, 512, 512) and batch["sd_input_ids"].shape[1] == 77
    assert batch["context_pixel_values"].shape[1:] == (3, 224, 224)
    state = tr.train()
    rows = [json.loads(ln) for ln in (tmp_path / "paper" / "losses.jsonl").read_text().splitlines()]
    assert state["global_step"] == 1 and math.isfinite(rows[0]["loss"]) and rows[0]["image_loss"] > 0
    assert rows[0]["seconds"] > 0


def test_trained_parts_get_fp32_master_weights_when_loaded_in_fp16():
    """The colab/paper presets load every component in fp16; under fp16 mixed precision the parts that
    train must become fp32 (GradScaler refuses fp16 gradients) and the frozen ones stay fp16."""
    from photochat_lib.training.finetune import apply_recipe, param_groups
    from photochat_lib.presets import build_model
    from photochat_lib.recipe import get_recipe
    model = build_model("toy").half()
    apply_recipe(model, get_recipe("paper"), torch.float16)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert any(n.startswith("perceptron.qformer") for n in trainable)
    assert model.perceptron.vision_model.embeddings.patch_embedding.weight.dtype == torch.float16
    assert model.llm.model.layers[0].mlp.up_proj.weight.dtype == torch.float16
    opt = torch.optim.AdamW(param_groups(model, 0.01, 1e-3))
    for p in trainable.values():
        p.grad = torch.ones_like(p)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    scaler.scale(torch.ones(()))                          # the scale exists once a loss was scaled
    scaler.unscale_(opt)                                  # raises "Attempting to unscale FP16 gradients" if any
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in trainable.values())


def test_sd_lr_gives_the_unet_and_text_encoder_their_own_learning_rate():
    """recipe.sd_lr: the image generator's UNet and text encoder learn at their own lr (toy: 1e-5)."""
    from photochat_lib.training.finetune import param_groups
    from photochat_lib.presets import build_model
    model = build_model("toy")
    gen = model.image_generator
    sd_ids = {id(p) for m in (gen.unet, gen.text_encoder) for p in m.parameters()}
    groups = param_groups(model, 0.01, lr=1e-3, sd_lr=1e-5)
    for g in groups:
        assert {id(p) in sd_ids for p in g["params"]} == {g["lr"] == 1e-5}, "one lr per group, by component"
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == n
    assert {g["lr"] for g in param_groups(model, 0.01, lr=1e-3)} == {1e-3}       # paper: one lr for all


def test_random_config_builds_draw_blip2_for_training_not_loading():
    """transformers' BLIP-2 init is for loading (zero queries; with LayerNorm eps 1e-12 they gave
    gradients of ~1e35): random builds re-draw it with `init_from_scratch`."""
    from photochat_lib.presets import build_config_components
    _, _, perceptron, _ = build_config_components("paper", smoke=True)
    q = perceptron.query_tokens.detach()
    assert q.shape[1] == 32 and 0.8 < float(q.std()) < 1.2                     # N(0, 1), not zeros
    vit = perceptron.vision_model.encoder.layers[0].mlp.fc1.weight.detach()
    assert 0.01 < float(vit.std()) < 0.03                                      # N(0, 0.02²), not 1e-10


def test_chunked_training_follows_one_runs_cosine_schedule(toy_data, tmp_path):
    """lr_schedule_steps: a run trained in chunks of rising max_steps (notebook 06, the study's curves)
    logs the learning rates and losses of one uninterrupted run; without it each chunk decays to its end."""
    from photochat_lib.training.train import TrainConfig, Trainer
    common = dict(data=str(toy_data), seed=0, eval_every_epochs=0, max_train_samples=16, micro_batch_size=4,
                  warmup_steps=1, lr_decay="cosine", checkpointing_steps=10 ** 6, progress=False)

    def log(run):
        return [json.loads(ln) for ln in (run / "losses.jsonl").read_text().splitlines() if ln]

    Trainer(TrainConfig(output_dir=str(tmp_path / "one"), max_steps=4, **common)).train()
    chunked = Trainer(TrainConfig(output_dir=str(tmp_path / "chunks"), max_steps=2, lr_schedule_steps=4, **common))
    chunked.train()
    chunked.cfg.max_steps = 4
    chunked.train()
    one, chunks = log(tmp_path / "one"), log(tmp_path / "chunks")
    assert [r["step"] for r in one] == [r["step"] for r in chunks] == [1, 2, 3, 4]
    assert [r["lr"] for r in one] == [r["lr"] for r in chunks]
    assert [r["loss"] for r in one] == [r["loss"] for r in chunks]
    assert one[1]["lr"] > one[2]["lr"] > one[3]["lr"]              # it does decay after the warm-up
    naive = Trainer(TrainConfig(output_dir=str(tmp_path / "naive"), max_steps=2, **common))
    naive.train()
    assert log(tmp_path / "naive")[1]["lr"] < one[1]["lr"]         # a 2-step horizon ends its cosine early


def test_overwrite_deletes_only_a_runs_own_files(tmp_path):
    """`--overwrite` once ran shutil.rmtree(output_dir): with --output-dir . it deleted the user's data."""
    from photochat_lib.training.train import clear_run
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "trainer_state.json").write_text("{}")   # the marker save_checkpoint writes
    (run / "final").mkdir()
    for name in ("losses.jsonl", "config.json", "trainer_state.json", "batches.rank0.jsonl"):
        (run / name).write_text("{}")
    (run / "eval").mkdir()                       # `photochat evaluate --out run/eval`, as the README shows
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"eval, notes.txt.*move those away"):
        clear_run(run)
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoint-2").is_dir()   # nothing deleted
    (run / "notes.txt").unlink()
    (run / "eval").rmdir()
    assert set(clear_run(run)) == {"checkpoint-2", "final", "losses.jsonl", "config.json", "trainer_state.json",
                                   "batches.rank0.jsonl"}
    assert not any(run.iterdir())


def test_cli_overwrite_refuses_a_folder_with_user_files(tmp_path, toy_data):
    (tmp_path / "losses.jsonl").write_text("")   # an earlier run was here ...
    (tmp_path / "data.csv").write_text("keep")   # ... and so is the user's file
    p = photochat("train", "--data", toy_data, "--output-dir", tmp_path, "--overwrite", *COMMON)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 2 and "--overwrite deletes only a run's own files" in out and "data.csv" in out, out
    assert (tmp_path / "data.csv").read_text() == "keep" and (tmp_path / "losses.jsonl").exists()


@pytest.mark.parametrize("flags,message", [
    (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    (["--max-steps", "-1"], "--max-steps must be >= 1, got -1"),
    (["--checkpoints-total-limit", "0"], "--checkpoints-total-limit must be >= 1"),
    (["--checkpointing-steps", "0"], "--checkpointing-steps must be >= 1"),
    (["--alpha", "-1"], "--alpha must be >= 0"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--max-train-samples", "0"], "--max-train-samples must be >= 1"),
    (["--dvtm-impl", "foo"], "--dvtm-impl must be one of dense, sparse, batched, got 'foo'"),
    (["--lr", "0"], "--lr must be > 0"),
])
def test_nonsense_flags_stop_before_any_work_with_one_line(tmp_path, flags, message):
    """These were accepted (a run that trained nothing and exited 0, every checkpoint deleted, a crash at the
    first photo batch or after step 1); now each is one line and exit status 2, and nothing is written."""
    import contextlib
    import io

    from photochat_lib.apps.cli import main
    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        rc = main(["train", "--data", str(tmp_path / "none"), "--output-dir", str(tmp_path / "run"), *flags])
    assert rc == 2 and message in out.getvalue() and len(out.getvalue().splitlines()) == 1, out.getvalue()
    assert not (tmp_path / "run").exists()


def test_resuming_with_a_changed_run_is_refused_and_names_the_changes(toy_data, tmp_path):
    """Resuming with another --mode or --lr went on silently and rewrote config.json."""
    from photochat_lib.training.train import TrainConfig, Trainer, check_resume
    common = dict(data=str(toy_data), output_dir=str(tmp_path), seed=0, eval_every_epochs=0, max_train_samples=8,
                  micro_batch_size=4, max_steps=1, checkpointing_steps=1, progress=False)
    Trainer(TrainConfig(**common)).train()
    saved = (tmp_path / "config.json").read_text()
    check_resume(TrainConfig(**{**common, "max_steps": 2}, resume_from_checkpoint="latest"))   # more steps: fine
    with pytest.raises(ValueError, match=r"mode 'end2end' -> 'pipeline'; lr None -> 0.001\): pass --allow-changed"):
        Trainer(TrainConfig(**{**common, "max_steps": 2}, mode="pipeline", lr=1e-3, resume_from_checkpoint="latest"))
    assert (tmp_path / "config.json").read_text() == saved                 # nothing rewritten
    check_resume(TrainConfig(**common, mode="pipeline", resume_from_checkpoint="latest", allow_changed_config=True))
    p = photochat("train", "--data", toy_data, "--output-dir", tmp_path, "--max-steps", "2", "--max-train-samples", "8",
                  "--micro-batch-size", "4", "--eval-every-epochs", "0", "--no-progress", "--mode", "pipeline",
                  "--resume-from-checkpoint", "latest")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 2 and "mode 'end2end' -> 'pipeline'" in out, out


def test_resume_compares_what_the_data_is_not_how_it_was_spelled(toy_data, tmp_path, monkeypatch):
    """Issue 22's probe: a relative --data d given from another working directory silently trained steps 3-6 on
    other data; the same folder given once absolute and once relative was refused as "changed"."""
    import shutil
    from photochat_lib.training.train import check_resume
    run = tmp_path / "run"
    common = dict(output_dir=str(run), seed=0, eval_every_epochs=0, max_train_samples=8, micro_batch_size=4,
                  max_steps=1, checkpointing_steps=1, progress=False)
    shutil.copytree(toy_data, tmp_path / "a" / "d")
    write_toy_dataset(tmp_path / "b" / "d", seed=1, n_train=40, n_dev=8, n_test=8)   # other data, same name
    monkeypatch.chdir(tmp_path / "a")
    Trainer(TrainConfig(data="d", **common)).train()
    again = dict(common, max_steps=2, resume_from_checkpoint="latest")
    check_resume(TrainConfig(data=str(tmp_path / "a" / "d"), **again))       # absolute spelling: the same data
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(ValueError, match=r"data .*a/d -> .*b/d \(its train split differs\)"):
        check_resume(TrainConfig(data="d", **again))


def test_the_studys_arms_differ_only_in_the_gradient_path():
    """Issue 20, item 2: end to end clipped all parameters together and the pipeline each side on its own, so the
    study's arms differed in more than whether L_v's gradient reaches the LLM. Now every arm clips per side
    (--clip per_side); the resolved settings of the two arms differ in `mode` alone."""
    import importlib.util
    from dataclasses import asdict
    from photochat_lib.training.train import clip_sides, resolve
    spec = importlib.util.spec_from_file_location("study", ROOT / "benchmarks" / "when_end2end_helps.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    args = study.parse_args(["--quick"])
    e2e, pipe = (study.arm_config(args, Path("runs/x"), 0, 20, mode=m, pipeline_context="perceptron")
                 for m in ("end2end", "pipeline"))
    a, b = asdict(e2e), asdict(pipe)
    assert {k for k in a if a[k] != b[k]} == {"mode"}
    assert resolve(e2e).to_dict() == resolve(pipe).to_dict()
    assert clip_sides(e2e) == clip_sides(pipe) == ("dialogue", "image")
    assert clip_sides(TrainConfig()) == ("joint",) and clip_sides(TrainConfig(mode="pipeline")) == ("dialogue", "image")
    with pytest.raises(ValueError, match="--clip must be one of joint, per_side"):
        TrainConfig(clip="both")


def test_clip_per_side_end_to_end_clips_each_side_to_the_limit(toy_data, tmp_path):
    """--clip per_side in end2end: after a step's clipping neither side's gradient norm exceeds max_grad_norm,
    while each side keeps its own direction (the joint clip would scale both by one factor)."""
    trainer = Trainer(small_cfg(toy_data, tmp_path / "r", max_steps=1, clip="per_side", max_grad_norm=0.01))
    assert trainer.clip_sides == ("dialogue", "image") and trainer.sides == ("joint",)
    seen = {}
    real = trainer._clip_gradients

    def spy():
        out = real()
        seen.update({side: float(torch.norm(torch.stack([p.grad.norm() for p in trainer.side_params[side]
                                                          if p.grad is not None]))) for side in trainer.clip_sides})
        return out
    trainer._clip_gradients = spy
    trainer.train()
    assert set(seen) == {"dialogue", "image"} and all(0 < v <= 0.01 * 1.0001 for v in seen.values()), seen


def test_freeze_sd_keeps_the_judge_as_loaded_and_still_sends_its_gradient_to_the_llm(toy_data, tmp_path):
    """--freeze-sd (the biased-world study): SD's UNet and text encoder end a step bit for bit as loaded, while
    end to end the LLM still moves (its L_v gradient passes through the frozen SD)."""
    trainer = Trainer(small_cfg(toy_data, tmp_path / "r", max_steps=1, freeze_sd=True, bridge="positional",
                                loss_reduction="sum"))
    model = trainer.unwrapped
    sd_before = {k: v.clone() for k, v in model.image_generator.unet.state_dict().items()}
    te_before = {k: v.clone() for k, v in model.image_generator.text_encoder.state_dict().items()}
    llm_before = {k: v.clone() for k, v in model.llm.state_dict().items()}
    trainer.train()
    assert all(torch.equal(v, model.image_generator.unet.state_dict()[k]) for k, v in sd_before.items())
    assert all(torch.equal(v, model.image_generator.text_encoder.state_dict()[k]) for k, v in te_before.items())
    assert any(not torch.equal(v, model.llm.state_dict()[k]) for k, v in llm_before.items())
    assert model.config.bridge == "positional" and model.config.loss_reduction == "sum"

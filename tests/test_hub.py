"""Hub conventions, offline: sd/ is a diffusers pipeline of its own, push_to_hub uploads a folder with a model
card, a training run's checkpoint-N/ loads like final/, the package's public names import lazily, and the
README's example runs as written."""
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from photochat_lib.data.toy_world import write_toy_dataset
from photochat_lib.model.image_generator import MODEL_INDEX, ImageGenerator
from photochat_lib.model.photochat_model import PhotoChatModel
from photochat_lib.presets import PRESETS, load_toy_model
from photochat_lib.toy.foundation import TOY_CHECKPOINT, TOY_END2END

ROOT = Path(__file__).resolve().parents[1]

def readme_example() -> str:
    """The first ```python block of the README's "Use it from Python" section, as the README has it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use it from Python"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def toy_model():
    torch.set_num_threads(2)
    return load_toy_model(which="end2end")


# ------------------------------------------------------------------ 1. sd/ is a diffusers pipeline
@pytest.mark.filterwarnings("ignore:(?s).*steps_offset")   # diffusers on the toy (SD-2.1) schedule
def test_saved_sd_folder_loads_and_draws_as_a_diffusers_pipeline(toy_model, tmp_path):
    """save_pretrained writes sd/model_index.json: StableDiffusionPipeline loads sd/ alone, offline, and draws
    the same pixels as the model's own sampler (given diffusers' steps_offset=1 fix of an SD-1-era config)."""
    from diffusers import DDPMScheduler, DiffusionPipeline, StableDiffusionPipeline

    from photochat_lib.model.generation import draw_captions
    toy_model.save_pretrained(tmp_path / "m")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "m" / "sd", local_files_only=True)
    assert isinstance(pipe, StableDiffusionPipeline) and type(pipe.scheduler).__name__ == "DDIMScheduler"
    caption = "Objects in the photo: green triangle, red square"
    image = pipe(caption, num_inference_steps=2, guidance_scale=3.0,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (PRESETS["toy"].sd_resolution,) * 2 and image.mode == "RGB"
    gen = ImageGenerator.from_pretrained(tmp_path / "m" / "sd")
    gen.scheduler = DDPMScheduler.from_config(gen.scheduler.config, steps_offset=1)
    ours = draw_captions(gen, [caption], num_inference_steps=2, guidance_scale=3.0, seed=0)[0]
    assert np.array_equal(np.asarray(image), np.asarray(ours))


@pytest.mark.parametrize("root", [TOY_CHECKPOINT, TOY_END2END], ids=["toy", "toy-end2end"])
def test_shipped_sd_folders_carry_the_model_index_save_pretrained_writes(root):
    written = json.loads((root / "sd" / MODEL_INDEX).read_text())
    expected = ImageGenerator.from_pretrained(root / "sd").model_index()
    written.pop("_diffusers_version"), expected.pop("_diffusers_version")
    assert written == expected


@pytest.mark.filterwarnings("ignore:(?s).*steps_offset")   # diffusers on the toy (SD-2.1) schedule
def test_shipped_fp16_sd_folder_loads_as_a_float32_pipeline():
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(TOY_END2END / "sd", dtype=torch.float32, local_files_only=True)
    image = pipe("Objects in the photo: blue circle", num_inference_steps=2, guidance_scale=3.0,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


# ------------------------------------------------------------------ 2. model card and push_to_hub
def fake_hub(monkeypatch) -> dict:
    """Replace HfApi.create_repo / upload_folder; return what they were called with and what was uploaded."""
    from huggingface_hub import HfApi, RepoUrl
    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["create_repo"] = {"repo_id": repo_id, "token": self.token, **kw}
        return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else 'you/' + repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kw):
        root = Path(folder_path)
        calls["upload_folder"] = {"repo_id": repo_id, **kw}
        calls["files"] = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        calls["card"] = (root / "README.md").read_text()
        calls["metrics"] = json.loads((root / "metrics.json").read_text()) if (root / "metrics.json").exists() else None
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_saved_folder_with_a_model_card(toy_model, monkeypatch):
    from huggingface_hub import ModelCard
    calls = fake_hub(monkeypatch)
    assert toy_model.push_to_hub("photochat-toy", private=True, token="hf_test", commit_message="toy") == "commit-info"
    assert calls["create_repo"] == {"repo_id": "photochat-toy", "token": "hf_test", "private": True, "exist_ok": True}
    assert calls["upload_folder"] == {"repo_id": "you/photochat-toy", "commit_message": "toy"}
    files = calls["files"]
    for name in ("README.md", "photochat.json", "metrics.json", "llm/config.json", "perceptron/config.json",
                 "sd/model_index.json", "sd/unet/config.json", "sd/scheduler/scheduler_config.json"):
        assert name in files, files
    # the model came from the shipped folder: its metrics.json travels with it
    assert calls["metrics"] == json.loads((TOY_END2END / "metrics.json").read_text())
    card = ModelCard(calls["card"])
    assert card.data.license == "apache-2.0" and card.data.library_name == "photochat_lib"
    assert "end2end" in card.data.tags and "preset-toy" in card.data.tags
    assert card.data.base_model is None                      # the toy preset is built from no Hub model
    assert 'PhotoChatModel.from_pretrained("you/photochat-toy")' in card.text
    assert f"| caption_exact | {calls['metrics']['caption_exact']:.2f} |" in card.text   # the shipped metrics.json's
    assert "training settings were not recorded" in card.text


def test_model_card_of_the_paper_preset_names_its_base_models_recipe_and_metrics(tmp_path):
    from huggingface_hub import ModelCard

    from photochat_lib.model.hub import model_card
    from photochat_lib.model.photochat_model import PhotoChatConfig
    from photochat_lib.recipe import get_recipe
    from photochat_lib.training.train import TrainConfig
    folder, run = tmp_path / "final", tmp_path
    folder.mkdir()
    (folder / "photochat.json").write_text(json.dumps(asdict(PhotoChatConfig(preset="paper"))))
    (run / "config.json").write_text(json.dumps({"train": asdict(TrainConfig(preset="paper", data="data/photochat")),
                                                 "recipe": get_recipe("paper").to_dict(), "trainable": {}}))
    (run / "trainer_state.json").write_text(json.dumps({"global_step": 4200, "stopped": None}))
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"BLEU-2": 12.345, "FID": 70.0, "n_samples": 120}))
    card = ModelCard(model_card(folder, repo_id="you/photochat-paper", run_dir=run))
    assert card.data.base_model == ["meta-llama/Llama-2-7b-chat-hf", "Salesforce/blip2-opt-2.7b-coco",
                                    "stabilityai/stable-diffusion-2-1-base"]
    assert card.data.license == "apache-2.0" and "preset-paper" in card.data.tags
    text = card.text
    assert 'PhotoChatModel.from_pretrained("you/photochat-paper")' in text
    assert "| preset / mode | paper / end2end |" in text and "| data | photochat |" in text
    assert "llm: lora" in text and "unet: lora" in text and "vision: freeze" in text
    assert "5e-05" in text and "| mixed precision | fp16 |" in text and "4200" in text
    assert "| BLEU-2 | 12.35 |" in text and "| FID | 70.00 |" in text and "| n_samples | 120 |" in text
    assert "`meta-llama/Llama-2-7b-chat-hf`" in text.split("## License")[1]      # their own licenses apply


# ------------------------------------------------------------------ 3. checkpoint-N/ loads like final/
def train_toy(data: Path, out: Path) -> Path:
    from photochat_lib.training.train import TrainConfig, Trainer
    Trainer(TrainConfig(data=str(data), output_dir=str(out), max_train_samples=8, micro_batch_size=4,
                        eval_every_epochs=0, progress=False, max_steps=2, checkpointing_steps=1)).train()
    return out


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    write_toy_dataset(out, seed=0, n_train=24, n_dev=4, n_test=8)
    return out


@pytest.fixture(scope="module")
def run(toy_data, tmp_path_factory):
    torch.set_num_threads(2)
    return train_toy(toy_data, tmp_path_factory.mktemp("run"))


def assert_same_weights(a: PhotoChatModel, b: PhotoChatModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


def changed(a: PhotoChatModel, b: PhotoChatModel) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


def test_last_checkpoint_loads_with_the_weights_of_final(run):
    assert (run / "checkpoint-1").is_dir() and (run / "checkpoint-2").is_dir()
    final = PhotoChatModel.from_pretrained(run / "final")
    last = PhotoChatModel.from_pretrained(run / "checkpoint-2")
    assert_same_weights(last, final)
    assert last.config == final.config and last.source_folder == str(run / "checkpoint-2")
    assert changed(PhotoChatModel.from_pretrained(run / "checkpoint-1"), final)


def test_lora_checkpoint_is_rebuilt_from_the_runs_recipe_and_merged(toy_data, tmp_path, monkeypatch):
    """A run trained with LoRA (a recipe swapped in for the run, as tests/test_train.py does): its checkpoint
    is rebuilt from the recipe config.json recorded (not the preset's current one), and merged like final/."""
    import photochat_lib.training.train as T
    from photochat_lib.recipe import get_recipe
    lora = replace(get_recipe("paper"), preset="toy", mixed_precision="no", micro_batch_size=4, grad_accum_steps=1,
                   llm_gradient_checkpointing=False, unet_gradient_checkpointing=False, lr=1e-2, warmup_steps=1)
    monkeypatch.setattr(T, "get_recipe", lambda preset: lora)
    run = train_toy(toy_data, tmp_path / "lora")
    monkeypatch.undo()                                  # loading must not need the swapped recipe
    last = PhotoChatModel.from_pretrained(run / "checkpoint-2")
    assert not any("lora_" in n or "trainable_tokens_" in n for n in last.state_dict())
    assert_same_weights(last, PhotoChatModel.from_pretrained(run / "final"))
    assert all(p.requires_grad for p in last.llm.parameters())     # as from_pretrained leaves a model


def test_checkpoint_without_its_runs_config_names_the_missing_file(tmp_path):
    ckpt = tmp_path / "run" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"checkpoint-3 is a training checkpoint, but .*run/config\.json"):
        PhotoChatModel.from_pretrained(ckpt)


def test_a_truncated_or_mismatched_checkpoint_is_one_line_naming_it(run, tmp_path):
    from photochat_lib.recipe import get_recipe
    ckpt = tmp_path / "copy" / "checkpoint-1"
    ckpt.mkdir(parents=True)
    shutil.copy(run / "config.json", ckpt.parent)
    shutil.copy(run / "checkpoint-1" / "trainer_state.json", ckpt)
    weights = (run / "checkpoint-1" / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated or corrupt weights"):
        PhotoChatModel.from_pretrained(ckpt)
    (ckpt / "model.safetensors").write_bytes(weights)
    config = json.loads((run / "config.json").read_text())
    config["recipe"] = replace(get_recipe("paper"), preset="toy", mixed_precision="no").to_dict()   # LoRA
    (ckpt.parent / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"checkpoint-1: its weights do not fit the model its run's config\.json"):
        PhotoChatModel.from_pretrained(ckpt)


def test_push_to_hub_with_the_run_puts_its_recipe_and_metrics_in_the_card(run, monkeypatch):
    from huggingface_hub import ModelCard
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "metrics.json").write_text(json.dumps({"BLEU-2": 3.5, "caption_exact": 50.0}))
    calls = fake_hub(monkeypatch)
    PhotoChatModel.from_pretrained(run / "checkpoint-2").push_to_hub("you/toy-run", run_dir=run)
    assert calls["metrics"] == {"BLEU-2": 3.5, "caption_exact": 50.0}
    text = ModelCard(calls["card"]).text
    assert "| preset / mode | toy / end2end |" in text and "| optimizer steps | 2 (stopped: max_steps) |" in text
    assert "| BLEU-2 | 3.50 |" in text


# ------------------------------------------------------------------ 4. the public API, imported lazily
def test_public_names_import_from_the_package():
    import photochat_lib
    from photochat_lib import PhotoChatModel as M, generate
    from photochat_lib.model.generation import generate as g
    assert M is PhotoChatModel and generate is g
    for name in ("PhotoChatModel", "PhotoChatConfig", "generate", "load_toy_model", "TrainConfig", "Trainer",
                 "evaluate_model"):
        assert name in photochat_lib.__all__ and name in dir(photochat_lib)
        assert getattr(photochat_lib, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        photochat_lib.no_such_name


def test_importing_the_package_or_its_data_loads_no_model_libraries():
    code = ("import sys, photochat_lib; heavy = {'torch', 'transformers', 'diffusers'} & set(sys.modules); "
            "assert not heavy, heavy; import photochat_lib.data; "
            "heavy = {'transformers', 'diffusers', 'accelerate'} & set(sys.modules); assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------ 5. the README example
def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    example = readme_example()
    assert len(example.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(example, "README example", "exec"), scope)
    from PIL import Image
    assert scope["reply"].shared_photo and len(scope["reply"].images) == 1
    assert "[photo: " in capsys.readouterr().out
    with Image.open(tmp_path / "photo.png") as photo:
        assert photo.size == (32, 32)


def test_the_loading_and_saving_arguments_hugging_face_users_type(toy_model, tmp_path, monkeypatch):
    """Issue 21's probes: local_files_only=True or low_cpu_mem_usage=True raised "photochat.json is broken" (it
    blamed the file); device_map={"": "cpu"} a raw TypeError, "balanced" a RuntimeError; save_pretrained with
    safe_serialization=True or push_to_hub=True a TypeError."""
    import huggingface_hub
    from photochat_lib.model.photochat_model import PhotoChatModel
    seen = {}
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: (seen.update(kw, repo=repo), str(TOY_END2END))[1])
    m = PhotoChatModel.from_pretrained("someone/photochat-toy", local_files_only=True, cache_dir=str(tmp_path / "c"),
                                       force_download=False, low_cpu_mem_usage=True, device_map={"": "cpu"})
    assert seen == {"repo": "someone/photochat-toy", "revision": None, "token": None, "local_files_only": True,
                    "cache_dir": str(tmp_path / "c"), "force_download": False}
    assert m.device.type == "cpu"
    for device_map in ("balanced", {"llm": 0, "sd": 1}):
        with pytest.raises(ValueError, match="splits the model across devices; a PhotoChatModel loads onto one"):
            PhotoChatModel.from_pretrained(TOY_END2END, device_map=device_map)
    with pytest.raises(ValueError, match="'gpu0' is not a device"):
        PhotoChatModel.from_pretrained(TOY_END2END, device_map="gpu0")
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) attn_implementation; it takes dtype"):
        PhotoChatModel.from_pretrained(TOY_END2END, attn_implementation="sdpa")
    toy_model.save_pretrained(tmp_path / "saved", safe_serialization=True, max_shard_size="4MB")
    assert (tmp_path / "saved" / "photochat.json").exists()
    with pytest.raises(ValueError, match="saves only safetensors"):
        toy_model.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    calls = fake_hub(monkeypatch)
    toy_model.save_pretrained(tmp_path / "photochat-mine", push_to_hub=True, private=True)
    assert calls["upload_folder"]["repo_id"] == "you/photochat-mine" and calls["create_repo"]["private"] is True
    assert (tmp_path / "photochat-mine" / "photochat.json").exists()


def test_the_shipped_models_carry_their_cards_with_hub_metadata():
    """Issue 21's probes: the card had no pipeline_tag, language or model-index metrics, showed a local data path,
    and the shipped end-to-end model had no README card (the foundation keeps PRETRAIN.md: it was never trained as
    one model). The shipped card is what `model_card` writes now."""
    from huggingface_hub import ModelCard
    from photochat_lib.apps.pretrain import card_source
    from photochat_lib.model.hub import model_card
    assert (TOY_END2END / "README.md").read_text() == model_card(TOY_END2END, repo_id=card_source(TOY_END2END)), \
        "regenerate with photochat_lib.apps.pretrain.write_card"
    card = ModelCard((TOY_END2END / "README.md").read_text())
    assert card.data.pipeline_tag == "image-text-to-text" and card.data.language == ["en"]
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    shipped = json.loads((TOY_END2END / "metrics.json").read_text())
    assert metrics["share F1"] == round(shipped["share F1"], 4) and metrics["grounded_remarks"] == shipped["grounded_remarks"]


def test_only_the_image_generator_loads_in_one_line():
    """Issue 21's probe: a Hub repo had no one-line way to load just the image generator (`subfolder="sd"`; a Hub
    id asks each part for sd/<part>, which transformers and diffusers take as a nested subfolder)."""
    from photochat_lib.model.image_generator import ImageGenerator
    local = ImageGenerator.from_pretrained(TOY_END2END, subfolder="sd")
    whole = ImageGenerator.from_pretrained(TOY_END2END / "sd")
    assert local.unet.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(local.unet.state_dict().values(), whole.unet.state_dict().values()))

"""Where a PhotoChatModel comes from and where it goes: a local folder, a training checkpoint or a Hugging
Face Hub id; what is wrong when it does not load; and a Hub repo with a model card when it is shared.

The rules a transformers user expects, with one line of error when they fail:

* a folder that exists is loaded as it is (a training run's ``final/`` or ``best/``);
* a training run's ``checkpoint-N/`` (accelerate's ``save_state``: trainer_state.json and the model's
  weights, no photochat.json) is rebuilt from the run's config.json, as training built it, and given the
  checkpoint's weights, with LoRA merged (`load_training_checkpoint`);
* a name that *looks* local — absolute, ``./``/``../``/``~``, more than one ``/``, or whose first part is a
  local folder (``runs/e2e``) — is never sent to the Hub: it is a missing folder;
* anything else of the form ``name`` or ``owner/name`` is a Hub repo, fetched with
  ``huggingface_hub.snapshot_download`` (cached; ``HF_HUB_OFFLINE=1`` uses the cache only).

`push_to_hub` uploads a model folder with a README.md model card (`model_card`): license, base models,
how to load it, the training recipe and the metrics, when known.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from photochat_lib.utils.atomic import write_text

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")   # "name" or "owner/name"


class HubConnectionError(OSError):
    """The Hub could not be reached (offline, no network) for a model that is not in the local cache."""


def looks_local(name: str) -> bool:
    """Return True if `name` can only mean a path on this machine (never a Hub repo id)."""
    s = str(name)
    if s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") > 1 or not HUB_ID.match(s):
        return True
    return "/" in s and Path(s.split("/")[0]).is_dir()     # "runs/e2e" when ./runs exists


def resolve_model_path(name: str | os.PathLike, revision: str | None = None, token: str | None = None,
                       **hub_kwargs) -> Path:
    """Return a local folder for `name`: the folder itself, or the Hub snapshot of a repo id (hub_kwargs:
    snapshot_download's ``cache_dir``, ``force_download``, ``local_files_only``).

    Raises FileNotFoundError for a missing local folder or an unknown repo, HubConnectionError when the
    Hub cannot be reached and the repo is not cached.
    """
    if os.path.isdir(name):
        return Path(name)
    if looks_local(str(name)):
        raise FileNotFoundError(f"{name}: no such model folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    try:
        return Path(snapshot_download(str(name), revision=revision, token=token, **hub_kwargs))
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as e:
        raise FileNotFoundError(f"{name} is neither a local folder nor a Hub model you can read "
                                f"({type(e).__name__})") from None
    except LocalEntryNotFoundError:
        raise HubConnectionError(f"{name}: not in the local Hub cache and the Hub cannot be reached (offline?); "
                                 f"download it where there is a connection, or pass a local folder") from None
    except OSError as e:                       # requests' ConnectionError, timeouts
        raise HubConnectionError(f"{name}: cannot reach the Hugging Face Hub ({type(e).__name__}); pass a local "
                                 f"folder, or set HF_HUB_OFFLINE=1 to use the cache") from None


def find_broken_file(folder: str | os.PathLike) -> tuple[Path, str] | None:
    """Return (file, what is wrong) for the first unreadable json/safetensors file under `folder`, else None.

    Reads only headers (safetensors) and parses json: used to name the file after a load failed.
    """
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                return path, f"not valid JSON ({e})"
        elif path.suffix == ".safetensors":
            try:
                _check_safetensors_size(path)
            except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
                return path, f"truncated or corrupt weights ({e})"
    return None


def _check_safetensors_size(path: Path) -> None:
    """Raise ValueError if the file is shorter than its header says (a copy cut short)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > path.stat().st_size:
            raise ValueError(f"its header claims {n} bytes, more than the file holds")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size < 8 + n + end:
        raise ValueError(f"{path.stat().st_size} bytes, the header needs {8 + n + end}")


# ----- training checkpoints: checkpoint-N/ as a model -----
CHECKPOINT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")   # accelerate's save_state: the model's weights


def is_training_checkpoint(folder: str | os.PathLike) -> bool:
    """Return True for a `Trainer` checkpoint folder: trainer_state.json and model weights, no photochat.json."""
    folder = Path(folder)
    return (not (folder / "photochat.json").exists() and (folder / "trainer_state.json").is_file()
            and any((folder / name).is_file() for name in CHECKPOINT_WEIGHTS))


# ----- sharing: a model card and the upload -----
LICENSE = "apache-2.0"
LIBRARY_NAME = "photochat_lib"
TOY_PARTS = ["a toy Llama", "a toy BLIP-2", "a toy Stable Diffusion"]   # the toy preset's architectures
PIPELINE_TAG = "image-text-to-text"   # the Hub task closest to a dialogue model that sees photos (it also draws them)
CARD_METRICS = ("share F1", "caption_exact", "attr_acc", "grounded_remarks", "BLEU-1", "BLEU-2", "Rouge-L", "FID",
                "IS_mean")          # what the card's model-index reports from metrics.json
CARD_TAGS = ["photochat", "photo-sharing-dialogue", "multimodal", "text-to-image", "image-to-text",
             "stable-diffusion", "blip-2"]


# Each preset's pretrained (LLM, BLIP-2, Stable Diffusion) on the Hub; `presets.PRESETS` is built from these
# (the toy preset is built from configs in code: none)
HUB_MODELS = {
    "toy": (None, None, None),
    "colab": ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "Salesforce/blip2-opt-2.7b-coco",
              "stabilityai/stable-diffusion-2-1-base"),
    "paper": ("meta-llama/Llama-2-7b-chat-hf", "Salesforce/blip2-opt-2.7b-coco",
              "stabilityai/stable-diffusion-2-1-base"),
}


def base_models(config: dict) -> list[str]:
    """Return the Hub ids a model was built from: photochat.json's ``extra["base_model"]`` when set, else
    its preset's LLM, BLIP-2 and Stable Diffusion (none for the toy preset)."""
    if (config.get("extra") or {}).get("base_model"):
        return list(config["extra"]["base_model"])
    return [s for s in HUB_MODELS.get(config.get("preset", "toy"), ()) if s]


def read_metrics(folder: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> tuple[Path, dict] | None:
    """Return (file, metrics) of the folder's metrics.json, else of run_dir/eval/metrics.json, else None."""
    for path in [Path(folder) / "metrics.json"] + ([Path(run_dir) / "eval" / "metrics.json"] if run_dir else []):
        if path.is_file():
            return path, json.loads(path.read_text())
    return None


def model_card(folder: str | os.PathLike, repo_id: str | None = None, run_dir: str | os.PathLike | None = None) -> str:
    """Return a README.md model card for a saved PhotoChatModel folder.

    YAML front matter (license, library_name, tags, base_model, pipeline_tag, language, datasets for the real
    presets, and a model-index of the metrics), then what the model is, how to load it
    (from `repo_id`, else the folder), the training recipe (run_dir/config.json, when given) and the
    metrics (`read_metrics`), and the license.
    """
    from huggingface_hub import EvalResult, ModelCardData
    folder = Path(folder)
    config = json.loads((folder / "photochat.json").read_text())
    bases = base_models(config)
    preset = config.get("preset", "toy")
    tags = CARD_TAGS + [config.get("mode", "end2end"), f"preset-{preset}"]
    found = read_metrics(folder, run_dir)
    dataset = ("toy world (photochat data toy)", "photochat-toy") if preset == "toy" else ("PhotoChat", "photochat")
    results = [EvalResult(task_type=PIPELINE_TAG, dataset_type=dataset[1], dataset_name=dataset[0],
                          dataset_split="test", metric_type=name, metric_name=name, metric_value=round(value, 4))
               for name, value in (found[1] if found else {}).items()
               if name in CARD_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool)]
    data = ModelCardData(license=LICENSE, library_name=LIBRARY_NAME, tags=tags, base_model=bases or None,
                         pipeline_tag=PIPELINE_TAG, language=["en"],
                         datasets=None if preset == "toy" else ["photochat", "dialogcc"],
                         model_name=f"photochat-{config.get('mode', 'end2end')}-{preset}",
                         eval_results=results or None)
    sections = [_card_intro(config, bases), _card_usage(repo_id or str(folder)),
                _card_training(run_dir), _card_metrics(found), _card_license(bases)]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def _card_intro(config: dict, bases: list[str]) -> str:
    mode, preset = config.get("mode", "end2end"), config.get("preset", "toy")
    how = ("trained end to end: a straight-through Gumbel-softmax and a dynamic vocabulary transformation matrix "
           "carry the image loss's gradient from Stable Diffusion back into the LLM, so the whole model learns "
           "L = Lt + α·Lv" if mode == "end2end" else
           "the pipeline baseline: the caption reaches Stable Diffusion as plain text, so the LLM and the image "
           "generator learn separately")
    llm, perceptron, sd = ([f"`{b}`" for b in bases] if len(bases) == 3 else
                           TOY_PARTS if preset == "toy" else ["see base_model above"] * 3)
    return (f"# PhotoChat {mode} model ({preset} preset)\n\n"
            "A photo-sharing dialogue model: a large language model that sees the photos of a dialogue through a "
            "BLIP-2 Q-Former and shares photos of its own by writing `[IMG] caption [/IMG]`, which Stable "
            f"Diffusion draws. This one is {how}.\n\n"
            "| part | folder | built from |\n|---|---|---|\n"
            f"| dialogue LLM | `llm/` | {llm} |\n"
            f"| image perceptron (ViT + Q-Former) | `perceptron/` | {perceptron} |\n"
            f"| image generator | `sd/` | {sd} |\n\n"
            "`sd/` is also a diffusers Stable Diffusion pipeline of its own (`StableDiffusionPipeline.from_pretrained` "
            "on that folder); `ImageGenerator.from_pretrained(repo, subfolder=\"sd\")` (`photochat_lib.model.image_generator`) "
            "loads only the image generator.")


def _card_usage(source: str) -> str:
    return ("## How to use\n\nWith the `photochat_lib` package installed:\n\n```python\n"
            "from photochat_lib import PhotoChatModel, generate\n"
            f"model = PhotoChatModel.from_pretrained({json.dumps(source)})\n"
            "reply = generate(model, [(\"A\", \"Can you show me a photo?\")], speaker=\"B\")  "
            "# reply.text, reply.images (PIL)\n```")


def _card_training(run_dir: str | os.PathLike | None) -> str:
    path = Path(run_dir) / "config.json" if run_dir else None
    if path is None or not path.is_file():
        return "## Training\n\nThe training settings were not recorded with this upload."
    saved = json.loads(path.read_text())
    t, r = saved.get("train", {}), saved.get("recipe", {})
    state_file = Path(run_dir) / "trainer_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    get = {**t, **r}.get                          # the recipe holds the values the run resolved
    rows = [("preset / mode", f"{t.get('preset')} / {t.get('mode')}"),
            ("data", Path(str(t.get("data"))).name),   # the folder's name: a local path means nothing on the Hub
            ("seed", t.get("seed")),
            ("batch", f"{get('micro_batch_size')} per step × {get('grad_accum_steps')} accumulated (per process)"),
            ("learning rate", f"{get('lr')} (image side {get('sd_lr') or get('lr')}), {get('warmup_steps')} warm-up "
                              f"steps, then {get('lr_decay')}"),
            ("weight decay", get("weight_decay")), ("α (image loss weight)", get("alpha")),
            ("Gumbel τ", f"{get('tau_start')} → {get('tau_end')} over {get('tau_anneal_epochs')} epochs"),
            ("mixed precision", get("mixed_precision")),
            ("components", ", ".join(f"{c}: {r[c]}" for c in ("llm", "vision", "qformer", "projection",
                                                                 "text_encoder", "unet", "vae") if c in r))]
    if state:
        stopped = state.get("stopped") or "max_epochs"
        rows.append(("optimizer steps", f"{state.get('global_step')} (stopped: {stopped})"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return ("## Training\n\nTrained with `photochat train` (the run's config.json):\n\n"
            f"| setting | value |\n|---|---|\n{table}")


def _card_metrics(found: tuple[Path, dict] | None) -> str:
    if found is None:
        return "## Evaluation\n\nNo metrics were recorded with this upload."
    metrics = found[1].get("mean_std", found[1])   # `photochat evaluate` over several models: mean ± std
    rows = []
    for name, value in metrics.items():
        if isinstance(value, dict) and {"mean", "std"} <= set(value):
            rows.append(f"| {name} | {value['mean']:.2f} ± {value['std']:.2f} |")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {name} | {value:.2f} |" if isinstance(value, float) else f"| {name} | {value} |")
    return ("## Evaluation\n\nFrom `metrics.json` (`photochat evaluate`; BLEU, ROUGE-L, IS and FID as in the "
            "paper, share precision/recall on when to share a photo):\n\n| metric | value |\n|---|---|\n"
            + "\n".join(rows))


def _card_license(bases: list[str]) -> str:
    text = "## License\n\nApache-2.0, like the `photochat_lib` code."
    if bases:
        text += (" The weights derive from " + ", ".join(f"`{b}`" for b in bases) + ", which keep their own "
                 "licenses and terms of use: read their model cards before you use or share this model.")
    return text


def push_to_hub(model, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload PhotoChatModel", run_dir: str | os.PathLike | None = None):
    """Upload a PhotoChatModel to a Hub model repo (created if missing) with a README.md model card.

    The folder uploaded is `save_pretrained`'s, plus metrics.json (run_dir/eval/metrics.json, else the one
    beside the folder the model was loaded from) and README.md (`model_card`). Returns huggingface_hub's
    CommitInfo.
    """
    from huggingface_hub import HfApi
    if any("lora_" in n or "trainable_tokens_" in n for n, _ in model.named_parameters()):
        raise ValueError("the model still has peft adapters: merge them first (finetune.merge_lora_ on a copy), "
                         "or push a saved folder such as a run's final/")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id   # "name" -> "user/name"
    with tempfile.TemporaryDirectory(prefix="photochat-push-") as tmp:
        model.save_pretrained(tmp)
        source = getattr(model, "source_folder", None)        # set by from_pretrained
        candidates = ([Path(run_dir) / "eval" / "metrics.json"] if run_dir else []) + \
                     ([Path(source) / "metrics.json"] if source else [])
        metrics = next((path for path in candidates if path.is_file()), None)
        if metrics is not None:
            shutil.copyfile(metrics, Path(tmp) / "metrics.json")
        write_text(Path(tmp) / "README.md", model_card(tmp, repo_id=repo_id, run_dir=run_dir))
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)

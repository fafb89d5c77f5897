"""Pretraining the toy Stable Diffusion: both stages learn, runs are seeded, folders load back.

How well the shipped one draws is measured by benchmarks/toy_sd_accuracy.py (target ≥ 95% on 200
captions: 95.5%); the last test keeps a floor under it on 100 captions with the default sampler.
"""
import copy
import json
import random

import numpy as np

import pytest
import torch

from photochat_lib.model.image_generator import ImageGenerator
from photochat_lib.toy.pretrain_sd import (PretrainSDConfig, draw_batch, main, pixel_weights, pretrain_image_generator,
                                      sample_objects)

TINY = PretrainSDConfig(vae_steps=60, vae_batch=8, unet_steps=12, unet_batch=8, threads=1, log_every=10)


def test_photo_stream_is_seeded_and_in_range():
    a, caps_a = draw_batch(random.Random(3), 4)
    b, caps_b = draw_batch(random.Random(3), 4)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b) and caps_a == caps_b
    assert a.min() >= -1 and a.max() <= 1 and all(c.startswith("Objects in the photo: ") for c in caps_a)
    objects, _ = sample_objects(random.Random(0))
    assert 1 <= len(objects) <= 3 and len({(o.colour, o.shape) for o in objects}) == len(objects)


def test_left_to_right_changes_only_which_slot_names_which_column():
    from photochat_lib.data.toy_world import POSITIONS
    for seed in range(20):
        (free, bg_a), (ordered, bg_b) = sample_objects(random.Random(seed)), sample_objects(random.Random(seed), True)
        assert bg_a == bg_b and [(o.colour, o.shape) for o in free] == [(o.colour, o.shape) for o in ordered]
        assert sorted(o.position for o in free) == sorted(o.position for o in ordered)
        assert [o.position for o in ordered] == sorted((o.position for o in ordered), key=POSITIONS.index)


def test_vae_loss_weighs_objects_and_their_outlines():
    from photochat_lib.data.toy_world import ToyObject, draw_photo
    photo = draw_photo([ToyObject("red", "square", "box", "big", "middle")], "gray")
    x = torch.tensor(np.array(photo), dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1   # (1, 3, 32, 32)
    cfg = PretrainSDConfig(object_weight=10.0, edge_weight=20.0)
    w = pixel_weights(x, cfg)[0, 0]                                    # (32, 32)
    row = w[16].tolist()                                               # through the square's middle
    inside = [i for i in range(32) if (x[0, :, 16, i] != x[0, :, 0, 0]).any()]
    left, right = inside[0], inside[-1]
    assert w[0, 0] == 1 and row[left - 2] == 1 and row[right + 2] == 1   # plain background
    assert row[left - 1] == 1 + 20 and row[right + 1] == 1 + 20         # background on the outline
    assert row[left] == 10 + 20 and row[right] == 10 + 20               # object on the outline
    assert all(v == 10 for v in row[left + 1:right])                    # object interior
    plain = pixel_weights(x, PretrainSDConfig(object_weight=10.0, edge_weight=0.0))[0, 0]
    assert torch.equal(plain == 10, (w == 10) | (w == 30)) and set(plain.unique().tolist()) == {1.0, 10.0}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd") / "toy_sd"
    gen, stats = pretrain_image_generator(out, seed=0, config=TINY)
    return out, gen, stats


def test_both_stages_lower_their_losses(tiny_run):
    _, _, stats = tiny_run
    assert stats["vae_last"]["recon"] < 0.8 * stats["vae_first"]["recon"]
    assert stats["unet_last"] < stats["unet_first"]
    assert stats["latent_std"] > 0


def test_same_seed_same_weights(tiny_run):
    _, gen, _ = tiny_run
    again, _ = pretrain_image_generator(None, seed=0, config=TINY)
    for a, b in ((gen.unet, again.unet), (gen.vae, again.vae), (gen.text_encoder, again.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert gen.vae.config.scaling_factor == again.vae.config.scaling_factor


def test_stage_two_alone_on_the_saved_vae_gives_the_full_runs_weights(tiny_run):
    """--vae-from reruns only stage 2; each stage has its own seeded streams, and judging midway is read-only."""
    out, gen, _ = tiny_run
    cfg = PretrainSDConfig(**{**TINY.__dict__, "eval_every": 5, "eval_n": 4})
    again, stats = pretrain_image_generator(None, seed=0, config=cfg, vae_from=out)
    assert "vae_last" not in stats and stats["vae_from"] == str(out)
    assert [row["step"] for row in stats["unet_curve"]] == [5, 10]
    assert all(0 <= row["exact_match"] <= 1 for row in stats["unet_curve"])
    for a, b in ((gen.unet, again.unet), (gen.text_encoder, again.text_encoder), (gen.vae, again.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.loads(again.vae.to_json_string()) == json.loads(gen.vae.to_json_string())  # same vae/config.json


def test_vae_from_a_folder_without_a_vae_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .*vae/config.json"):
        pretrain_image_generator(None, seed=0, config=TINY, vae_from=tmp_path)


def test_saved_folder_loads_back(tiny_run):
    out, gen, _ = tiny_run
    assert {p.name for p in out.iterdir()} == {"text_encoder", "tokenizer", "unet", "vae", "scheduler",
                                                 "model_index.json"}   # diffusers loads the folder alone
    loaded = ImageGenerator.from_pretrained(out)
    assert loaded.vae.config.scaling_factor == pytest.approx(gen.vae.config.scaling_factor)
    ids = loaded.tokenize(["Objects in the photo: red circle"])
    rounded = copy.deepcopy(gen)                   # the folder is stored in float16 (toy.foundation.SHIPPED_DTYPE)
    for p in rounded.parameters():
        p.data = p.data.half().float()
    assert loaded.unet.conv_in.weight.dtype == torch.float32
    assert torch.equal(loaded.unet.conv_in.weight, rounded.unet.conv_in.weight)
    assert torch.allclose(loaded.encode_onehot(loaded.one_hot(ids)), rounded.encode_onehot(rounded.one_hot(ids)))


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for opt in ("--out", "--seed", "--vae-steps", "--unet-steps", "--threads", "--eval", "--guidance-scale",
                "--vae-from", "--snr-gamma", "--prediction-type", "--eval-every"):
        assert opt in text


def test_shipped_toy_sd_draws_what_it_is_told():
    """The shipped sd/ with the default sampler (sampling.py): 100 fresh captions, judged by the toy classifier."""
    from photochat_lib.toy.pretrain_sd import evaluate_generator
    from photochat_lib.toy.foundation import TOY_CHECKPOINT
    gen = ImageGenerator.from_pretrained(TOY_CHECKPOINT / "sd").eval()
    verdict = evaluate_generator(gen, n=100, seed=1)
    assert verdict["exact_match"] >= 0.9, verdict               # 200 captions: 95.5 % (the benchmark)
    assert verdict["exact_match_by_objects"][1] >= 0.95, verdict


def test_weight_ema_is_diffusers_emamodel_with_the_same_warm_up():
    """The hand-written EMA (decay min(γ, (1+k)/(10+k)) at update k) became diffusers' EMAModel: the same decays
    from the second update on; its first update copies the weights (decay 0, not 0.1), a difference whose share
    of the EMA after n updates is 0.1·∏ decay_k — below 1e-30 after the 8,000 UNet steps of the shipped run."""
    import math

    from diffusers.training_utils import EMAModel
    ema = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=0.995)
    hand = [min(0.995, (1 + k) / (10 + k)) for k in range(8000)]
    lib = [ema.get_decay(k + 1) for k in range(8000)]
    assert lib[0] == 0.0 and hand[0] == 0.1 and lib[1:] == hand[1:]
    assert 0.1 * math.prod(hand[1:]) < 1e-30

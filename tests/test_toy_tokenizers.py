"""The toy LLM (Llama-style) and SD (CLIP-style) tokenizers: special tokens, round trips, mismatch."""
import itertools

import pytest
from transformers import AutoTokenizer

from photochat_lib.data.toy_world import COLOURS, SHAPES, caption, ToyObject
from photochat_lib.data.tokens import IMAGE_PLACEHOLDER, IMG_END, IMG_START, SPECIAL_TOKENS
from photochat_lib.toy.tokenizers import (SD_MAX_LENGTH, build_llm_tokenizer, build_sd_tokenizer,
                                          toy_corpus, train_bpe)

CAPTION = "Objects in the photo: yellow triangle, blue square"


@pytest.fixture(scope="module")
def llm():
    return build_llm_tokenizer()


@pytest.fixture(scope="module")
def sd():
    return build_sd_tokenizer()


def test_llm_special_tokens_are_single_ids(llm):
    assert (llm.bos_token, llm.eos_token, llm.unk_token, llm.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
    ids = llm.convert_tokens_to_ids(SPECIAL_TOKENS)
    assert len(set(ids)) == 3 and llm.unk_token_id not in ids
    text = f"A: look{IMG_START} {CAPTION}{IMG_END}{IMAGE_PLACEHOLDER * 3}"
    enc = llm(text, add_special_tokens=False).input_ids
    assert enc.count(ids[0]) == 1 and enc.count(ids[1]) == 1 and enc.count(ids[2]) == 3
    assert llm(text).input_ids[0] == llm.bos_token_id  # Llama adds bos, not eos


def test_llm_encode_decode_and_byte_fallback(llm):
    ids = llm(CAPTION, add_special_tokens=False).input_ids
    assert llm.decode(ids) == CAPTION
    odd = "café ☕"  # never seen in the corpus: byte fallback, nothing lost
    ids = llm(odd, add_special_tokens=False).input_ids
    assert llm.unk_token_id not in ids and llm.decode(ids) == odd


def test_sd_is_clip_style(sd):
    assert (sd.bos_token, sd.eos_token, sd.pad_token) == ("<|startoftext|>", "<|endoftext|>", "<|endoftext|>")
    enc = sd(CAPTION, padding="max_length", max_length=sd.model_max_length).input_ids
    assert enc[0] == sd.bos_token_id and len(enc) == SD_MAX_LENGTH
    assert sd.tokenize("Yellow")[-1].endswith("</w>") and sd.tokenize("YELLOW") == sd.tokenize("yellow")
    assert sd.decode(sd(CAPTION).input_ids, skip_special_tokens=True) == "objects in the photo : yellow triangle , blue square"


def test_longest_toy_caption_fits_sd_max_length(sd):
    objs = [ToyObject(c, s, "x", "big", "left") for c, s in itertools.product(COLOURS, SHAPES)]
    longest = max(len(sd(caption([o] * 3)).input_ids) for o in objs)
    assert longest <= sd.model_max_length == SD_MAX_LENGTH


def test_vocabularies_really_differ(llm, sd):
    """Some caption words are one LLM token but several SD tokens: the DVTM maps many-to-one."""
    differ = []
    for word in [*COLOURS, *SHAPES, "photo"]:
        a = [t.lstrip("▁") for t in llm.tokenize(" " + word)]
        b = [t.replace("</w>", "") for t in sd.tokenize(word)]
        assert "".join(a) == "".join(b) == word
        differ += [word] if a != b else []
    assert {"yellow", "triangle"} <= set(differ)
    assert len(llm) != len(sd) and set(llm.get_vocab()) != set(sd.get_vocab())


def test_round_trip_through_autotokenizer(llm, sd, tmp_path):
    text = f"A: hi{IMG_START} {CAPTION}{IMG_END}{IMAGE_PLACEHOLDER}"
    for tok, name in ((llm, "llm"), (sd, "sd")):
        tok.save_pretrained(tmp_path / name)
        back = AutoTokenizer.from_pretrained(tmp_path / name)
        assert type(back) is type(tok)
        assert back.get_vocab() == tok.get_vocab()
        assert back(text).input_ids == tok(text).input_ids
        assert back.model_max_length == tok.model_max_length and back.pad_token == tok.pad_token
    back = AutoTokenizer.from_pretrained(tmp_path / "llm")
    assert back.convert_tokens_to_ids(SPECIAL_TOKENS) == llm.convert_tokens_to_ids(SPECIAL_TOKENS)
    assert back.tokenize(IMG_START + IMAGE_PLACEHOLDER) == [IMG_START, IMAGE_PLACEHOLDER]


def test_deterministic_same_corpus_same_vocab(llm, sd):
    assert build_llm_tokenizer().backend_tokenizer.to_str() == llm.backend_tokenizer.to_str()
    assert build_sd_tokenizer().backend_tokenizer.to_str() == sd.backend_tokenizer.to_str()
    corpus = toy_corpus()
    assert corpus == toy_corpus() and len(corpus) > 100


def test_train_bpe_breaks_ties_by_text():
    # ("a","b") and ("b","c") both occur twice: the lexicographically smaller pair goes first
    assert train_bpe({("a", "b", "c"): 2}, 2) == [("a", "b"), ("ab", "c")]
    assert train_bpe({("x",): 5}, 3) == []  # nothing left to merge

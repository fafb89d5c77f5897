"""Two small, genuinely different tokenizers trained offline on the toy world's text.

The paper's dynamic vocabulary transformation matrix (§2.4.2, eq. 10) maps between the LLM's
vocabulary (Llama: SentencePiece BPE, "▁" word prefix, case kept) and Stable Diffusion's (CLIP: BPE
on lower-cased words with a "</w>" end-of-word suffix). The toy presets need the same mismatch
without downloading anything, so this module trains both kinds with the `tokenizers` library:

* :func:`build_llm_tokenizer` -> ``LlamaTokenizer`` (Llama-style; byte fallback: the 256 tokens
  ``<0x00>``..``<0xFF>`` are added on top of ``vocab_size`` so no character is ever lost);
* :func:`build_sd_tokenizer` -> ``CLIPTokenizer`` (CLIP-style, pad = eos as in SD 2.1,
  ``model_max_length`` = 24 by default).

The LLM tokenizer learns its merges from the running text (frequent words become single tokens); the
SD tokenizer learns them from the corpus's *distinct* lower-cased words, each counted once, as if from
a different corpus (CLIP's was). So caption words really split differently, e.g. "▁triangle" vs
"t" + "riangle</w>", "▁yellow" vs "ye" + "llow</w>", and the DVTM has real work to do.
Both are deterministic: same corpus -> same vocabulary.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from tokenizers import Regex, pre_tokenizers
from transformers import CLIPTokenizer, LlamaTokenizer

from photochat_lib.data.tokens import SPECIAL_TOKENS

LLM_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, then [IMG], [/IMG], <image>
SD_BOS, SD_EOS = "<|startoftext|>", "<|endoftext|>"
SD_MAX_LENGTH = 24  # the longest toy caption is 22 SD tokens with bos/eos (tests check it fits)
SD_WORDS = (  # the distinct words CLIP-style merges are learnt from (see build_sd_tokenizer)
    '!', "'m", "'s", ',', '.', ':', '?', 'a', 'about', 'alex', 'all', 'and', 'are', 'at', 'b',
    'background', 'bad', 'ball', 'ben', 'big', 'black', 'block', 'blue', 'bought', 'box', 'by', 'bye',
    'came', 'can', 'care', 'circle', 'coin', 'colour', 'cool', 'course', 'craft', 'day', 'desk', 'do',
    'doing', 'fair', 'favourite', 'fine', 'flag', 'flea', 'found', 'fun', 'garage', 'go', 'going', 'good',
    'got', 'gray', 'great', 'green', 'guess', 'haha', 'have', 'hello', 'here', 'hey', 'hi', 'home', 'how',
    'huge', 'i', 'in', 'is', 'it', 'ivy', 'kite', 'know', 'last', 'later', 'left', 'leo', 'like', 'long',
    'looks', 'love', 'lucky', 'mall', 'market', 'max', 'me', 'mia', 'middle', 'mine', 'moment', 'morning',
    'my', 'nice', 'no', 'nora', 'not', 'now', 'objects', 'of', 'oh', 'okay', 'on', 'one', 'photo', 'pic',
    'picked', 'picture', 'plate', 'please', 'pretty', 'purple', 'put', 'really', 'red', 'right', 'sale',
    'sam', 'see', 'send', 'shop', 'should', 'show', 'small', 'so', 'soon', 'sounds', 'square', 'stopped',
    'store', 'sunday', 'sure', 'table', 'take', 'talk', 'tent', 'thanks', 'that', 'the', 'them', 'there',
    'they', 'think', 'this', 'tile', 'time', 'tiny', 'to', 'today', 'tom', 'too', 'took', 'toy',
    'triangle', 'up', 'want', 'was', 'weekend', 'went', 'what', 'where', 'white', 'why', 'with', 'would',
    'wow', 'yellow', 'yes', 'yesterday', 'you', 'zoe',
)
# CLIP's word splitter (transformers' CLIPTokenizer uses the same regex at encode time)
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def toy_corpus() -> list[str]:
    """Return the text the toy LLM tokenizer is trained on: toy-world messages (training phrasings), captions,
    word lists, and a fixed sample of the LLM's pretraining text (`toy.corpus`: knowledge, copying, scenes)."""
    import random

    from photochat_lib.data.toy_world import toy_texts  # lazy: the data package imports this module
    from photochat_lib.toy.corpus import copying_text, knowledge_text, scene_text
    from photochat_lib.toy.pretrain_llm import dialogue_turns
    rng = random.Random("photochat-tokenizer-corpus")
    dialogues = lambda rng: " ".join(t.text for t in dialogue_turns(rng))           # noqa: E731  photos in words
    pretraining = [f(rng) for f in (copying_text, knowledge_text, scene_text, dialogues) for _ in range(200)]
    return toy_texts() + pretraining + ["A: B:"]  # the chat layout's speaker tags (see data/collate.py)


def train_bpe(word_counts: dict[tuple[str, ...], int], n_merges: int) -> list[tuple[str, str]]:
    """Return up to n_merges BPE merges, most frequent pair first, ties broken by the pair's text.

    A tiny trainer of our own because `tokenizers`' BpeTrainer breaks count ties by hash order, which
    changes from one process to the next; the `tokenizers` BPE model still does all encoding.
    """
    words = [list(w) for w in word_counts]
    counts = list(word_counts.values())
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter = Counter()
        for w, c in zip(words, counts):
            for pair in zip(w, w[1:]):
                pairs[pair] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # deterministic tie-break
        merges.append(best)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i:i + 2] = [w[i] + w[i + 1]]
                i += 1
    return merges


def _vocab(specials: list[str], word_counts: dict[tuple[str, ...], int],
           vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return (vocab, merges): specials, then the sorted alphabet, then one token per merge."""
    alphabet = sorted({s for w in word_counts for s in w})
    merges = train_bpe(word_counts, max(0, vocab_size - len(specials) - len(alphabet)))
    tokens = specials + alphabet + [a + b for a, b in merges]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def build_llm_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 800) -> LlamaTokenizer:
    """Return a Llama-style BPE tokenizer (bos <s>, eos </s>, unk <unk>, pad <pad>, [IMG] [/IMG] <image>)."""
    texts = list(toy_corpus() if corpus is None else corpus)
    # Metaspace pre-tokenization: each whitespace-separated word gets the "▁" prefix; merges never
    # cross a word boundary (as SentencePiece's split_by_whitespace), nor join letters and punctuation
    # (so "picture?" is "▁picture" + "?", the same word as in "picture.")
    word_counts = Counter(tuple(unit) for t in texts for w in t.split()
                          for unit in re.findall(r"▁?\w+|▁?[^\w\s]", "▁" + w))
    vocab, merges = _vocab(LLM_SPECIALS + SPECIAL_TOKENS, dict(sorted(word_counts.items())), vocab_size)
    for b in range(256):  # Llama's byte fallback tokens: unseen characters become their UTF-8 bytes
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    llm = LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<pad>", add_bos_token=True,
                         add_eos_token=False, extra_special_tokens=list(SPECIAL_TOKENS),
                         padding_side="right")
    return llm


def build_sd_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 350,
                       model_max_length: int = SD_MAX_LENGTH) -> CLIPTokenizer:
    """Return a CLIP-style BPE tokenizer (lower case, "</w>" suffix, bos/eos, pad = eos as in SD 2.1).

    corpus: default `SD_WORDS`, the words of the toy world's first phrasing, kept fixed: CLIP's vocabulary was
    learnt once from its own corpus and does not follow the dialogue data; so the toy SD (an hour to pretrain)
    keeps its tokenizer however many phrasings the dialogue generator gains."""
    texts = [" ".join(SD_WORDS)] if corpus is None else list(corpus)
    split = pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True)
    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    words = sorted({b for t in texts for w, _ in split.pre_tokenize_str(t.lower())
                    for b, _ in to_bytes.pre_tokenize_str(w)})  # each distinct word counted once
    word_counts = {tuple(w[:-1]) + (w[-1] + "</w>",): 1 for w in words}
    vocab, merges = _vocab([SD_BOS, SD_EOS], word_counts, vocab_size)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)

"""Text metrics, share timing and mean ± std against hand-computed values."""
import math

import pytest

from photochat_lib.evaluation.metrics import (bleu, caption_bleu, extract_captions, format_mean_std, mean_std, rouge_l,
                                   share_timing, strip_photos, text_metrics, tokenize)


def test_identical_strings_score_100():
    refs = ["Hi Sam! How are you?", "I bought a red ball and a blue box."]
    b = bleu(refs, refs)
    assert b["BLEU-1"] == pytest.approx(100) and b["BLEU-2"] == pytest.approx(100)
    assert rouge_l(refs, refs) == pytest.approx(100)


def test_bleu_hand_checked_bigram_case():
    # unigrams: the cat _ on the mat -> 5/6 match; bigrams: the-cat, on-the, the-mat -> 3/5; same length: BP = 1
    b = bleu(["the cat sat on the mat"], ["the cat is on the mat"])
    assert b["BLEU-1"] == pytest.approx(100 * 5 / 6)
    assert b["BLEU-2"] == pytest.approx(100 * math.sqrt(5 / 6 * 3 / 5))


def test_bleu_is_corpus_level_with_brevity_penalty():
    # counts are pooled: unigram matches 2+1 of 2+1 predicted; lengths 3 vs 5 -> BP = exp(1 - 5/3)
    b = bleu(["a b", "c"], ["a b x", "c y"])
    assert b["BLEU-1"] == pytest.approx(100 * math.exp(1 - 5 / 3))


def test_tokenizer_lowercases_and_splits_punctuation():
    assert tokenize("Hi Sam! It's 3pm.") == ["hi", "sam", "!", "it", "'", "s", "3pm", "."]


def test_rouge_l_hand_example():
    # LCS("a b c d e", "a x c e") = "a c e" = 3 -> P = 3/4, R = 3/5, F = 2PR/(P+R) = 2/3
    assert rouge_l(["a x c e"], ["a b c d e"]) == pytest.approx(100 * 2 / 3)
    # mean over pairs, not pooled: (100 + 0) / 2
    assert rouge_l(["same words", "nothing"], ["same words", "different"]) == pytest.approx(50)


def test_photo_captions_are_stripped_from_text_metrics():
    pred = "Sure! [IMG] Objects in the photo: red circle[/IMG]"
    ref = "Sure! [IMG] Objects in the photo: blue square[/IMG]"
    assert strip_photos(pred) == "Sure!"
    assert extract_captions(ref) == ["Objects in the photo: blue square"]
    assert bleu([pred], [ref])["BLEU-1"] == pytest.approx(100)
    # a photo-only reference has no text: the pair is left out of the text metrics
    out = text_metrics(["hello there", "anything"], ["hello there", "[IMG] Objects in the photo: red circle[/IMG]"])
    assert out["n"] == 1 and out["BLEU-2"] == pytest.approx(100) and out["Rouge-L"] == pytest.approx(100)


def test_caption_bleu_scores_captions_of_shared_photos_only():
    preds = ["[IMG] red circle[/IMG]", "no photo here", "[IMG] red circle[/IMG]"]
    refs = ["ok [IMG] red circle[/IMG]", "[IMG] blue square[/IMG]", "text only"]
    assert caption_bleu(preds, refs)["BLEU-1"] == pytest.approx(100)  # only the first pair counts


def test_share_timing_confusion_table():
    pred = [True, True, False, False, True, False]
    ref = [True, False, True, False, True, True]
    # TP = 2, predicted = 3, reference = 4 -> P = 2/3, R = 1/2, F1 = 4/7
    out = share_timing(pred, ref)
    assert out["precision"] == pytest.approx(100 * 2 / 3)
    assert out["recall"] == pytest.approx(50)
    assert out["F1"] == pytest.approx(100 * 4 / 7)
    assert share_timing([False], [False]) == {"precision": 0.0, "recall": 0.0, "F1": 0.0}


def test_mean_std_uses_sample_std():
    runs = [{"BLEU-1": 10.0, "FID": 70.0}, {"BLEU-1": 12.0, "FID": 80.0}, {"BLEU-1": 14.0, "FID": 90.0}]
    out = mean_std(runs)
    assert out["BLEU-1"] == {"mean": 12.0, "std": 2.0, "n": 3}  # sqrt(((-2)^2 + 0 + 2^2) / (3 - 1)) = 2
    assert out["FID"]["std"] == pytest.approx(10.0)
    assert mean_std([{"IS": 3.5}])["IS"] == {"mean": 3.5, "std": 0.0, "n": 1}
    assert format_mean_std(14.4712, 0.9366) == "14.47 ± 0.94"


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"references\[0\] must be a string"):
        rouge_l(["a"], [None])
    with pytest.raises(ValueError, match="run 1 has no metric 'FID'"):
        mean_std([{"FID": 1.0}, {"IS": 2.0}])


def test_paired_difference_interval_and_verdicts():
    """end2end − pipeline over seeds: mean, 95% t-interval (df = n − 1), and ahead / behind / tied in words."""
    from photochat_lib.evaluation.metrics import paired_difference, t_975
    d = paired_difference([12.0, 13.0, 14.0], [10.0, 10.0, 10.0], "BLEU-2")      # diffs 2, 3, 4: sd 1
    assert d["mean"] == pytest.approx(3.0) and d["n"] == 3
    assert d["high"] - d["mean"] == pytest.approx(4.303 / 3 ** 0.5) and d["verdict"] == "ahead"
    assert paired_difference([10, 10, 10], [12, 13, 14], "BLEU-2")["verdict"] == "behind"
    assert paired_difference([1, 3, 2], [2, 2, 2], "BLEU-2")["verdict"] == "tied"   # diffs −1, 1, 0
    assert paired_difference([70, 71, 72], [80, 80, 80], "FID")["verdict"] == "ahead"  # lower FID is better
    assert t_975(1) == 12.706 and t_975(40) == 1.96
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1], "BLEU-2")

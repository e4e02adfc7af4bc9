"""Answer kinds: what a question wants, and whether a sentence holds it (generic English cues)."""
from __future__ import annotations

import pytest

from assistant import answertype as at


@pytest.mark.parametrize("question, want", [
    ("Approximately how many items are in the costume collection?", "number"),
    ("How long did the fighting last?", "number"),
    ("What percentage of patients recovered?", "number"),
    ("When was the market opened?", "when"),
    ("In what year did the war end?", "when"),
    ("Who led the expansion of the empire?", "who"),
    ("Which company built the bridge?", "who"),
    ("Where is kaolin clay mined?", "where"),
    ("What does lactic acid do in skincare?", None),
    ("Why is the sky blue?", None),
])
def test_kind(question, want):
    assert at.kind(question) == want


def test_holds_needs_an_answer_the_question_does_not_already_say():
    q = "How long did the Seven Years War last?"
    words = at.question_words(q)
    assert at.holds("The fighting lasted six years, from 1756.", "number", words)
    # the only number-like word is the question's own "Seven"
    assert not at.holds("The entire conflict is known as the Seven Years' War.", "number", words)
    who = at.question_words("Who led the most rapid expansion of the Mongol Empire?")
    assert at.holds("The fastest expansion came under Ögedei Khan.", "who", who)
    assert not at.holds("At his death the Mongol Empire stretched far.", "who", who)
    assert not at.holds("Anything at all 1998.", None, who)


@pytest.mark.parametrize("question, want", [
    ("What amino acids are in mesotherapy injections?", "list"),
    ("Which vitamins does the serum contain?", "list"),
    ("What sports are played in Warsaw?", "list"),
    ("What is microneedling?", None),  # a definition, not a list
    ("What does lactic acid do in skincare?", None),
    ("What was the purpose of this study?", None),
    ("How many teams were there?", "number"),  # the number kind comes first
])
def test_list_kind(monkeypatch, question, want):
    monkeypatch.setattr(at, "LIST_KIND", True)
    assert at.kind(question) == want


def test_list_kind_is_off_unless_switched_on(monkeypatch):
    monkeypatch.setattr(at, "LIST_KIND", False)
    assert at.kind("What amino acids are in mesotherapy injections?") is None


def test_a_list_is_what_follows_a_cue_with_commas():
    """'including A, B, ...' holds a list; a bare series of the question's own words does not,
    nor does a cue without an enumeration."""
    words = at.question_words("What amino acids are in mesotherapy injections?")
    listed = "Amino acids, including alanine, arginine, glycine and tryptophan, are also added."
    assert {"alanine", "arginine"} <= set(at.candidates(listed, "list"))
    assert at.holds(listed, "list", words)
    assert not at.holds("It is a cocktail of vitamins, minerals, amino acids and hyaluronic acid.", "list", words)
    assert not at.holds("Some acids, like lactic acid peel.", "list", words)  # a cue, no enumeration after it

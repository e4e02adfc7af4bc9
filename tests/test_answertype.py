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

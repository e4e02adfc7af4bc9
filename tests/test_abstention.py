"""Abstention: the unknown-word signal judges meaning (vocabulary bridging), and a follow-up is
judged with its conversation. Real model and index, over small corpora written here."""
from __future__ import annotations

from dataclasses import replace

import pytest

from assistant import extraction
from assistant.extraction import Evidence, confidence, evidence
from tests.fixtures_core import open_assistant, write_corpus

LIBRARY = {
    "microneedling.md": (
        "# Microneedling\n\n"
        "Microneedling is a cosmetic procedure that uses fine needles to create tiny wounds in the skin. "
        "The wounds make the skin produce new collagen.\n\n"
        "## Comfort\n\n"
        "The procedure can be painful. Most patients feel some pain and stinging for a few minutes, "
        "and a numbing cream is applied first to make it bearable.\n"
    ),
    "tea.md": (
        "# Frostleaf tea\n\n"
        "Frostleaf tea is brewed from the leaves of a mountain shrub. "
        "The leaves are picked in early spring and dried in the shade.\n"
    ),
}


@pytest.fixture(scope="module")
def library(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("bridging")
    return open_assistant(write_corpus(root / "corpus", LIBRARY), root / "index")


def _evidence(a, text: str, embedder=None) -> Evidence:
    loaded = a._current()
    q = loaded.retriever.prepare(text, a.embedder.encode_query(text))
    hits = loaded.retriever.search(q, k=10)
    return evidence(loaded.index, q, hits[0], hits, embedder)


def test_a_missing_word_with_a_synonym_in_the_best_passages_is_not_unknown(library):
    """'hurt' appears in no article, 'pain' does: with the model's word vectors it is known."""
    assert "hurt" not in library._current().index.vocab
    spelled = _evidence(library, "Does microneedling hurt?")
    meant = _evidence(library, "Does microneedling hurt?", library.embedder)
    assert spelled.unknown == pytest.approx(0.5)  # microneedl known, hurt not
    assert meant.unknown == 0.0
    assert confidence(meant) > confidence(spelled)


def test_a_missing_word_with_nothing_close_stays_unknown(library):
    """'insurance' has no word near it in meaning: still unknown (a near-topic question)."""
    e = _evidence(library, "Does insurance cover microneedling?", library.embedder)
    assert e.unknown > 0.3


def test_bridging_can_be_switched_off(library, monkeypatch):
    monkeypatch.setattr(extraction, "BRIDGE_SIM", 1.0)
    assert _evidence(library, "Does microneedling hurt?", library.embedder).unknown == pytest.approx(0.5)


def test_bridging_encodes_only_the_shortlisted_words(library, monkeypatch):
    """The model encodes the few pool words nearest the asked one by the input embeddings, not
    every word of the best passages, and bridges the same words as with the whole pool."""
    assert len(extraction._shortlist(["x"] * 3, ["hurt"])) == 3  # a short pool is kept whole
    seen: list[str] = []

    class Spy:
        def encode_queries(self, words):
            seen.extend(words)
            return library.embedder.encode_queries(words)

    extraction._WORD_VECTORS.clear()
    monkeypatch.setattr(extraction, "BRIDGE_SHORTLIST", 4)
    short = _evidence(library, "Does microneedling hurt?", Spy())
    assert short.unknown == 0.0 and ("painful" in seen or "pain" in seen)
    assert len(seen) <= 4 + 1  # the shortlist and the asked word
    monkeypatch.setattr(extraction, "BRIDGE_SHORTLIST", 10_000)
    extraction._WORD_VECTORS.clear()
    seen.clear()
    whole = _evidence(library, "Does microneedling hurt?", Spy())
    assert len(seen) > 20 and whole == short


def test_the_sentence_coverage_reads_the_best_sentence(library):
    """The best sentence holds the question's words: its share is the passage's at most, and
    here all of them."""
    e = _evidence(library, "When are the leaves picked and dried?")
    assert e.sentence_coverage == pytest.approx(1.0)
    assert e.sentence_coverage <= e.coverage + 1e-9
    other = _evidence(library, "Which shrub gives frostleaf tea, and when is it picked?")
    assert other.sentence_coverage < other.coverage


def test_confidence_reads_every_weighted_field():
    e = Evidence(dense=0.5, dense_sentence=0.5, coverage=0.5, unknown=0.0, sentence_coverage=1.0)
    base = {"bias": 0.0, "dense": 0.0, "dense_sentence": 0.0, "coverage": 0.0, "unknown": 0.0}
    assert confidence(e, base) == pytest.approx(0.5)
    assert confidence(e, {**base, "sentence_coverage": 2.0}) > 0.85
    assert confidence(replace(e, unknown=1.0), {**base, "unknown": -2.0}) < 0.15


# --- a follow-up judged with its conversation --------------------------------------------------

BANK = {
    "savings.md": (
        "# Opening a savings account at Northbank\n\n"
        "To open a savings account at Northbank, visit any branch or apply online. You will need a passport "
        "or a driving licence, and a recent utility bill as proof of address. Applicants must be at least 16 "
        "years old.\n\n"
        "## Interest\n\n"
        "The account pays 2.1% interest a year, credited monthly. There is no monthly fee and no minimum balance.\n"
    ),
    "garden.md": (
        "# Growing tomatoes\n\n"
        "Tomatoes need six to eight hours of sun a day. Water them deeply twice a week and stake the plants "
        "once they reach a foot tall. Pick the fruit when it is fully coloured.\n"
    ),
}
OPENING = "How do I open a savings account at Northbank?"


@pytest.fixture(scope="module")
def bank(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("bank")
    a = open_assistant(write_corpus(root / "corpus", BANK), root / "index")
    a.settings = replace(a.settings, w_context=0.5)
    return a


def _follow_up(a, question: str):
    loaded = a._current()
    r = loaded.retriever
    q = r.prepare(question, a.embedder.encode_query(question))
    q.context = r.prepare(OPENING, a.embedder.encode_query(OPENING))
    return loaded.index, q, r.search(q, k=10)


@pytest.mark.parametrize("question", ["What should I bring?", "Which documents?"])
def test_a_follow_up_searched_with_its_conversation_is_judged_with_it(bank, monkeypatch, question):
    """Alone, 'What should I bring?' shares nothing with the library; read with the question it
    follows, its best passage (the one listing passport and utility bill) answers it."""
    index, q, hits = _follow_up(bank, question)
    assert "passport" in index.passages[hits[0].row].text
    with_history = confidence(extraction.judged(index, q, hits, bank.embedder))
    monkeypatch.setattr(extraction, "JUDGE_WITH_CONTEXT", False)
    alone = confidence(extraction.judged(index, q, hits, bank.embedder))
    assert alone < 0.5 <= with_history


def test_the_follow_up_is_answered_through_ask(bank):
    from assistant import conversation

    turn = conversation.resolve("What should I bring?", [OPENING], bank._current().index)
    assert not turn.ids  # no subject in play: the history context is what carries it
    res = bank.ask("What should I bring?", [OPENING])
    assert not res.abstained and "passport" in res.answers[0].text


@pytest.mark.parametrize("question", ["How tall is Mount Everest?", "Who won the last world cup?"])
def test_a_question_about_something_else_is_not_carried_by_the_history(bank, question):
    """A self-contained question on another topic gets no history context, so it is judged on
    its own words and abstains."""
    from assistant import conversation

    loaded = bank._current()
    turn = conversation.resolve(question, [OPENING], loaded.index)
    assert conversation._context(loaded.retriever, bank.embedder, bank.settings, turn, [OPENING]) is None
    assert bank.ask(question, [OPENING]).abstained


def test_a_short_follow_up_leans_on_the_conversation():
    from assistant.conversation import _leans

    assert _leans("Which documents?") and _leans("And the rate?") and _leans("Is it free?")
    assert not _leans("How tall is Mount Everest?") and not _leans("Who won the last world cup?")

"""From ranked passages to answers: verbatim text with offsets, highlights, near-duplicate
grouping into also_in, and abstention. Real model and index."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from assistant.extraction import ABSTAIN_MESSAGE, answers_from_hits
from assistant.models import AskResponse
from tests.fixtures_core import (
    COOLING_ID,
    DATA,
    FROSTLEAF_ID,
    SHARED_ANSWER,
    SHARED_PARAGRAPH,
    SHARED_QUESTION,
    SMALL_CORPUS,
    open_assistant,
    write_corpus,
)


def seed_cases(name: str) -> list[dict]:
    return [json.loads(x) for x in (DATA / name).read_text(encoding="utf-8").splitlines() if x.strip()]


def check_answer_shape(a, res: AskResponse) -> None:
    """Every answer is verbatim article text at its offsets, with highlights on its sentences."""
    for ans in res.answers:
        doc = a.document(ans.source.doc_id)
        assert ans.text == doc.text[ans.source.start : ans.source.end]
        assert ans.source.title == doc.title and ans.source.path == doc.path
        assert ans.highlight, ans.text[:60]
        sentences = {
            (s.start - ans.source.start, s.end - ans.source.start)
            for p in a._current().index.passages
            if p.doc_id == ans.source.doc_id and p.start == ans.source.start
            for s in p.sentences
        }
        prev = 0
        for h in ans.highlight:
            assert prev <= h.start < h.end <= len(ans.text)
            assert (h.start, h.end) in sentences  # a whole sentence of the passage
            prev = h.end
        assert ans.source.doc_id not in {x.doc_id for x in ans.also_in}
        assert len({x.doc_id for x in ans.also_in}) == len(ans.also_in)


# --- near-duplicates ---------------------------------------------------------------------------

def test_copied_paragraph_answered_once_citing_the_other_article(small_assistant):
    a = small_assistant
    # the copied paragraph really sits in different passages (different text around it)
    passages = [p for p in a._current().index.passages if SHARED_ANSWER in p.text]
    assert {p.doc_id for p in passages} == {FROSTLEAF_ID, COOLING_ID}
    assert len({p.text for p in passages}) == 2
    for top_k in (1, 3, 5):
        res = a.ask(SHARED_QUESTION, top_k=top_k)
        assert not res.abstained
        check_answer_shape(a, res)
        holding = [x for x in res.answers if SHARED_ANSWER in x.text]
        assert len(holding) == 1, [(x.source.doc_id, x.text[:50]) for x in res.answers]
        ans = holding[0]
        assert res.answers[0] is ans
        other = ({FROSTLEAF_ID, COOLING_ID} - {ans.source.doc_id}).pop()
        assert [x.doc_id for x in ans.also_in] == [other]
        assert ans.also_in[0].title == a.document(other).title
        assert ans.also_in[0].path == a.document(other).path
        assert any(SHARED_ANSWER in ans.text[h.start : h.end] for h in ans.highlight)


def test_different_passages_are_not_folded_together(small_assistant):
    res = small_assistant.ask("How long does a glowberry peel session take?", top_k=3)
    assert not res.abstained
    top = res.answers[0]
    assert top.source.doc_id == "glowberry-peel" and top.also_in == []
    assert any("about twenty minutes" in top.text[h.start : h.end] for h in top.highlight)
    check_answer_shape(small_assistant, res)


@pytest.fixture(scope="module")
def repeating_assistant(tmp_path_factory, embedder):
    """The small corpus, with cooling-masks repeating the copied paragraph in a closing summary."""
    root = tmp_path_factory.mktemp("repeating")
    repeating = SMALL_CORPUS[f"{COOLING_ID}.txt"] + "Summary\n" + SHARED_PARAGRAPH + "\nThat is all there is to using a frostleaf mask well.\n"
    corpus = write_corpus(root / "corpus", {**SMALL_CORPUS, f"{COOLING_ID}.txt": repeating})
    return open_assistant(corpus, root / "index")


def _shared_hits(a, order_docs: list[int]):
    """Real hits for the passages holding the copied paragraph, in a chosen order
    (indexes into [frostleaf, cooling first copy, cooling second copy])."""
    loaded = a._current()
    index = loaded.index
    rows = [i for i, p in enumerate(index.passages) if SHARED_ANSWER in p.text]
    by_doc = sorted((index.passages[r].doc_id, index.passages[r].start, r) for r in rows)
    assert [d for d, _, _ in by_doc] == [FROSTLEAF_ID, COOLING_ID, COOLING_ID]
    q = loaded.retriever.prepare(SHARED_QUESTION, a.embedder.encode_query(SHARED_QUESTION))
    found = {h.row: h for h in loaded.retriever.search(q, k=3, restrict=np.array(rows))}
    assert set(found) == set(rows)
    return index, [dataclasses.replace(found[by_doc[i][2]], score=1.0 - 0.1 * n) for n, i in enumerate(order_docs)]


def test_copies_in_one_article_are_listed_once_in_also_in(repeating_assistant):
    a = repeating_assistant
    index, hits = _shared_hits(a, [0, 1, 2])
    answers = answers_from_hits(index, hits, a.settings, top_k=3)
    assert len(answers) == 1
    assert answers[0].source.doc_id == FROSTLEAF_ID
    assert [x.doc_id for x in answers[0].also_in] == [COOLING_ID]


def test_paragraph_repeated_within_an_article_is_answered_once(repeating_assistant):
    a = repeating_assistant
    # the ranking puts one copy of cooling-masks first (as it does for some questions)
    index, hits = _shared_hits(a, [2, 0, 1])
    answers = answers_from_hits(index, hits, a.settings, top_k=3)
    assert len(answers) == 1, [(x.source.doc_id, x.source.start, [y.doc_id for y in x.also_in]) for x in answers]
    assert [x.doc_id for x in answers[0].also_in] == [FROSTLEAF_ID]


# --- verbatim answers and highlights on the seed corpus ----------------------------------------

def test_answers_are_verbatim_and_highlight_the_answering_sentence(seed_assistant):
    a = seed_assistant
    cases = seed_cases("seed_questions.jsonl")
    assert len(cases) >= 15
    found = highlighted = 0
    misses = []
    for case in cases:
        turn = case["turns"][0]
        res = a.ask(turn["q"], top_k=3)
        check_answer_shape(a, res)
        top = res.answers[0]
        wanted = [e for e in turn["expect_any"] if e in top.text]
        if wanted:
            found += 1
            spans = [top.text[h.start : h.end] for h in top.highlight]
            if any(e in s for e in wanted for s in spans):
                highlighted += 1
            else:
                misses.append((turn["q"], spans))
    # the top passage holds the answer for most questions, and the highlight is on it nearly always
    assert found >= 0.8 * len(cases)
    assert highlighted >= 0.9 * found, misses


# --- abstention --------------------------------------------------------------------------------

@pytest.mark.parametrize("question", ["What is the capital of France?", "How tall is Mount Everest?"])
def test_off_topic_questions_abstain(seed_assistant, question):
    res = seed_assistant.ask(question)
    assert res.abstained is True
    assert res.message == ABSTAIN_MESSAGE
    assert res.answers == []


def test_off_topic_question_set_abstains(seed_assistant):
    cases = seed_cases("offtopic.jsonl")
    answered = [c["turns"][0]["q"] for c in cases if not seed_assistant.ask(c["turns"][0]["q"]).abstained]
    assert answered == []


def test_in_domain_questions_do_not_abstain_and_find_the_answer(seed_assistant):
    cases = seed_cases("seed_questions.jsonl")
    abstained, missed = [], []
    for case in cases:
        turn = case["turns"][0]
        res = seed_assistant.ask(turn["q"], top_k=3)
        if res.abstained:
            abstained.append(turn["q"])
            continue
        assert res.message is None and res.answers
        if not any(e in x.text for x in res.answers for e in turn["expect_any"]):
            missed.append(turn["q"])
    assert abstained == []
    assert len(missed) <= 1, missed  # hit@3 is 1.0 today; allow one slip, not a regression


def test_top_k_bounds_the_number_of_answers(seed_assistant):
    for k in (1, 2, 5):
        res = seed_assistant.ask("What are the benefits of mesotherapy?", top_k=k)
        assert not res.abstained and len(res.answers) == k
        assert all(0.0 <= x.score <= 1.0 for x in res.answers)
        assert len({(x.source.doc_id, x.source.start) for x in res.answers}) == k  # distinct passages


@pytest.mark.parametrize("top_k", [1, 3])
def test_comparison_questions_return_at_most_top_k_answers(seed_assistant, top_k):
    res = seed_assistant.ask("Has the FDA approved PRP or mesotherapy?", top_k=top_k)
    assert not res.abstained
    assert len(res.answers) <= top_k, [(x.about, x.source.doc_id) for x in res.answers]

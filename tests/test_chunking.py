"""Passages and sentences: offsets, structure (headings, lists, long paragraphs), abbreviations,
and ids that stay stable across edits. No model needed."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest

from assistant.chunking import chunk, passage_id, split_sentences
from assistant.config import Settings
from assistant.documents import Document, load_corpus
from tests.fixtures_core import COOLING, FROSTLEAF, GLOWBERRY, SEED_CORPUS

SETTINGS = Settings()
TARGET, MAX = SETTINGS.passage_target_words, SETTINGS.passage_max_words


def make_doc(text: str, doc_id: str = "d") -> Document:
    return Document(doc_id=doc_id, title="T", path=f"{doc_id}.txt", text=text, sha256="0")


def words(s: str) -> int:
    return len(s.split())


def sentence(i: int, n: int = 12) -> str:
    """A distinct n-word sentence, numbered in words so no two are alike."""
    filler = ["the", "frostleaf", "mask", "calms", "oily", "skin", "after", "several", "weekly", "uses", "in", "summer"]
    body = " ".join(filler[(i + k) % len(filler)] for k in range(n - 2))
    return f"Step{i} says {body}."


def all_docs() -> list[Document]:
    seed, _ = load_corpus(SEED_CORPUS)
    own = [make_doc(t, i) for i, t in (("frostleaf", FROSTLEAF), ("cooling", COOLING), ("glowberry", GLOWBERRY))]
    return seed + own


# --- offsets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("params", [(TARGET, MAX), (70, 120), (40, 60)])
def test_offsets_round_trip_for_passages_and_sentences(params):
    docs = all_docs()
    assert len(docs) == 8
    for doc in docs:
        ps = chunk(doc, *params)
        assert ps, doc.doc_id
        prev_end = -1
        for p in ps:
            assert doc.text[p.start : p.end] == p.text
            assert p.doc_id == doc.doc_id
            assert p.start > prev_end  # in reading order, no overlap
            prev_end = p.end
            assert p.sentences[0].start == p.start and p.sentences[-1].end == p.end
            for s in p.sentences:
                st = doc.text[s.start : s.end]
                assert st and st == st.strip() and "\n" not in st
                assert p.start <= s.start < s.end <= p.end
        # nothing is lost: every character outside the passages is a line break or a space
        # between two windows of a split paragraph, or a bare heading at the very end
        inside = bytearray(len(doc.text))
        for p in ps:
            inside[p.start : p.end] = b"\x01" * (p.end - p.start)
        tail = doc.text.rstrip().rsplit("\n", 1)[-1]
        outside = "".join(c for c, i in zip(doc.text, inside) if not i)
        assert outside.strip() == "" or outside.strip() == tail, (doc.doc_id, outside[:80])


def test_sentence_offsets_with_an_offset_argument():
    text = "Short one. Another one here! And a question? Last."
    spans = split_sentences(text, offset=100)
    assert [text[a - 100 : b - 100] for a, b in spans] == ["Short one.", "Another one here!", "And a question?", "Last."]


# --- sentences ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Mesotherapy vs. microneedling is a common question. It depends on the skin.",
     ["Mesotherapy vs. microneedling is a common question.", "It depends on the skin."]),
    ("Some peels use acids, e.g. Lactic acid from milk. Others use enzymes.",
     ["Some peels use acids, e.g. Lactic acid from milk.", "Others use enzymes."]),
    ("Dr. Smith treats acne scars. She trained with Prof. Jones in Oslo.",
     ["Dr. Smith treats acne scars.", "She trained with Prof. Jones in Oslo."]),
    ("The peel was developed by J. R. Hartley in 1998. It is still sold.",
     ["The peel was developed by J. R. Hartley in 1998.", "It is still sold."]),
    ("It is approved in the U.S. Food and Drug Administration list, i.e. Cleared. Really?",
     ["It is approved in the U.S. Food and Drug Administration list, i.e. Cleared.", "Really?"]),
    ("Results differ! Is it safe? Yes. \u201cIt is,\u201d she said. (Mostly.) Done.",
     ["Results differ!", "Is it safe?", "Yes.", "\u201cIt is,\u201d she said.", "(Mostly.)", "Done."]),
    ("A session lasts 20 min. and costs 80 dollars.", ["A session lasts 20 min. and costs 80 dollars."]),
    ("Results improved. 80 percent of patients were happy.", ["Results improved.", "80 percent of patients were happy."]),
])
def test_sentence_splitter(text, expected):
    assert [text[a:b] for a, b in split_sentences(text)] == expected


def test_abbreviations_stay_inside_sentences_of_passages():
    text = (
        "Dr. Hartley compared mesotherapy vs. microneedling in 2020, e.g. for acne scars on the cheeks.\n"
        "The results were published by A. B. Larsen the next year."
    )
    ps = chunk(make_doc(text))
    got = [text[s.start : s.end] for p in ps for s in p.sentences]
    assert got == text.split("\n")


# --- structure ---------------------------------------------------------------------------------

HEADED_LIST = """Frostleaf and Glowberry Compared
Both treatments are popular, cheap and easy to use at home, but they work in very different ways. The frostleaf mask is a cooling clay that draws oil out of the skin, while the glowberry peel is a mild fruit-acid peel that lifts dull surface cells away. Dermatologists often suggest trying both over a year, because each suits a different season and a different skin problem.
Pain and Recovery:
- Frostleaf mask: It does not hurt at all, although some people feel a mild cooling tingle.
- Glowberry peel: It stings a little while the fruit acids work, and the skin can look pink for an hour.
- Both treatments: Neither needs downtime, but wear sunscreen for a few days.
Which One to Choose
Choose the frostleaf mask for oily skin in summer and the glowberry peel for dull skin in winter.
"""


def test_heading_stays_with_the_list_items_under_it():
    doc = make_doc(HEADED_LIST)
    ps = chunk(doc, TARGET, MAX)
    holder = [p for p in ps if "Pain and Recovery:" in p.text]
    assert len(holder) == 1
    p = holder[0]
    assert p.text.startswith("Pain and Recovery:")
    assert p.text.count("\n- ") == 3  # all three items with their heading
    assert p.heading == "Pain and Recovery:"
    assert p.sentences[0].heading  # the heading line is context, not an answer
    assert not any(s.heading for s in p.sentences[1:])
    # the closing heading stays with its paragraph too
    last = [p for p in ps if "Which One to Choose" in p.text]
    assert len(last) == 1 and "Choose the frostleaf mask" in last[0].text


def test_heading_stays_with_its_whole_list_when_a_paragraph_follows():
    text = """Frostleaf and Glowberry Compared
Pain and Recovery:
- Frostleaf mask: It does not hurt at all, although some people feel a mild cooling tingle on the cheeks and forehead that fades within five minutes of rinsing the mask off with water.
- Glowberry peel: It stings a little while the fruit acids work, and the skin can look pink for an hour or two afterwards, especially on the nose and around the mouth.
- Both treatments: Neither needs any downtime, so most people go straight back to work, but you should wear sunscreen for a few days because freshly treated skin burns more easily.
Most people alternate the two treatments through the year, using the cooling mask in the hot summer months when the skin is oily and the fruit peel in winter when it looks dull and grey. Dermatologists say this rhythm suits most skin types, as long as the skin is not broken or sunburnt.
"""
    ps = chunk(make_doc(text), TARGET, MAX)
    holder = [p for p in ps if "Pain and Recovery:" in p.text]
    assert words(holder[0].text) <= MAX
    assert holder[0].text.count("\n- ") == 3


def test_list_items_are_never_cut():
    items = [f"- Item {i}: " + " ".join(sentence(10 * i + k, 11) for k in range(3)) for i in range(12)]
    text = "Everything About the Frostleaf Mask:\n" + "\n".join(items)
    doc = make_doc(text)
    for params in ((TARGET, MAX), (70, 120), (40, 60)):
        ps = chunk(doc, *params)
        assert len(ps) > 2  # the list is long: it must be split somewhere...
        for item in items:  # ...but only between items
            start = text.index(item)
            inside = [p for p in ps if p.start <= start < p.end]
            assert len(inside) == 1 and inside[0].end >= start + len(item), item[:20]


def test_long_paragraph_split_at_sentence_boundaries_within_max_words():
    para = " ".join(sentence(i, 15) for i in range(24))  # 360 words, one line
    doc = make_doc("Frostleaf Mask Notes\n" + para)
    for target, mx in ((TARGET, MAX), (70, 120)):
        ps = chunk(doc, target, mx)
        assert len(ps) >= 3
        for p in ps:
            assert words(p.text) <= mx, (target, mx, words(p.text))
            assert re.fullmatch(r"(Frostleaf Mask Notes\n)?Step\d+ .*\.", p.text, re.S), p.text[:40]
        # the windows cover the paragraph exactly, each cut between two sentences
        starts = {doc.text.index(sentence(i, 15)) for i in range(24)}
        for p in ps[1:]:
            assert p.start in starts


@pytest.mark.parametrize("n_sentences, n_words, target, mx", [
    (24, 15, 50, 80),  # 360 words: six windows of 45 words, then one of 90
    (11, 10, 80, 100),  # 110 words: round(110/80) = 1 window, not split at all
])
def test_long_paragraph_never_exceeds_max_words_whatever_the_target(n_sentences, n_words, target, mx):
    para = " ".join(sentence(i, n_words) for i in range(n_sentences))
    ps = chunk(make_doc(para), target_words=target, max_words=mx)
    assert all(words(p.text) <= mx for p in ps), [words(p.text) for p in ps]


def test_short_article_is_one_passage_and_bare_trailing_heading_has_none():
    doc = make_doc("Glowberry Peel Guide\nThe glowberry peel takes twenty minutes.\nIt is repeated every four weeks.\nRelated Treatments")
    ps = chunk(doc, TARGET, MAX)
    assert len(ps) == 1
    assert ps[0].text == "Glowberry Peel Guide\nThe glowberry peel takes twenty minutes.\nIt is repeated every four weeks."


# --- stable ids --------------------------------------------------------------------------------

def test_ids_are_content_hashes_and_stable():
    docs = all_docs()
    for doc in docs:
        a, b = chunk(doc, TARGET, MAX), chunk(doc, TARGET, MAX)
        assert [p.id for p in a] == [p.id for p in b]
        assert all(p.id == passage_id(doc.doc_id, p.text) for p in a)
        assert all(re.fullmatch(r"[0-9a-f]{16}", p.id) for p in a)
    all_ids = [p.id for doc in docs for p in chunk(doc, TARGET, MAX)]
    assert len(set(all_ids)) == len(all_ids)
    # the same text under another doc id is another passage
    g = make_doc(GLOWBERRY, "glowberry")
    assert {p.id for p in chunk(g)}.isdisjoint({p.id for p in chunk(replace(g, doc_id="other"))})


def _edit_changes(doc: Document, old: str, new: str) -> tuple[set[str], list]:
    before = chunk(doc, TARGET, MAX)
    text = doc.text.replace(old, new)
    assert text != doc.text and text.count(new) == 1
    after = chunk(replace(doc, text=text), TARGET, MAX)
    gone = {p.id for p in before} - {p.id for p in after}
    at = text.index(new)
    covering = [p for p in after if p.start <= at < p.end]
    fresh = [p for p in after if p.id not in {q.id for q in before}]
    assert covering and all(p in fresh for p in covering)  # the edited passage did change
    return gone, [p for p in fresh if p not in covering]


def test_editing_one_paragraph_changes_only_the_passages_covering_it():
    seed, _ = load_corpus(SEED_CORPUS)
    doc = next(d for d in seed if d.doc_id == "prp-therapy-vs-mesotherapy")
    n = len(chunk(doc, TARGET, MAX))
    # a word changed (same length): only that passage gets a new id, whatever its offsets
    gone, others = _edit_changes(doc, "Biostimulation also supports", "Biostimulation further supports")
    assert len(gone) == 1 and others == []
    # a paragraph made longer: passages of other sections (a heading starts one) keep their ids
    old = "But it is considered safe for rejuvenating aged skin on the neck too."
    gone, others = _edit_changes(doc, old, old + " It is also used on the hands and the chest.")
    assert len(gone) == 1 and others == [], n
    # an edit early in the article shifts every later offset but no later id
    first = chunk(doc, TARGET, MAX)
    text = doc.text.replace("Skin aging occurs", "Skin ageing occurs")
    second = chunk(replace(doc, text=text), TARGET, MAX)
    assert [p.id for p in first[1:]] == [p.id for p in second[1:]]


def test_lengthening_one_paragraph_changes_only_the_passages_covering_it():
    seed, _ = load_corpus(SEED_CORPUS)
    doc = next(d for d in seed if d.doc_id == "prp-therapy-vs-mesotherapy")
    old = "Other ingredients can include cytokines and reducing agents for inflammation."
    gone, others = _edit_changes(doc, old, old + " This added sentence makes the paragraph a little longer than before.")
    assert others == [], [p.text[:60] for p in others]

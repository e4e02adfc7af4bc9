"""Retrieval rewrites that hold on any corpus: hyphenated spellings, definition questions, light
verbs. Real model and index over small corpora written here."""
from __future__ import annotations

from dataclasses import replace

import pytest

from assistant.index import tokenize
from assistant.retrieval import Retriever
from tests.fixtures_core import open_assistant, write_corpus

DEFINE_CORPUS = {
    "zelmar-vs-quillan.txt": """Zelmar vs. Quillan

Method:
- Zelmar: uses chilled rollers on the scalp.
- Quillan: uses warm stones on the back.
""",
    "spa-history.txt": """A Short History of Coastal Spas

Coastal spas first offered warm baths. Zelmar, also known as scalp chilling, is a spa treatment that cools the scalp with chilled steel rollers to calm irritation. Most of the old spas now offer Zelmar in winter.
""",
    "cryo.txt": """The Cryo-Facial

A cryo-facial session takes twelve minutes and uses a stream of cold nitrogen vapour over the face.

Afterwards the skin looks brighter for a day or two.
""",
    "tonics.txt": """Herbal Tonics

The harbourside market made a profit last year selling jars of tonic to tourists.

Verrow tonic is brewed from nettle leaves and honey over three days, then bottled cold.
""",
}


@pytest.fixture(scope="module")
def define_assistant(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("define")
    return open_assistant(write_corpus(root / "corpus", DEFINE_CORPUS), root / "index")


def test_hyphenated_words_are_also_indexed_joined():
    toks = tokenize(["A micro-needling session"])[0]
    assert {"micro", "microneedl"} <= set(toks)
    assert "microneedl" in tokenize(["microneedling"])[0]  # so either spelling finds the other


@pytest.mark.parametrize("question", ["How long does a cryofacial take?", "How long does a cryo-facial take?"])
def test_either_spelling_of_a_hyphenated_word_finds_the_article(define_assistant, question):
    res = define_assistant.ask(question, top_k=3)
    assert not res.abstained and res.answers[0].source.doc_id == "cryo", res.answers


def test_light_verbs_of_questions_are_not_searched():
    assert tokenize(["How is Verrow tonic made?"])[0] == tokenize(["Verrow tonic"])[0]
    assert tokenize(["Who should not get it?"])[0] == []


def test_a_definition_question_finds_the_defining_sentence(define_assistant):
    res = define_assistant.ask("What is Zelmar?", top_k=3)
    top = res.answers[0]
    assert top.source.doc_id == "spa-history", [a.text[:50] for a in res.answers]
    marked = " ".join(top.text[h.start : h.end] for h in top.highlight)
    assert "also known as scalp chilling, is a spa treatment" in marked, marked


def test_without_the_definition_signal_the_comparison_list_wins(define_assistant):
    """The corpus above is one where the signal matters: with it switched off, the list that
    names Zelmar most often ranks first (so the test above measures the signal, not luck)."""
    loaded = define_assistant._current()
    r = loaded.retriever
    q = r.prepare("What is Zelmar?", define_assistant.embedder.encode_query("What is Zelmar?"))
    assert q.defines == frozenset(tokenize(["Zelmar"])[0])
    on = r.search(q, k=3)
    off = r.search(replace(q, defines=None), k=3)
    doc = lambda h: loaded.index.passages[h.row].doc_id  # noqa: E731
    assert doc(on[0]) == "spa-history" and doc(off[0]) != "spa-history", ([doc(h) for h in on], [doc(h) for h in off])


@pytest.mark.parametrize("question", [
    "What are stators attached to?", "What is the name of the river that flows through the old city?",
    "How is Zelmar done?", "Which spa offers Zelmar?",
])
def test_other_questions_are_not_read_as_definition_questions(define_assistant, question):
    r = define_assistant._current().retriever
    assert r.prepare(question, define_assistant.embedder.encode_query(question)).defines is None


def test_answer_kind_lifts_the_sentence_with_the_number(tmp_path, embedder):
    """'How long ...?' wants a number: the sentence that says how long gains the answer-kind weight in
    the highlight scores, the sentence repeating the question's words gains nothing."""
    from assistant import Assistant, Settings
    from assistant.extraction import highlight
    from assistant.retrieval import Retriever

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "mask.md").write_text(
        "# The frostleaf mask\n\nThe frostleaf mask is a cooling clay mask made from crushed frostleaf petals and "
        "white kaolin clay. It stays on the skin for twelve minutes.\n", encoding="utf-8")
    base = Settings(corpus_dir=corpus, index_dir=tmp_path / "index")
    a = Assistant(base, embedder=embedder)
    a.reindex()
    index = a._current().index
    question = "How long does the frostleaf mask stay on the skin?"

    def best(settings):
        r = Retriever(index, settings)
        return r.search(r.prepare(question, embedder.encode_query(question)), k=1)[0]

    on, off = best(base), best(replace(base, w_kind_sentence=0.0, w_kind_passage=0.0))
    p = index.passages[on.row]
    texts = [index.docs[p.doc_id].text[x.start : x.end] for x in p.sentences]
    number = next(j for j, t in enumerate(texts) if "twelve" in t)
    other = next(j for j, t in enumerate(texts) if "kaolin" in t)
    assert on.sentence_scores[number] - off.sentence_scores[number] == pytest.approx(base.w_kind_sentence)
    assert on.sentence_scores[other] == pytest.approx(off.sentence_scores[other])
    span = highlight(index, on, base.highlight_ratio)[0]
    assert "twelve minutes" in p.text[span.start : span.end]


def test_article_prior_adds_the_article_evidence_to_each_of_its_passages(define_assistant, embedder):
    """With the article prior on, every passage of an article gains the same share of its article's
    evidence (its mean vector's cosine, its best candidate), so scores move by article, not by passage."""
    import numpy as np

    from assistant.retrieval import Retriever, _doc_centroids

    index = define_assistant._current().index
    of_row, centroid = _doc_centroids(index)
    assert np.allclose(np.linalg.norm(centroid, axis=1), 1.0, atol=1e-5)
    assert len(centroid) == len({p.doc_id for p in index.passages})
    question = "What is microneedling?"
    vec = embedder.encode_query(question)
    base = Retriever(index, define_assistant.settings)
    prior = Retriever(index, replace(define_assistant.settings, w_doc_dense=0.2, w_doc_best=0.2))
    off = {h.row: h.score for h in base.search(base.prepare(question, vec), k=50)}
    on = {h.row: h.score for h in prior.search(prior.prepare(question, vec), k=50)}
    gain: dict[int, set[float]] = {}
    for row in off.keys() & on.keys():
        gain.setdefault(int(of_row[row]), set()).add(round(on[row] - off[row], 4))
    assert all(len(g) == 1 for g in gain.values())  # one gain per article
    assert len({next(iter(g)) for g in gain.values()}) > 1  # and articles differ


# --- the answering sentence (issue 10) ------------------------------------------------------

COVER_CORPUS = {
    "lamps.md": """# Harbour lamps

Harbour lamps burn whale oil. Keepers trimmed the wicks every night. The Tarrow kestrel lamp was cast in green bronze by the foundry at Wenlow.
""",
    "foundry.md": """# The Wenlow foundry

The Wenlow foundry cast bells, anchors and railings for the harbour. Its kestrel emblem was painted over the gate. Bronze came by barge from the north, and the lamp trade kept the kestrel foundry busy.
""",
}


@pytest.fixture(scope="module")
def cover_assistant(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("cover")
    return open_assistant(write_corpus(root / "corpus", COVER_CORPUS), root / "index")


def test_sentence_coverage_is_the_share_of_the_question_words_one_sentence_holds(cover_assistant):
    """Each sentence gets the share of the question's distinct words it holds (with its article
    title and heading, as its BM25 text has them): the sentence with them all gets 1.0, and every
    word counts the same (an IDF weighting let one rare word outweigh the question's subject)."""
    import numpy as np

    loaded = cover_assistant._current()
    index, r = loaded.index, loaded.retriever
    question = "What was the Tarrow kestrel lamp cast in?"
    q = r.prepare(question, cover_assistant.embedder.encode_query(question))
    assert set(q.tokens) == {"tarrow", "kestrel", "lamp", "cast"}
    row = next(i for i, p in enumerate(index.passages) if p.doc_id == "lamps" and "Tarrow" in p.text)
    rows = np.arange(*index.sent_rows[row])
    cover = dict(zip((index.sentence_text(int(j)) for j in rows), r._coverage(q, rows)))
    assert cover["The Tarrow kestrel lamp was cast in green bronze by the foundry at Wenlow."] == pytest.approx(1.0)
    # "Harbour lamps", the title, is in every sentence's text: 'lamp' is one of four words
    assert cover["Keepers trimmed the wicks every night."] == pytest.approx(0.25)
    assert cover["Harbour lamps burn whale oil."] == pytest.approx(0.25)


def test_coverage_lifts_the_passage_whose_sentence_holds_the_question_words(cover_assistant):
    """The foundry article names 'kestrel', 'lamp' and 'cast' across three sentences (and 'kestrel'
    twice); the lamp sentence holds every word of the question. With the coverage signal the lamp
    passage gains more than the foundry passage does."""
    loaded = cover_assistant._current()
    index = loaded.index
    question = "What was the Tarrow kestrel lamp cast in?"
    vec = cover_assistant.embedder.encode_query(question)
    s = cover_assistant.settings
    off_r = Retriever(index, replace(s, w_cover_passage=0.0, w_prox_passage=0.0))
    on_r = Retriever(index, replace(s, w_cover_passage=0.4, w_prox_passage=0.0))
    off = {index.passages[h.row].doc_id: h.score for h in off_r.search(off_r.prepare(question, vec), k=5)}
    # scores are scaled back into [0, 1] by 1 + the coverage weight
    on = {index.passages[h.row].doc_id: h.score * 1.4 for h in on_r.search(on_r.prepare(question, vec), k=5)}
    assert on["lamps"] - off["lamps"] == pytest.approx(0.4, abs=1e-5)  # every distinct word in one sentence
    assert 0 < on["foundry"] - off["foundry"] < 0.4 * 0.75
    assert max(on, key=on.get) == "lamps"


def test_coverage_adds_to_each_sentence_score_for_the_highlight(cover_assistant):
    """The highlight scores of a passage's sentences gain the coverage weight x their coverage, so
    the sentence that holds the question's words outscores its neighbours by that much more."""
    import numpy as np

    from assistant.extraction import highlight

    loaded = cover_assistant._current()
    index = loaded.index
    question = "What was the Tarrow kestrel lamp cast in?"
    vec = cover_assistant.embedder.encode_query(question)
    s = cover_assistant.settings
    off_r = Retriever(index, replace(s, w_cover_sentence=0.0, w_cover_passage=0.0))
    on_r = Retriever(index, replace(s, w_cover_sentence=0.6, w_cover_passage=0.0))
    q = on_r.prepare(question, vec)
    off = {h.row: h for h in off_r.search(q, k=5)}
    on = {h.row: h for h in on_r.search(q, k=5)}
    row = next(r for r in on if "Tarrow" in index.passages[r].text)
    rows = np.arange(*index.sent_rows[row])
    cover = np.where(index.sent_is_heading[rows], 0.0, on_r._coverage(q, rows))  # a heading is no answer
    assert index.sent_is_heading[rows].sum() == 1 and cover.max() == 1.0
    assert np.allclose(on[row].sentence_scores - off[row].sentence_scores, 0.6 * cover, atol=1e-5)
    p = index.passages[row]
    span = highlight(index, on[row], s.highlight_ratio)[0]
    assert p.text[span.start : span.end].startswith("The Tarrow kestrel lamp was cast in green bronze")


# --- misspelled question words ---------------------------------------------------------------

def test_a_misspelled_word_is_searched_as_the_library_word_it_is_one_edit_from(define_assistant):
    from assistant.index import typed_words

    r = define_assistant._current().retriever
    assert r._spelled("verow", typed_words("Verow tonic")["verow"]) == ["verrow"]  # a letter missing
    assert r._spelled("nitorgen", "nitorgen") == ["nitrogen"]  # two letters swapped: one edit
    assert r._spelled("quilan", "quilan") == ["quillan"]
    assert r._spelled("nitrogen", "nitrogen") == []  # in the library: nothing to correct
    assert r._spelled("zzzzz", "zzzzz") == []  # nothing that close
    assert r._spelled("quxllxn", "quxllxn") == []  # two edits in a 7-letter word: too far
    assert r._spelled("verow", None) == []  # not a word as typed (part of a hyphenated one): left


def test_a_real_word_the_library_lacks_is_not_read_as_a_typo_of_one_it_has(define_assistant):
    """'chilly' (stem 'chilli') is one edit from the library's 'chill', but the model knows it as a
    whole word: a real word, left as asked. 'chillz' is no word: read as 'chill'."""
    from assistant.retrieval import _model_words

    r = define_assistant._current().retriever
    assert "chill" in define_assistant._current().index.vocab
    assert "chilly" in _model_words() and "chillz" not in _model_words()
    assert r._spelled("chilli", "chilly") == []
    assert r._spelled("chillz", "chillz") == ["chill"]


def test_a_question_about_a_misspelled_name_is_answered_and_without_correction_turned_away(define_assistant, monkeypatch):
    """'Verow' is the only word of the question: unread, the library lacks every word asked."""
    import assistant.retrieval as rt

    res = define_assistant.ask("What is Verow?", top_k=3)
    assert not res.abstained and res.answers[0].source.doc_id == "tonics", res.answers
    monkeypatch.setattr(rt, "SPELLING", False)
    assert define_assistant.ask("What is Verow?", top_k=3).abstained


def test_without_spelling_correction_the_typo_is_unknown(define_assistant, monkeypatch):
    import assistant.retrieval as rt

    r = define_assistant._current().retriever
    vec = define_assistant._current().retriever.index.passage_vectors[0]
    with_fix = r.prepare("What is Verow tonic brewed from?", vec)
    assert "verrow" in with_fix.search_tokens and with_fix.equivalents["verow"] == frozenset({"verrow"})
    monkeypatch.setattr(rt, "SPELLING", False)
    without = r.prepare("What is Verow tonic brewed from?", vec)
    assert "verrow" not in without.search_tokens and "verow" not in (without.equivalents or {})


# --- list questions ("What amino acids are ...?" wants "including alanine, arginine, ...") -----

LIST_CORPUS = {
    "serums.md": """# Skin serums

A serum is a cocktail of vitamins, minerals, amino acids and hyaluronic acid applied to the face.

Serum injections often contain minerals like calcium and zinc. Amino acids, including alanine, arginine and glycine, are also added.
""",
}


@pytest.fixture(scope="module")
def list_assistant(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("list")
    return open_assistant(write_corpus(root / "corpus", LIST_CORPUS), root / "index")


def test_a_list_question_lifts_the_sentence_that_lists(list_assistant, monkeypatch):
    """With the list kind, the sentence listing amino acids after 'including' gains the answer-kind
    weight for the highlight, and is highlighted; the series that only names 'amino acids' gains
    nothing."""
    from assistant import answertype
    from assistant.extraction import highlight

    index = list_assistant._current().index
    question = "What amino acids are in serum injections?"
    vec = list_assistant.embedder.encode_query(question)
    s = list_assistant.settings
    r = Retriever(index, s)

    def scores(on: bool) -> dict[str, float]:
        monkeypatch.setattr(answertype, "LIST_KIND", on)
        q = r.prepare(question, vec)
        assert q.kind == ("list" if on else None)
        out = {}
        for h in r.search(q, k=5):
            first = int(index.sent_rows[h.row][0])
            for j, v in enumerate(h.sentence_scores):
                out[index.sentence_text(first + j)] = float(v)
        return out

    off, on = scores(False), scores(True)
    listing = next(t for t in on if "alanine" in t)
    series = next(t for t in on if "cocktail" in t)
    assert on[listing] - off[listing] == pytest.approx(s.w_kind_sentence, abs=1e-5)
    assert on[series] == pytest.approx(off[series], abs=1e-5)
    res = list_assistant.ask(question, top_k=1)
    a = res.answers[0]
    assert any("alanine" in a.text[h.start : h.end] for h in a.highlight)


def test_proximity_is_the_share_of_the_question_word_pairs_held_close_together(cover_assistant):
    """settings.w_prox_passage / w_prox_sentence: each sentence gets the share of the question's
    adjacent word pairs it holds within PROXIMITY_WINDOW tokens of each other. The lamp sentence
    says "Tarrow kestrel lamp was cast" (all three pairs); the foundry's "lamp trade kept the
    kestrel foundry" holds one pair three tokens apart; a sentence with one word holds none.
    Switched on, it lifts the lamp passage by the full weight and the foundry passage by less."""
    import numpy as np

    loaded = cover_assistant._current()
    index, r = loaded.index, loaded.retriever
    question = "What was the Tarrow kestrel lamp cast in?"
    vec = cover_assistant.embedder.encode_query(question)
    q = r.prepare(question, vec)
    prox = {}
    for doc in ("lamps", "foundry"):
        row = next(i for i, p in enumerate(index.passages) if p.doc_id == doc)
        first, last = (int(x) for x in index.sent_rows[row])
        prox.update(zip((index.sentence_text(j) for j in range(first, last)), r._proximity(q, [(first, last - first)])[0]))
    assert prox["The Tarrow kestrel lamp was cast in green bronze by the foundry at Wenlow."] == pytest.approx(1.0)
    assert prox["Bronze came by barge from the north, and the lamp trade kept the kestrel foundry busy."] == pytest.approx(1 / 3)
    assert prox["Its kestrel emblem was painted over the gate."] == 0.0
    s = replace(cover_assistant.settings, w_cover_passage=0.0)
    off_r, on_r = Retriever(index, replace(s, w_prox_passage=0.0)), Retriever(index, replace(s, w_prox_passage=0.3))
    off = {index.passages[h.row].doc_id: h.score for h in off_r.search(off_r.prepare(question, vec), k=5)}
    # scores are scaled back into [0, 1] by 1 + the proximity weight
    on = {index.passages[h.row].doc_id: h.score * 1.3 for h in on_r.search(on_r.prepare(question, vec), k=5)}
    assert on["lamps"] - off["lamps"] == pytest.approx(0.3, abs=1e-5)
    assert on["foundry"] - off["foundry"] == pytest.approx(0.1, abs=1e-5)
    assert np.isclose(sum(off.values()) + 0.4, sum(on.values()), atol=1e-5)


def test_proximity_pairs_leave_out_the_light_verb_use(cover_assistant):
    """"What is X used for?": 'use' (SMART's stop list has use, used, uses, using) is no half of a
    phrase, so "lamp was used" next to each other is no sign of an answer about the lamp's uses.
    Proximity pairs are formed without it; the spans of several passages are read in one call."""
    from assistant import retrieval

    loaded = cover_assistant._current()
    index, r = loaded.index, loaded.retriever
    question = "What was the kestrel lamp used for?"
    q = r.prepare(question, cover_assistant.embedder.encode_query(question))
    assert "use" in q.tokens  # BM25 and coverage still search it
    rows = [i for i, p in enumerate(index.passages) if p.doc_id in ("lamps", "foundry")]
    spans = [(int(index.sent_rows[i][0]), int(index.sent_rows[i][1] - index.sent_rows[i][0])) for i in rows]
    got = r._proximity(q, spans)
    assert [len(x) for x in got] == [n for _, n in spans]
    texts = {index.sentence_text(first + j): float(v) for (first, _), x in zip(spans, got) for j, v in enumerate(x)}
    # only the pair (kestrel, lamp) is asked: held in the lamp sentence, not by one word alone
    assert texts["The Tarrow kestrel lamp was cast in green bronze by the foundry at Wenlow."] == 1.0
    assert texts["Its kestrel emblem was painted over the gate."] == 0.0
    old = retrieval.PROXIMITY_SKIP
    try:
        retrieval.PROXIMITY_SKIP = frozenset()
        with_use = r._proximity(q, spans)
    finally:
        retrieval.PROXIMITY_SKIP = old
    texts = {index.sentence_text(first + j): float(v) for (first, _), x in zip(spans, with_use) for j, v in enumerate(x)}
    assert texts["The Tarrow kestrel lamp was cast in green bronze by the foundry at Wenlow."] == 0.5  # (lamp, use) not held


# --- the fitted fusion (issue 10, seventh round) --------------------------------------------

SEED_QUESTIONS = ["How long is the blood spun in the centrifuge?", "What is microneedling also known as?",
                  "How many sessions of mesotherapy are needed?", "Who should not get PRP?",
                  "What amino acids are in mesotherapy injections?", "Which has less downtime?"]


def test_search_fuses_the_signals_it_reports(seed_assistant):
    """`Retriever.signals` is what `search` fuses (and what tests/fit_fusion.py fits on): with every
    weight but one at 0, a passage's score is that signal's min-max value over the candidates."""
    from assistant.retrieval import _minmax

    import numpy as np

    loaded = seed_assistant._current()
    index = loaded.index
    zero = dict(w_dense_passage=0.0, w_bm25_passage=0.0, w_dense_sentence=0.0, w_bm25_sentence=0.0,
                w_cover_passage=0.0, w_prox_passage=0.0, w_kind_passage=0.0, definition_bonus=0.0)
    for name, field in (("dense_p", "w_dense_passage"), ("bm25_p", "w_bm25_passage"), ("bm25_s", "w_bm25_sentence")):
        r = Retriever(index, replace(seed_assistant.settings, **{**zero, field: 1.0}))
        q = r.prepare(SEED_QUESTIONS[0], seed_assistant.embedder.encode_query(SEED_QUESTIONS[0]))
        sig = r.signals(q)
        want = dict(zip(sig.cand.tolist(), _minmax(getattr(sig, name)).tolist()))
        hits = r.search(q, k=10)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for h in hits:
            assert h.score == pytest.approx(want[h.row], abs=1e-6)
        assert hits[0].score == pytest.approx(1.0)
        assert np.array_equal(np.sort(sig.cand), np.unique(sig.cand))  # each candidate once


def test_passages_no_bonus_can_lift_are_skipped_without_changing_the_hits(seed_assistant):
    """Proximity and the answer kind only add, so a passage that even both whole bonuses cannot
    lift to the k-th best score is not read: the k hits are those of reading all RERANK_DEPTH."""
    import numpy as np

    from assistant import retrieval

    loaded = seed_assistant._current()
    index, r = loaded.index, loaded.retriever
    assert r.s.w_prox_passage > 0  # on by default since the fitted weights
    for question in SEED_QUESTIONS:
        q = r.prepare(question, seed_assistant.embedder.encode_query(question))
        few = r.search(q, k=3)
        every = r.search(q, k=retrieval.RERANK_DEPTH)[:3]
        assert [h.row for h in few] == [h.row for h in every]
        for a, b in zip(few, every):
            assert a.score == pytest.approx(b.score, abs=1e-6)
            assert np.allclose(a.sentence_scores, b.sentence_scores, atol=1e-6)


def test_proximity_positions_are_remembered_per_passage_and_bounded(seed_assistant, monkeypatch):
    from assistant import retrieval

    index = seed_assistant._current().index
    spans = [(int(index.sent_rows[r][0]), int(index.sent_rows[r][1] - index.sent_rows[r][0])) for r in range(6)]
    index.__dict__.pop("_passage_positions", None)
    first = retrieval._passage_positions(index, spans)
    again = retrieval._passage_positions(index, spans)
    assert all(a is b for a, b in zip(first, again))  # read once
    seq = tokenize([index.sentence_text(spans[0][0] + 1)])[0] if spans[0][1] > 1 else []
    for pos, t in enumerate(seq):
        assert (1, pos) in first[0][t]  # (sentence within the passage, position within it)
    monkeypatch.setattr(retrieval, "_POSITIONS_CACHE_MAX", 4)
    retrieval._passage_positions(index, [(int(index.sent_rows[r][0]), int(index.sent_rows[r][1] - index.sent_rows[r][0]))
                                         for r in range(6, 9)])
    assert len(index.__dict__["_passage_positions"]) <= 4


def test_proximity_still_reads_a_pair_held_through_a_misspelling(cover_assistant):
    """Coverage, which decides which passages proximity reads, counts only words the library has;
    "kestril" is read as "kestrel" (its equivalent), and the foundry's "lamp trade kept the kestrel
    foundry" holds the pair (kestril, lamp) through it: its passage is still read and lifted."""
    loaded = cover_assistant._current()
    index = loaded.index
    question = "What was the Tarrow kestril lamp cast in?"
    vec = cover_assistant.embedder.encode_query(question)
    s = replace(cover_assistant.settings, w_cover_passage=0.0, w_cover_sentence=0.6)
    off_r, on_r = Retriever(index, replace(s, w_prox_passage=0.0)), Retriever(index, replace(s, w_prox_passage=0.3))
    q = on_r.prepare(question, vec)
    assert "kestril" in q.tokens and "kestril" not in index.vocab and q.equivalents["kestril"] == {"kestrel"}
    off = {index.passages[h.row].doc_id: h.score for h in off_r.search(off_r.prepare(question, vec), k=5)}
    on = {index.passages[h.row].doc_id: h.score * 1.3 for h in on_r.search(q, k=5)}
    assert on["foundry"] - off["foundry"] == pytest.approx(0.3 / 3, abs=1e-5)
    assert on["lamps"] - off["lamps"] == pytest.approx(0.3, abs=1e-5)

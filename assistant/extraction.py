"""From ranked passages to answers: the answering sentences, de-duplication, abstention.

Nothing is generated: an answer is a passage of an article, verbatim, with offsets.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

from .config import Settings
from .index import Index
from .models import AlsoIn, Answer, Source, Span
from .retrieval import Hit, Query

_WORD = re.compile(r"\w+")


def _norm_tokens(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if len(w) > 2)


def highlight(index: Index, hit: Hit, ratio: float, max_sentences: int = 2) -> list[Span]:
    """The sentence(s) that answer: the best non-heading sentence, and a neighbour nearly as good."""
    p = index.passages[hit.row]
    scores = np.asarray(hit.sentence_scores, dtype=np.float32).copy()
    for j, s in enumerate(p.sentences):
        if s.heading:
            scores[j] = -1.0
    if scores.size == 0 or scores.max() < 0:
        return []
    best = int(np.argmax(scores))
    chosen = [best]
    top = float(scores[best])
    for j in np.argsort(-scores)[1:max_sentences]:
        if scores[j] >= ratio * top and top > 0 and abs(int(j) - best) == 1:
            chosen.append(int(j))
    spans = sorted((p.sentences[j].start - p.start, p.sentences[j].end - p.start) for j in chosen)
    return [Span(start=a, end=b) for a, b in spans]


def _sentence_sets(index: Index, row: int) -> list[frozenset[str]]:
    """Word sets of a passage's sentences, computed once per loaded index."""
    cache = index.__dict__.setdefault("_sentence_sets", {})
    sets = cache.get(row)
    if sets is None:  # each sentence read on its own: no article record or Passage made (records.py)
        first, last = (int(x) for x in index.sent_rows[row])
        heading = index.sent_is_heading
        sets = cache[row] = [_norm_tokens(index.sentence_text(j)) for j in range(first, last) if not heading[j]]
    return sets


def near_duplicate(index: Index, a: int, b: int, threshold: float = 0.8) -> bool:
    """True when most of one passage's sentences appear, nearly word for word, in the other.

    Works across different chunk boundaries, which is how copied paragraphs usually show up.
    """
    if a == b:
        return True
    sa, sb = _sentence_sets(index, a), _sentence_sets(index, b)
    if not sa or not sb:
        return False

    def covered(xs, ys, words_of_ys: frozenset[str]) -> float:
        total = sum(len(x) for x in xs) or 1
        # a sentence x matching some y shares >= threshold * |x| words with the whole of ys, so
        # unless the words shared with ys reach threshold * 0.6 of the total, covered < 0.6:
        # one set intersection per sentence settles most pairs (unrelated passages) at once
        if sum(len(x & words_of_ys) for x in xs) < threshold * 0.6 * total:
            return 0.0
        got = 0
        for x in xs:
            if any(len(x & y) / max(1, len(x | y)) >= threshold for y in ys):
                got += len(x)
        return got / total

    return covered(sa, sb, _sentence_words(index, b)) >= 0.6 or covered(sb, sa, _sentence_words(index, a)) >= 0.6


def _sentence_words(index: Index, row: int) -> frozenset[str]:
    """Every word of a passage's sentences (the union of `_sentence_sets`), cached like them
    (near-duplicate checks; `_passage_words` below is the bridging vocabulary, stop words out)."""
    cache = index.__dict__.setdefault("_passage_word_sets", {})
    words = cache.get(row)
    if words is None:
        words = cache[row] = frozenset().union(*_sentence_sets(index, row))
    return words


def dedupe(index: Index, hits: list[Hit], limit: int | None = None) -> list[tuple[Hit, list[Hit]]]:
    """Group near-duplicate passages; the best-scoring one leads, the others become `also_in`.
    With `limit`, at most that many groups are formed (later hits only join them)."""
    groups: list[tuple[Hit, list[Hit]]] = []
    for h in hits:
        for lead, others in groups:
            if any(near_duplicate(index, m.row, h.row) for m in (lead, *others)):
                others.append(h)  # to_answer lists each other article once, never the lead's own
                break
        else:
            if limit is None or len(groups) < limit:
                groups.append((h, []))
    return groups


def to_answer(index: Index, hit: Hit, others: list[Hit], settings: Settings, about: str | None = None) -> Answer:
    p = index.passages[hit.row]
    d = index.docs[p.doc_id]
    also = []
    for o in others:
        od = index.docs[index.passages[o.row].doc_id]
        if od.doc_id != d.doc_id and all(a.doc_id != od.doc_id for a in also):
            also.append(AlsoIn(doc_id=od.doc_id, title=od.title, path=od.path))
    return Answer(
        text=d.text[p.start : p.end],
        highlight=highlight(index, hit, settings.highlight_ratio),
        score=round(hit.score, 4),
        source=Source(doc_id=d.doc_id, title=d.title, path=d.path, start=p.start, end=p.end),
        also_in=also,
        about=about,
    )


# --- abstention ------------------------------------------------------------------------------

@dataclass
class Evidence:
    """What the abstention decision looks at, for the best passage of a question."""

    dense: float  # cosine of the best passage
    dense_sentence: float  # cosine of the best sentence
    coverage: float  # share of the question's content words (IDF-weighted) found in the passage
    unknown: float  # share of the question's content words the library lacks (no word close in meaning either)
    sentence_coverage: float = 0.0  # share of the question's content words (IDF-weighted) in the best sentence


# Logistic models over Evidence (weights per field, plus a bias). "own" is fitted on our own
# hand-written question sets over the seed corpus, none of them an evaluation set; "xquad" is the
# earlier model, fitted on XQuAD (an evaluation set), kept to compare. Refit with
# `python tests/calibrate_abstention.py` (README, "Abstention"), which says what it is fitted on.
ABSTAIN_MODELS = {
    "own": {"bias": -2.353, "dense": 1.562, "dense_sentence": 1.787, "coverage": 2.086, "unknown": -1.886,
            "sentence_coverage": 1.343},
    "xquad": {"bias": -3.045, "dense": 2.166, "dense_sentence": 2.211, "coverage": 2.885, "unknown": -1.453},
}
ABSTAIN_MODEL = "own"
ABSTAIN_WEIGHTS = ABSTAIN_MODELS[ABSTAIN_MODEL]  # the default model's weights
JUDGE_WITH_CONTEXT = True  # a follow-up searched with its conversation is judged with it (judged())

# Vocabulary bridging for the unknown-word signal: a question word no article uses still counts as
# known when a word of the best passages means nearly the same to the embedding model ("hurt" and
# "pain": cosine 0.82; "insurance" and the nearest word of a PRP article: 0.44). Word vectors are
# the model's own, one short encode per word, remembered.
BRIDGE_SIM = 0.6
BRIDGE_PASSAGES = 3
# pool words per asked word that the model encodes, chosen by the static input embeddings
# (a synonym by the model's reading is among them in practice; see _shortlist)
BRIDGE_SHORTLIST = 16
_WORD_VECTORS: dict[str, np.ndarray] = {}
_WORD_CACHE = 20_000
_ALPHA = re.compile(r"[a-z]{3,}")


def confidence(e: Evidence, weights: dict | None = None) -> float:
    w = weights or ABSTAIN_MODELS[ABSTAIN_MODEL]
    z = w["bias"] + sum(v * getattr(e, k) for k, v in w.items() if k != "bias")
    return 1.0 / (1.0 + math.exp(-z))


def _word_vectors(embedder, words: list[str]) -> np.ndarray:
    """The model's vectors of single words, remembered process-wide (at most _WORD_CACHE of them,
    about 1.5 kB each). Safe under concurrent requests: the result never reads back the cache."""
    if not words:
        return np.zeros((0, 1), dtype=np.float32)
    known = {w: _WORD_VECTORS.get(w) for w in dict.fromkeys(words)}
    miss = [w for w, v in known.items() if v is None]
    if miss:
        if len(_WORD_VECTORS) + len(miss) > _WORD_CACHE:
            _WORD_VECTORS.clear()
        batch = getattr(embedder, "encode_queries", None)
        vecs = batch(miss) if batch is not None else [embedder.encode_query(w) for w in miss]
        for w, v in zip(miss, vecs):
            known[w] = _WORD_VECTORS[w] = np.asarray(v, dtype=np.float32)
    return np.stack([known[w] for w in words])


def _passage_words(index: Index, row: int) -> list[str]:
    """The distinct words of a passage (lower-case, letters only, not stop words), once per index."""
    cache = index.__dict__.setdefault("_passage_words", {})
    words = cache.get(row)
    if words is None:
        from .index import _stopword_set, passage_bm25_text

        p = index.passages[row]
        d = index.docs[p.doc_id]
        stop = _stopword_set()
        words = cache[row] = sorted({w for w in _ALPHA.findall(passage_bm25_text(p, d.title, d.text).lower())
                                     if w not in stop})
    return words


def _shortlist(pool: list[str], asked: list[str]) -> list[str]:
    """The BRIDGE_SHORTLIST words of `pool` nearest each asked word by the model's input
    embeddings (embedder.static_word_vectors), in pool order: only these are encoded with the
    model. A close synonym is near by either reading (hurt / painful, utilizing / using, a
    misspelling / its word: ranked 0-6 of ~200 in a sample of the eval libraries' lacking words),
    and the words of three passages no longer cost half a second to encode on a cold cache."""
    if len(pool) <= BRIDGE_SHORTLIST:
        return pool
    from .embedder import static_word_vectors

    have, mine = static_word_vectors(pool), static_word_vectors(asked)
    if have is None or mine is None:
        return pool
    sims = mine @ have.T
    near = np.argpartition(-sims, BRIDGE_SHORTLIST - 1, axis=1)[:, :BRIDGE_SHORTLIST]
    return [pool[i] for i in sorted(set(near.ravel().tolist()))]


def bridged(index: Index, q: Query, hits: list[Hit], embedder, terms: list[str]) -> set[str]:
    """Of `terms` (tokens the library lacks), those with a word of the best passages close in
    meaning (cosine >= BRIDGE_SIM between the two words' vectors)."""
    if embedder is None or not terms or not hits or BRIDGE_SIM >= 1.0:
        return set()
    from .index import typed_words

    typed = typed_words(q.text)
    asked = {t: typed[t] for t in terms if t in typed}
    if not asked:
        return set()
    pool = sorted({w for h in hits[:BRIDGE_PASSAGES] for w in _passage_words(index, h.row)})
    if not pool:
        return set()
    pool = _shortlist(pool, list(asked.values()))
    have = _word_vectors(embedder, pool)
    mine = _word_vectors(embedder, list(asked.values()))
    best = (mine @ have.T).max(axis=1)
    return {t for t, s in zip(asked, best) if s >= BRIDGE_SIM}


def evidence(index: Index, q: Query, hit: Hit | None, hits: list[Hit] | None = None, embedder=None) -> Evidence:
    """The signals of the best passage `hit` (`hits`: the ranking it leads, for vocabulary bridging
    with `embedder`; without it a word the library lacks is unknown whatever it means)."""
    terms = [t for t in q.tokens]
    if not terms or hit is None:
        return Evidence(hit.dense if hit else 0.0, hit.dense_sentence if hit else 0.0, 0.0, 1.0 if not hit else 0.0)
    from .index import passage_bm25_text

    have = _token_set(index, ("passage", hit.row),
                      lambda: passage_bm25_text(index.passages[hit.row], *_title_text(index, hit.row)))
    eq = q.equivalents or {}
    vocab = index.vocab
    # a word the library lacks is known when the passage holds what it was read as (a misspelling's
    # correction, a longer form of its stem: retrieval's equivalents) or a word close in meaning
    lacking = [t for t in terms if t not in vocab and not have & eq.get(t, frozenset())]
    if lacking:
        near = bridged(index, q, hits or [hit], embedder, list(dict.fromkeys(lacking)))
        lacking = [t for t in lacking if t not in near]
    unknown = len(lacking) / len(terms)
    idf = index.idf
    weights = [idf.get(t, idf_max(index)) for t in terms]
    total = sum(weights) or 1.0
    covered = sum(w for t, w in zip(terms, weights) if t in have or have & eq.get(t, frozenset())) / total
    sent = 0.0
    if len(hit.sentence_cosines):
        j = int(np.argmax(hit.sentence_cosines))
        row = int(index.sent_rows[hit.row][0]) + j
        in_sent = _token_set(index, ("sentence", row), lambda: index.sentence_text(row))
        sent = sum(w for t, w in zip(terms, weights) if t in in_sent or in_sent & eq.get(t, frozenset())) / total
    return Evidence(hit.dense, hit.dense_sentence, covered, unknown, sent)


_TOKEN_SETS_MAX = 4_000  # passages and sentences whose BM25 token sets abstention remembers, per index (~3 kB each)


def _title_text(index: Index, row: int) -> tuple[str, str]:
    d = index.docs[index.passages[row].doc_id]
    return d.title, d.text


def _token_set(index: Index, key: tuple, text) -> frozenset[str]:
    """The BM25 tokens of a passage's or a sentence's text (`text()`), remembered per loaded index:
    the best passages of related questions are judged again and again."""
    from .index import remembered, tokenize

    return remembered(index, "_token_sets", key, lambda: frozenset(tokenize([text()])[0]), _TOKEN_SETS_MAX)


def idf_max(index: Index) -> float:
    return math.log(1 + len(index.passages) + 0.5)


ABSTAIN_MESSAGE = "The articles do not answer this question."


def judged(index: Index, q: Query, hits: list[Hit], embedder=None) -> Evidence:
    """The evidence abstention weighs for a ranking (`hits`, best first; not empty).

    A follow-up searched with its conversation (`q.context`, settings.w_context) is judged with it
    too: each of the passage's cosines and its coverage counts the better of the follow-up's own
    and the conversation's ("Does it cover dental?" is about the plan the history names)."""
    e = evidence(index, q, hits[0], hits, embedder)
    ctx = q.context
    if ctx is None or not JUDGE_WITH_CONTEXT:
        return e
    row = hits[0].row
    dense = float(np.asarray(index.passage_vectors[row], dtype=np.float32) @ ctx.vector)
    a, b = (int(x) for x in index.sent_rows[row])
    cos = np.asarray(index.sent_vectors[a:b], dtype=np.float32) @ ctx.vector
    cos = np.where(index.sent_is_heading[a:b], np.minimum(cos, 0.0), cos)
    c = evidence(index, ctx, hits[0])
    return replace(e, dense=max(e.dense, dense), dense_sentence=max(e.dense_sentence, float(cos.max()) if cos.size else 0.0),
                   coverage=max(e.coverage, c.coverage))


def should_abstain(index: Index, q: Query, hits: list[Hit], settings: Settings, embedder=None) -> bool:
    """True when even the best passage is unlikely to answer (calibrated, see README)."""
    if not hits:
        return True
    e = judged(index, q, hits)  # words the library lacks all count as unknown here
    if embedder is None or not e.unknown:
        return confidence(e) < settings.abstain_threshold
    # Bridging can only lower `unknown`, and the model weighs `unknown` against answering, so it
    # decides nothing when the passage is answered anyway or abstained on even with every word
    # known: only the questions in between pay for encoding the best passages' words.
    w = ABSTAIN_MODELS[ABSTAIN_MODEL]
    if w.get("unknown", 0.0) <= 0.0:
        if confidence(e) >= settings.abstain_threshold:
            return False
        if confidence(replace(e, unknown=0.0)) < settings.abstain_threshold:
            return True
    return confidence(judged(index, q, hits, embedder)) < settings.abstain_threshold


def answers_from_hits(index: Index, hits: list[Hit], settings: Settings, top_k: int, about: str | None = None) -> list[Answer]:
    """The top_k distinct passages as answers; near-duplicates fold into `also_in`."""
    return [to_answer(index, h, others, settings, about) for h, others in dedupe(index, hits, limit=top_k)]

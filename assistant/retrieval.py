"""Hybrid search: dense (FAISS) and BM25, at passage and sentence level, fused on min-max scores.

A passage is scored by its own text and by its best sentence (and by how many of the question's
words one of its sentences holds); published BEIR results and our
own runs (README, "Numbers") favour min-max fusion over reciprocal-rank fusion.
"""
from __future__ import annotations

import bisect
import functools
import logging
import re
from dataclasses import dataclass

import numpy as np

from . import answertype
from .config import Settings
from .index import ArticleCentroids, Index, bm25_scores_for, candidate_rows, remembered, tokenize, typed_words

log = logging.getLogger(__name__)


# A question asking for another name of something, and how articles phrase the answer.
_NAMING = re.compile(r"\b(also|otherwise|commonly|sometimes)\s+(called|named|known|termed|referred)\b|"
                     r"\b(another|other|different)\s+names?\b|\bwhat\s+(else\s+)?(is|are)\s+.{1,60}\s+called\b", re.I)
_NAMING_ANSWER = "known called named termed referred"

# A definition question ("What is microneedling?", "What are exosomes?", "Define mesotherapy") and
# the shape of a sentence that defines something: a short subject, then a defining verb
# ("Microneedling, also known as collagen induction therapy, involves ..."). TREC QA systems
# answered definition questions with such surface patterns.
_DEFINITION_Q = re.compile(
    r"^\s*(?:(?:what|who)\s+(?:is|are|was|were)|what['’]s|define|explain)\s+(?:an?\s+|the\s+)?"
    r"(?P<x>[^?.!,;:]{1,60}?)\s*[?.!]*\s*$", re.I)
_DEFINES = re.compile(
    r"^\W*(?P<head>[^.:;!?()]{1,80}?(?:\([^()]{1,40}\)[^.:;!?()]{0,60}?)?)\s*,?\s+"
    r"(?:is|are|was|were|refers\s+to|involves|means|describes)\b", re.I)
RERANK_DEPTH = 30  # passages whose sentences are read for the answer kind
PROXIMITY_DEPTH = 10  # ... and for proximity (each a read of its article's record: README, "Proximity")
PROXIMITY_WINDOW = 3  # tokens (stop words out) between two adjacent question words held as a phrase
# "What is X used for?": a light verb of questions (SMART's stop list has use, used, uses, using)
# is no half of a phrase; "X used" next to each other in a passage says nothing about X's uses
PROXIMITY_SKIP = frozenset({"use"})
DEFINITION_MAX_WORDS = 4  # "What is X?" with a longer X is no definition question
# ... nor one whose X ends in a preposition or a participle ("What are stators attached to?")
_NOT_DEFINITION = re.compile(r"\b(?:to|for|of|in|on|at|by|with|from|as|about|after|\w+ed|doing|made|done)\s*$", re.I)


@dataclass
class Query:
    """A question prepared once: its vector and its BM25 tokens."""

    text: str
    vector: np.ndarray
    tokens: list[str]  # the question's own words (abstention measures their coverage)
    search_tokens: list[str] | None = None  # what BM25 searches: the tokens plus any rewrite
    equivalents: dict[str, frozenset[str]] | None = None  # a question word -> answer words that cover it
    defines: frozenset[str] | None = None  # "What is X?": the tokens of X
    # a follow-up's conversation so far (earlier questions), scored alongside it at passage level
    context: "Query | None" = None
    kind: str | None = None  # the kind of answer wanted: number, when, who, where, list (answertype.kind)
    words: frozenset[str] = frozenset()  # the question's words, lower-cased

    def __post_init__(self) -> None:
        if self.search_tokens is None:
            self.search_tokens = self.tokens


@dataclass
class Hit:
    row: int  # passage row in the index
    score: float  # fused, in [0, 1]
    dense: float  # cosine of the passage
    dense_sentence: float  # cosine of its best sentence
    bm25: float
    bm25_sentence: float
    sentence_scores: np.ndarray  # per sentence of the passage: fused sentence score
    sentence_cosines: np.ndarray


@dataclass
class Signals:
    """One question's candidate passages and their signals before fusion (`Retriever.signals`).
    Per passage, aligned with `cand`; per sentence (`s_cos`, `s_fused`), the passages' sentences
    one after another (passage i's are [offsets[i], offsets[i] + lengths[i]))."""

    cand: np.ndarray  # passage rows
    first: np.ndarray  # each passage's first sentence row
    lengths: np.ndarray  # its number of sentences
    offsets: np.ndarray  # where its sentences start in the per-sentence arrays
    dense_q: np.ndarray  # cosine of the question alone
    dense_p: np.ndarray  # cosine, plus the conversation's share for a follow-up (w_context)
    bm25_p: np.ndarray  # BM25, likewise
    dense_s: np.ndarray  # the best sentence's cosine
    bm25_s: np.ndarray  # the best sentence's BM25
    cover: np.ndarray  # the best sentence's coverage (_coverage)
    terms: int  # the question's distinct words the library has: coverage's denominator
    defines: np.ndarray  # 1.0 when a sentence defines what "What is X?" asks
    s_cos: np.ndarray  # per sentence: cosine (a heading's at most 0)
    s_fused: np.ndarray  # per sentence: the highlight score before proximity and answer kind


def _minmax(x: np.ndarray) -> np.ndarray:
    if x.size == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-9:
        return np.where(x > 0, 1.0, 0.0).astype(np.float32) if hi > 0 else np.zeros_like(x)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def _doc_centroids(index: Index) -> tuple[np.ndarray, np.ndarray]:
    """(passage row -> article number, article number -> unit mean vector of its passages) of an
    index without stored centroids: one pass over the passage vectors (the same numbers a build
    stores: index.ArticleCentroids)."""
    dim = index.passage_vectors.shape[1] if len(index.passages) else 1
    c = ArticleCentroids.build((p.doc_id for p in index.passages), index.passage_vectors, dim)
    return np.asarray(c.of_row, dtype=np.int64), c.base


_KIND_CACHE_MAX = 200_000

# Misspelled question words (Retriever._spelled): from 5 letters, 1 edit (2 from 8 letters)
SPELLING = True
SPELLING_MIN_LENGTH = 5
SPELLING_MAX_WORDS = 3
SPELLING_TWO_EDITS_FROM = 8  # letters


@functools.lru_cache(maxsize=1)
def _model_words() -> frozenset[str] | None:
    """The whole words of the embedding model's WordPiece vocabulary (about 20,000 common English
    words, lower-cased): what is certainly a word, not a typo."""
    from .onnx_encoder import load_tokenizer

    try:
        vocab = load_tokenizer().get_vocab()
    except Exception:  # noqa: BLE001 - without it no word can be told from a typo: none is corrected
        log.warning("the model's tokenizer cannot be read: misspelled question words are not corrected")
        return None
    return frozenset(w for w in vocab if w.isalpha())


_POSITIONS_CACHE_MAX = 2_000  # passages whose token positions proximity remembers, per loaded index (~8 kB each)


def _passage_positions(ix: Index, spans: list[tuple[int, int]]) -> list[dict[str, tuple[tuple[int, int], ...]]]:
    """Per passage (`spans`: first sentence row, sentence count): its BM25 tokens -> where they
    stand, (sentence within the passage, position within the sentence), headings left out. What
    proximity reads; remembered per loaded index (at most _POSITIONS_CACHE_MAX passages): the best
    passages of related questions come back again and again. Passages not yet read are stemmed
    in one tokenize call."""
    cache = ix.__dict__.setdefault("_passage_positions", {})
    got = [cache.get(first) for first, _ in spans]
    missing = list(dict.fromkeys(sp for sp, g in zip(spans, got) if g is None))
    if missing:
        rows = [first + j for first, n in missing for j in range(n)]
        heading = np.asarray(ix.sent_is_heading[np.asarray(rows, dtype=np.int64)])
        seqs = iter(zip(tokenize([ix.sentence_text(r) for r in rows]), heading))
        fresh = {}
        for first, n in missing:
            at: dict[str, list[tuple[int, int]]] = {}
            for j in range(n):
                seq, is_heading = next(seqs)
                if not is_heading:
                    for pos, t in enumerate(seq):
                        at.setdefault(t, []).append((j, pos))
            fresh[first] = {t: tuple(v) for t, v in at.items()}
        if len(cache) + len(fresh) > _POSITIONS_CACHE_MAX:
            cache.clear()
        cache.update(fresh)
        got = [g if g is not None else fresh[first] for (first, _), g in zip(spans, got)]
    return got


def _kind_candidates(ix: Index, row: int, want: str) -> tuple[str, ...]:
    """answertype.candidates of one sentence, remembered per loaded index (at most
    _KIND_CACHE_MAX sentences): the best passages of related questions are read again and again."""
    return remembered(ix, "_kind_candidates", (want, row),
                      lambda: answertype.candidates(ix.sentence_text(row), want), _KIND_CACHE_MAX)


class Retriever:
    """Scores passages of one loaded index for a query."""

    def __init__(self, index: Index, settings: Settings) -> None:
        self.index = index
        self.s = settings
        self.n_passages = len(index.passages)
        self.n_sentences = int(len(index.sent_passage))
        self._vocab = sorted(t for t in index.vocab if t)  # for stem extensions (bisect)
        self._heads: dict[int, frozenset[str] | None] = {}  # sentence row -> what it defines (lazily)
        self._docs: tuple[np.ndarray, np.ndarray] | None = None  # _doc_centroids, made when first needed
        self._by_initial: dict[str, list[str]] = {}  # vocabulary by first letter (_spelled), as needed
        if SPELLING:
            _model_words()  # once per process (the tokenizer's vocabulary), not on a reader's question

    def _extensions(self, stem: str) -> list[str]:
        if len(stem) < 5:
            return []
        out = []
        i = bisect.bisect_left(self._vocab, stem)
        while i < len(self._vocab) and self._vocab[i].startswith(stem):
            if self._vocab[i] != stem and len(self._vocab[i]) - len(stem) <= 5:
                out.append(self._vocab[i])
            i += 1
        return out

    def _spelled(self, token: str, typed: str | None = None) -> list[str]:
        """Library words a question word the library lacks is probably a misspelling of
        ("gaurentee" -> "guarante", "arpnet" -> "arpanet"): same first letter, one edit (two from
        8 letters; Damerau's optimal string alignment: a swap of two letters counts as one), the
        closest ones only. A search engine's "did you mean", applied silently because the words
        are only added to the search, never removed. A word the embedding model knows whole
        (`typed` in its WordPiece vocabulary: "percentage", "unexpected", "resign") is a real word
        the library does not use, not a misspelling of one that looks like it ("parentage",
        "unelected", "resin")."""
        if len(token) < SPELLING_MIN_LENGTH or not token.isalpha() or token in self.index.vocab:
            return []
        words = _model_words()
        if typed is None or words is None or typed in words:
            return []
        from rapidfuzz import process
        from rapidfuzz.distance import OSA

        initial = token[0]
        pool = self._by_initial.get(initial)
        if pool is None:  # the vocabulary is sorted: one letter's words are one slice of it
            a = bisect.bisect_left(self._vocab, initial)
            b = bisect.bisect_left(self._vocab, chr(ord(initial) + 1))
            pool = self._by_initial[initial] = self._vocab[a:b]
        edits = 1 if len(token) < SPELLING_TWO_EDITS_FROM else 2
        found = process.extract(token, pool, scorer=OSA.distance, score_cutoff=edits, limit=8)
        if not found:
            return []
        best = min(d for _, d, _ in found)
        return sorted(w for w, d, _ in found if d == best)[:SPELLING_MAX_WORDS]

    def prepare(self, text: str, vector: np.ndarray) -> Query:
        tokens = tokenize([text])[0]
        search, equivalents = list(tokens), {}
        typed = typed_words(text) if SPELLING and any(t not in self.index.vocab for t in tokens) else {}
        for t in tokens:
            if SPELLING and t not in self.index.vocab:
                fixed = self._spelled(t, typed.get(t))
                if fixed:
                    search += [m for m in fixed if m not in search]
                    equivalents[t] = frozenset(fixed)
                    continue
            # Snowball leaves 'regul' (regulated) and 'regulatori' (regulatory) apart; longer
            # vocabulary words that start with the question's stem are searched too
            more = self._extensions(t)
            search += [m for m in more if m not in search]
            if more:
                equivalents[t] = frozenset(more)
        if _NAMING.search(text):
            # AskMSR-style rewrite of a naming question: answers say "known as", "called", "termed"
            answer = tokenize([_NAMING_ANSWER])[0]
            search += [t for t in answer if t not in search]
            equivalents.update({t: frozenset(answer) for t in tokens if t in answer})
        m = _DEFINITION_Q.match(text)
        x = m.group("x") if m else ""
        x = tokenize([x])[0] if x and len(x.split()) <= DEFINITION_MAX_WORDS and not _NOT_DEFINITION.search(x) else []
        return Query(text=text, vector=vector, tokens=tokens, search_tokens=search, equivalents=equivalents,
                     defines=frozenset(x) or None, kind=answertype.kind(text), words=answertype.question_words(text))

    def _definition_head(self, sent_row: int) -> frozenset[str] | None:
        """The tokens of what a sentence defines, if it is shaped like a definition (cached)."""
        if sent_row not in self._heads:
            m = None if self.index.sent_is_heading[sent_row] else _DEFINES.match(self.index.sentence_text(sent_row))
            self._heads[sent_row] = frozenset(tokenize([m.group("head")])[0]) if m else None
        return self._heads[sent_row]

    def _defines(self, q: Query, sent_rows: np.ndarray) -> np.ndarray:
        """1.0 for the sentences that define what a definition question asks about, else 0.0."""
        out = np.zeros(len(sent_rows), dtype=np.float32)
        for i, r in enumerate(sent_rows):
            head = self._definition_head(int(r))
            if head and q.defines <= head:
                out[i] = 1.0
        return out

    def _candidates(self, q: Query) -> np.ndarray:
        """Passage rows worth scoring: the best of each signal (dense and BM25, passage and
        sentence), by top-k selection in the index (nothing sorts the whole library)."""
        return candidate_rows(self.index, q.vector, q.search_tokens, self.s.candidates)

    def _article_prior(self, q: Query, cand: np.ndarray, fused: np.ndarray) -> np.ndarray:
        """Evidence from the whole article, added to each of its passages: the article's own cosine
        (its passages' mean vector) and its best candidate passage. Long-document retrieval scores
        a passage with its document, so a stray passage of an unrelated article does not win on a
        few shared words. Only the candidates' articles are scored."""
        s = self.s
        stored = self.index.centroids
        if stored is not None and len(stored.of_row) == self.n_passages:  # made at build time
            docs = np.asarray(stored.of_row[cand], dtype=np.int64)
            vectors = stored.vectors
        else:  # an index built elsewhere (pgstore): computed once, one pass over the passage vectors
            if self._docs is None:
                self._docs = _doc_centroids(self.index)
            of_row, centroid = self._docs
            docs = of_row[cand]
            vectors = centroid.__getitem__
        prior = np.zeros(len(cand), dtype=np.float32)
        if s.w_doc_dense:
            prior += s.w_doc_dense * _minmax(vectors(docs) @ q.vector)
        if s.w_doc_best:
            uniq, inv = np.unique(docs, return_inverse=True)
            best = np.full(len(uniq), -np.inf, dtype=np.float32)
            np.maximum.at(best, inv, fused)
            prior += s.w_doc_best * _minmax(best)[inv]
        return prior

    def _terms(self, q: Query) -> list[str]:
        """The question's distinct words that the library has (what coverage counts)."""
        return [t for t in dict.fromkeys(q.tokens) if t in self.index.vocab]

    def _coverage(self, q: Query, sent_idx: np.ndarray) -> np.ndarray:
        """Per sentence: the share of the question's distinct words its BM25 text holds (the sentence
        with its section heading and article title; a stem extension counts for its word). A
        sentence that holds the question's words together is likelier to answer than a passage that
        scatters them, or repeats one of them, across several sentences. Every word counts the
        same: weighted by IDF, one rare word ("cost") outweighs the subject the question is about."""
        out = np.zeros(len(sent_idx), dtype=np.float32)
        terms = self._terms(q)
        if not terms:
            return out
        eq = q.equivalents or {}
        for t in terms:
            out += bm25_scores_for(self.index.bm25_sentences, [t, *sorted(eq.get(t, ()))], sent_idx) > 0
        return out / len(terms)

    def _proximity(self, q: Query, spans: list[tuple[int, int]]) -> list[np.ndarray]:
        """Per passage (`spans`: its first sentence row and sentence count), per sentence: the
        share of the question's adjacent word pairs (in its order, stop words and PROXIMITY_SKIP
        out) that the sentence holds within PROXIMITY_WINDOW tokens of each other (the
        sequential-dependence cue of Metzler and Croft: "mother to child transmission" asked and
        written as a phrase). Headings hold none."""
        toks = [t for t in q.tokens if t not in PROXIMITY_SKIP]
        pairs = [(a, b) for a, b in zip(toks, toks[1:]) if a != b]
        out = [np.zeros(n, dtype=np.float32) for _, n in spans]
        if not pairs:
            return out
        eq = q.equivalents or {}
        wanted = [((a, *eq.get(a, ())), (b, *eq.get(b, ()))) for a, b in pairs]
        for res, at in zip(out, _passage_positions(self.index, spans)):
            for xa, xb in wanted:
                pa = [jp for x in xa for jp in at.get(x, ())]
                if pa:
                    pb = [jp for x in xb for jp in at.get(x, ())]
                    for j in {j for j, x in pa for k, y in pb if j == k and abs(x - y) <= PROXIMITY_WINDOW}:
                        res[j] += 1.0
            res /= len(pairs)
        return out

    def _with_context(self, ctx: Query, cand: np.ndarray, dense_p: np.ndarray,
                      bm25_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Passage scores of a follow-up plus a share of its conversation's (CAsT-style query
        expansion by history, weighted below the question itself): a follow-up that names
        nothing ("Or installment easier?") is still about what came before."""
        w = self.s.w_context
        ctx_dense = np.asarray(self.index.passage_vectors[cand], dtype=np.float32) @ ctx.vector
        ctx_bm25 = bm25_scores_for(self.index.bm25_passages, ctx.search_tokens, cand)
        return dense_p + w * ctx_dense, bm25_p + w * ctx_bm25

    def _kind_match(self, q: Query, first: int, n: int, s_fused: np.ndarray) -> tuple[float, np.ndarray]:
        """"How many ...?" wants a number, "Who ...?" a name: per sentence of one passage, 1.0 when it
        holds an answer of that kind (not one the question already says), and the passage's value,
        its best such sentence's own score (clipped to [0, 1]): a number beside the question's
        words counts, a stray number elsewhere in the passage does not."""
        ix = self.index
        heading = np.asarray(ix.sent_is_heading[first : first + n])
        match = np.array([not heading[i] and answertype.any_new(_kind_candidates(ix, first + i, q.kind), q.words)
                          for i in range(n)], dtype=np.float32)
        return (float(np.max(match * np.clip(s_fused, 0.0, 1.0))) if match.any() else 0.0), match

    def signals(self, q: Query, restrict: np.ndarray | None = None) -> Signals | None:
        """The candidate passages and their signals, before any passage weight is applied (None:
        no candidate). What `search` fuses, and what tests/fit_fusion.py fits the weights on."""
        ix, s = self.index, self.s
        if self.n_passages == 0:
            return None
        ctx = q.context if s.w_context else None
        # candidates from each signal (top-k of dense and BM25, passages and sentences: index.py)
        if restrict is not None:
            cand = np.asarray(restrict, dtype=np.int64)
        else:
            cand = self._candidates(q)
            if ctx is not None:
                cand = np.union1d(cand, self._candidates(ctx))
        if cand.size == 0:
            return None
        # exact signals for the candidates (BM25 of only their passages and sentences)
        bm25_p = bm25_scores_for(ix.bm25_passages, q.search_tokens, cand)
        dense_q = dense_p = np.asarray(ix.passage_vectors[cand], dtype=np.float32) @ q.vector
        if ctx is not None:
            dense_p, bm25_p = self._with_context(ctx, cand, dense_p, bm25_p)
        spans = ix.sent_rows[cand]  # [first, last) sentence rows of each candidate passage
        lengths = spans[:, 1] - spans[:, 0]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        sent_idx = np.repeat(spans[:, 0] - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
        s_cos = np.asarray(ix.sent_vectors[sent_idx], dtype=np.float32) @ q.vector
        s_bm = bm25_scores_for(ix.bm25_sentences, q.search_tokens, sent_idx)
        heading = ix.sent_is_heading[sent_idx]
        # a bare heading ("Exosome Therapy") is context, not evidence: it must not be a passage's best sentence
        s_cos = np.where(heading, np.minimum(s_cos, 0.0), s_cos)
        s_bm = np.where(heading, 0.0, s_bm)
        # per-sentence scores, for highlighting: the same mix at sentence level
        s_fused = 0.6 * _minmax(s_cos) + 0.4 * _minmax(s_bm)
        cover = np.zeros(len(sent_idx), dtype=np.float32)
        if s.w_cover_passage or s.w_cover_sentence:
            cover = np.where(heading, 0.0, self._coverage(q, sent_idx)).astype(np.float32)
            s_fused = s_fused + s.w_cover_sentence * cover
        defines = np.zeros(len(sent_idx), dtype=np.float32)
        if q.defines and s.definition_bonus:
            defines = self._defines(q, sent_idx)
            s_fused = s_fused + s.definition_bonus * defines
        return Signals(cand=cand, first=spans[:, 0].astype(np.int64), lengths=lengths, offsets=offsets,
                       dense_q=dense_q, dense_p=dense_p, bm25_p=bm25_p,
                       dense_s=np.maximum.reduceat(s_cos, offsets), bm25_s=np.maximum.reduceat(s_bm, offsets),
                       cover=np.maximum.reduceat(cover, offsets), terms=len(self._terms(q)),
                       defines=np.maximum.reduceat(defines, offsets),
                       s_cos=s_cos, s_fused=s_fused)

    def search(self, q: Query, k: int = 10, restrict: np.ndarray | None = None) -> list[Hit]:
        """The k best passages, best first. `restrict` limits the search to some passage rows."""
        s = self.s
        sig = self.signals(q, restrict)
        if sig is None:
            return []
        cand, offsets, lengths = sig.cand, sig.offsets, sig.lengths
        fused = (
            s.w_dense_passage * _minmax(sig.dense_p)
            + s.w_bm25_passage * _minmax(sig.bm25_p)
            + s.w_dense_sentence * _minmax(sig.dense_s)
            + s.w_bm25_sentence * _minmax(sig.bm25_s)
            + s.w_cover_passage * sig.cover
            + s.definition_bonus * sig.defines
        )
        if s.w_doc_dense or s.w_doc_best:
            fused = fused + self._article_prior(q, cand, fused)
        s_fused = sig.s_fused.copy()
        # the best RERANK_DEPTH passages are read again, sentence by sentence: proximity, answer kind
        order = np.argsort(-fused)[: max(k, RERANK_DEPTH)]
        if len(order) > k:
            # bonuses only add: one that even both whole bonuses cannot lift to the k-th best
            # score now cannot be among the k returned, and is not read (the same hits, less work)
            bonus = (s.w_prox_passage if s.w_prox_passage or s.w_prox_sentence else 0.0) + (
                s.w_kind_passage if q.kind and (s.w_kind_sentence or s.w_kind_passage) else 0.0)
            order = order[fused[order] + bonus >= fused[order[k - 1]]]
        if s.w_prox_passage or s.w_prox_sentence:
            near = order[:PROXIMITY_DEPTH]
            if s.w_cover_passage or s.w_cover_sentence:
                # a sentence holds a pair only if it holds two of the question's words, and coverage
                # (from the postings) counts them, except a word the library lacks, held only as its
                # equivalents (a misspelling's correction): the passages that may hold a pair are read
                lacking = len(dict.fromkeys(q.tokens)) - sig.terms
                near = near[sig.cover[near] * sig.terms + lacking > 1.5]
            for o, prox in zip(near, self._proximity(q, [(int(sig.first[o]), int(lengths[o])) for o in near])):
                a, n = int(offsets[o]), int(lengths[o])
                fused[o] += s.w_prox_passage * float(prox.max()) if n else 0.0
                s_fused[a : a + n] += s.w_prox_sentence * prox
            order = order[np.argsort(-fused[order], kind="stable")]
        if q.kind and (s.w_kind_sentence or s.w_kind_passage):
            for o in order:
                a, n = int(offsets[o]), int(lengths[o])
                value, match = self._kind_match(q, int(sig.first[o]), n, s_fused[a : a + n])
                fused[o] += s.w_kind_passage * value
                s_fused[a : a + n] += s.w_kind_sentence * match
            order = order[np.argsort(-fused[order], kind="stable")]
        order = order[:k]
        # the coverage and proximity weights add to the four signals' 1.0: scale back, so a score stays in [0, 1]
        scale = 1.0 / (1.0 + s.w_cover_passage + s.w_prox_passage)
        hits = []
        for o in order:
            a = offsets[o]
            b = a + lengths[o]
            hits.append(Hit(
                row=int(cand[o]), score=float(fused[o]) * scale, dense=float(sig.dense_q[o]),
                dense_sentence=float(sig.dense_s[o]), bm25=float(sig.bm25_p[o]), bm25_sentence=float(sig.bm25_s[o]),
                sentence_scores=s_fused[a:b], sentence_cosines=sig.s_cos[a:b],
            ))
        return hits

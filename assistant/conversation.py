"""One turn of a conversation: read the question against the earlier turns, search, answer.

No generative model: a follow-up is read with retrieval-side techniques.

- Subjects (what the articles discuss and compare, with their aliases) come from the articles
  (`subjects.py`). Each earlier question is read in turn, so every turn knows the subjects it
  was about, including the ones it only pointed at ("Does it hurt?").
- A question that names its own subject is searched as asked (a topic switch is followed),
  unless it is an ellipsis ("And what about mesotherapy?"): then the previous question is
  searched again with the new subject in place of the old one.
- A pronoun or a "the treatment" is replaced by the subject it points at; "the former" /
  "the latter" pick from the last two-subject question; a question that leans on the context
  without naming anything ("How long is the recovery?") gets the subject added.
- With no subject in play, an ambiguous follow-up gets the rare, topical words of the recent
  turns added (historical query expansion, as in TREC CAsT 2019), weighted by IDF and recency.
- Off-topic questions in the history are skipped; recent turns weigh more than older ones.
- A comparison (two or more subjects, named or in play, or "which ..." with none in play)
  is answered side by side: a passage that states the comparison itself first, then the best
  passages about each subject, each answer carrying `about`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from . import subjects as sj
from .config import Settings
from .embedder import Embedder
from .extraction import ABSTAIN_MESSAGE, answers_from_hits, confidence, evidence, near_duplicate, should_abstain, to_answer
from .index import Index
from .models import Answer, AskResponse
from .retrieval import Hit, Query, Retriever

# --- generic English cues (linguistic resources, no subject knowledge) ------------------------

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’\-]*")
_SINGULAR = {"it", "its", "itself", "it's", "this"}
_PLURAL = {"they", "them", "their", "theirs", "themselves", "these", "those", "both", "either", "neither", "each"}
_CATEGORY = (
    r"treatments?|procedures?|therap(?:y|ies)|techniques?|methods?|options?|approach(?:es)?|products?|"
    r"services?|modalit(?:y|ies)|sessions?|injections?|ones?"
)
_ANAPHOR = re.compile(
    rf"\b(?:(?P<former>the\s+former|the\s+first(?:\s+one)?)|(?P<latter>the\s+latter|the\s+second(?:\s+one)?|the\s+last\s+one)"
    rf"|(?P<pl_np>(?:these|those|both|the\s+two|each|either|neither)(?:\s+(?:of\s+(?:them|these|those)|{_CATEGORY}))?)"
    rf"|(?P<sg_np>(?:the|this|that)\s+(?:{_CATEGORY})|that\s+one)"
    rf"|(?P<pl>they|them|their|theirs|themselves)"
    rf"|(?P<poss>its)|(?P<sg>it's|it|itself|this))\b",
    re.I,
)
_WHICH = re.compile(r"\bwhich\b", re.I)
_COMPARE = re.compile(
    r"\b(?:vs\.?|versus|compar\w*|differ\w*|difference\w*|similar\w*|than|prefer\w*|superior|inferior|rather|instead|"
    r"better|best|worse|worst|more|most|less|least|fewer|fewest|"
    r"safer|safest|cheaper|cheapest|faster|fastest|quicker|quickest|slower|slowest|longer|longest|shorter|shortest|"
    r"stronger|strongest|gentler|gentlest|higher|highest|lower|lowest|bigger|biggest|smaller|smallest|greater|greatest|"
    r"newer|newest|older|oldest|easier|easiest|harder|hardest|riskier|riskiest|pricier|priciest|costlier|costliest|"
    r"deeper|deepest|milder|mildest|sooner|earlier|later|stronger|weaker|weakest|nicer|cleaner|simpler|simplest)\b",
    re.I,
)
_ELLIPSIS = re.compile(
    r"^\s*(?:and|also|plus|but|so|or|then|now|ok(?:ay)?|what\s+about|how\s+about|what\s+of|same\s+(?:for|with)|"
    r"and\s+(?:what|how)\s+about|and\s+for|and\s+with|as\s+for)\b[\s,]*",
    re.I,
)
_CONNECT = re.compile(r"^\s*(?:,|or|and|&|/|vs\.?|versus|,\s*or|,\s*and)\s*$", re.I)
_QUESTION_WORDS = {"what", "how", "why", "when", "where", "who", "whom", "whose", "which", "is", "are", "does", "do",
                   "did", "can", "could", "should", "would", "will", "was", "were", "has", "have", "tell", "give", "show",
                   "explain", "describe", "me", "please", "about", "s"}

_FILLER = {"then", "too", "please", "now", "instead", "as", "well", "also", "ok", "okay", "so"}

DECAY = 0.6  # weight of a turn, per on-topic turn back
HQE_TERMS = 3


@dataclass
class Resolved:
    """How a turn is read: the text to search, and the subjects it is about."""

    query: str
    subjects: list[str] = field(default_factory=list)  # names, in order
    compare: bool = False  # answer side by side, per subject
    ids: list[int] = field(default_factory=list)  # subject ids (for this index)
    on_topic: bool = True
    how: str = "as asked"  # as asked | pronoun | ellipsis | implicit | expansion | comparison | off-topic
    terms: list[str] = field(default_factory=list)  # topical words (for expansion)
    aspect: str = ""  # a comparison's question without its subjects ("Which is safer?")


# --- reading a question ----------------------------------------------------------------------

@dataclass
class _Ctx:
    index: Index
    subjects: sj.Subjects


def _content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text) if w.lower().strip("'’") not in sj.STOPWORDS and w.lower() not in _QUESTION_WORDS
            and not _ANAPHOR.fullmatch(w) and len(w) > 1]


def _idf(index: Index, stem: str) -> float | None:
    return index.idf.get(stem)


def _idf_max(index: Index) -> float:
    return math.log(1 + len(index.passages) + 0.5)


def _stems(words: list[str]) -> list[str]:
    out = []
    for w in words:
        out += sj.parts(w)
    return out


def _on_topic(ctx: _Ctx, text: str, mentions: list[sj.Mention]) -> bool:
    """Does the corpus know this question's words? (IDF-weighted share of its content words)"""
    if mentions:
        return True
    stems = [s for s in _stems(_content_words(text)) if len(s) > 1]
    if not stems:
        return True
    top = _idf_max(ctx.index)
    known = sum(_idf(ctx.index, s) or 0.0 for s in stems if s in ctx.index.vocab)
    total = sum((_idf(ctx.index, s) or top) if s in ctx.index.vocab else top for s in stems)
    return total > 0 and known / total >= 0.5


def _topical_terms(ctx: _Ctx, text: str, mentions: list[sj.Mention]) -> list[tuple[str, float]]:
    """Rare words of a question that the corpus knows, with their IDF (subject names left out)."""
    masked = _mask(text, [(m.start, m.end) for m in mentions])
    out = []
    seen = set()
    for w in _content_words(masked):
        ws = sj.parts(w)
        ws = [s for s in ws if s in ctx.index.vocab]
        if not ws:
            continue
        idf = max(_idf(ctx.index, s) or 0.0 for s in ws)
        k = "".join(ws)
        if k not in seen:
            seen.add(k)
            out.append((w.lower(), idf))
    return out


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    chars = list(text)
    for a, b in spans:
        for i in range(a, b):
            chars[i] = " "
    return "".join(chars)


def _compare_cue(text: str) -> bool:
    return bool(_COMPARE.search(text) or _WHICH.search(text))


def _joined(text: str, mentions: list[sj.Mention]) -> bool:
    """Two different subjects side by side: 'X or Y', 'X vs Y', 'X and Y', 'X, Y'."""
    for a, b in zip(mentions, mentions[1:]):
        if a.subject != b.subject and _CONNECT.match(text[a.end : b.start]):
            return True
    return False


def _name(ctx: _Ctx, sid: int) -> str:
    return ctx.subjects.subjects[sid].name


def _surface(ctx: _Ctx, sid: int, turns: list[Resolved]) -> str:
    """The words put in place of a pronoun: how the user last named the subject, with its name
    when that differs ('platelet-rich plasma (PRP)'), so both the user's and the articles' words are searched."""
    name = _name(ctx, sid)
    for t in reversed(turns):
        for m in ctx.subjects.find(t.query):
            if m.subject == sid:
                said = re.sub(r"(?:'s|’s)$", "", m.text)
                return said if sj.key(said) == sj.key(name) else f"{said} ({name})"
    return name


def _and(names: list[str], word: str = "and") -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {word} " + names[-1]


def _in_play(turns: list[Resolved]) -> tuple[Resolved | None, list[int], list[int]]:
    """(last on-topic turn with subjects, its subjects, recent subjects by weight)."""
    ctx_turns = [t for t in turns if t.on_topic and t.ids]
    if not ctx_turns:
        return None, [], []
    weight: dict[int, float] = {}
    order: list[int] = []
    for age, t in enumerate(reversed(ctx_turns)):
        for s in t.ids:
            if s not in weight:
                order.append(s)
            weight[s] = weight.get(s, 0.0) + DECAY ** age
    recent = [s for s in order if weight[s] >= DECAY ** 2 - 1e-9]
    return ctx_turns[-1], list(ctx_turns[-1].ids), recent


def _pair_source(turns: list[Resolved]) -> list[int]:
    for t in reversed(turns):
        if t.on_topic and len(t.ids) >= 2:
            return t.ids
    return []


def read(ctx: _Ctx, question: str, turns: list[Resolved]) -> Resolved:
    """Read one question given the earlier turns (already read)."""
    q = question.strip()
    S = ctx.subjects
    mentions = S.find(q)
    explicit = []
    for m in mentions:
        if m.subject not in explicit:
            explicit.append(m.subject)
    anaphors = [m for m in _ANAPHOR.finditer(q)]
    ellipsis = bool(_ELLIPSIS.match(q))
    on_topic = _on_topic(ctx, q, mentions)
    terms = [w for w, _ in _topical_terms(ctx, q, mentions)]
    cue = _compare_cue(q)
    context = [t for t in turns if t.on_topic]
    last, last_ids, recent = _in_play(context)

    def done(query: str, ids: list[int], compare: bool, how: str, topic: bool = True) -> Resolved:
        ids = list(dict.fromkeys(ids))
        aspect = q if how == "comparison" else _strip_mentions(query, S.find(query))
        return Resolved(query=query, subjects=[_name(ctx, i) for i in ids], compare=compare and len(ids) >= 2,
                        ids=ids, on_topic=topic, how=how, terms=terms, aspect=aspect)

    leans = bool(anaphors) or ellipsis
    # 1. nothing to lean on: as asked (a comparison if it names several subjects)
    if not context:
        if explicit:
            return done(q, explicit, len(explicit) >= 2 and (cue or _joined(q, mentions)), "as asked")
        if on_topic and _WHICH.search(q) and _COMPARE.search(q) and len(S) >= 2:
            ids = [s.id for s in S.subjects][:6]
            names = [s.name for s in S.subjects][:6]
            return done(f"{q.rstrip(' ?')}: {_and(names, 'or')}?", ids, True, "comparison")
        return done(q, [], False, "as asked", on_topic)

    # 2. the question names its subjects
    if explicit:
        outside = _ELLIPSIS.sub("", _mask(q, [(m.start, m.end) for m in mentions]), count=1)
        rest = _content_words(outside)
        bare = not [w for w in _WORD.findall(outside) if w.lower() not in _FILLER]
        if (ellipsis or bare) and len(rest) <= 2 and not anaphors:
            # ellipsis: "And what about mesotherapy?" -> the previous question, about mesotherapy
            base = context[-1]
            if base.ids:
                new = _swap(ctx, base, explicit, rest, q)
                if new is not None:
                    return new
            elif base.terms:
                extra = " ".join(rest)
                query = f"{base.query.rstrip(' ?')} {extra} ({_and([m.text for m in _unique(mentions)])})".replace("  ", " ")
                return done(query.strip(), explicit, len(explicit) >= 2, "ellipsis")
        # a pronoun before the first named subject points back: "Can it be combined with PRP?"
        first = mentions[0].start
        back = [a for a in anaphors if a.start() < first and (a.group("sg") or a.group("poss") or a.group("sg_np"))]
        if back and last_ids:
            ref = next((s for s in last_ids if s not in explicit), None)
            if ref is not None:
                query = _replace(q, back[:1], [_surface(ctx, ref, turns)])
                ids = [ref] + explicit
                cm = S.find(query)
                return done(query, ids, cue or _joined(query, cm), "pronoun")
        return done(q, explicit, len(explicit) >= 2 and (cue or _joined(q, mentions)), "as asked")

    # 3. no subject named
    if not on_topic and not leans and not (_WHICH.search(q) and cue):
        return done(q, [], False, "off-topic", False)  # not about the articles: do not drag context in
    if not last_ids:
        # no subject in play: a "which ..." comparison over every subject, or historical query expansion
        if _WHICH.search(q) and _COMPARE.search(q) and len(S) >= 2:
            ids = [s.id for s in S.subjects][:6]
            return done(f"{q.rstrip(' ?')}: {_and([_name(ctx, i) for i in ids], 'or')}?", ids, True, "comparison")
        short = len(_content_words(q)) <= 2
        if leans or short:
            extra = _expansion(ctx, context, q)
            if extra:
                return done(f"{q} ({' '.join(extra)})", [], False, "expansion")
        return done(q, [], False, "as asked", on_topic)

    # which subjects does the question point at?
    former = next((a for a in anaphors if a.group("former")), None)
    latter = next((a for a in anaphors if a.group("latter")), None)
    plural = [a for a in anaphors if a.group("pl") or a.group("pl_np")]
    singular = [a for a in anaphors if a.group("sg") or a.group("poss") or a.group("sg_np")]
    if former or latter:
        pair = _pair_source(context) or recent
        if pair:
            ref = pair[0] if former else pair[-1]
            return done(_replace(q, [former or latter], [_surface(ctx, ref, turns)]), [ref], False, "pronoun")
    multi_src = last_ids if len(last_ids) >= 2 else recent[:4]
    wants_many = bool(plural) or (cue and (_WHICH.search(q) is not None or bool(_COMPARE.search(q))))
    if len(last_ids) >= 2 and (last.compare or wants_many or singular or not anaphors):
        ids = last_ids
    elif wants_many and len(multi_src) >= 2:
        ids = multi_src
    else:
        ids = last_ids[:1]
    names = [_surface(ctx, i, turns) for i in ids]
    if len(ids) >= 2:
        pron = plural or singular
        if pron and not (_WHICH.search(q) and not plural):
            query = _replace(q, pron[:1], [_and(names)])
        else:
            query = f"{q.rstrip(' ?')}: {_and(names, 'or')}?"
        return done(query, ids, True, "comparison")
    if singular or plural:
        query = _replace(q, (singular or plural), [names[0]] * len(singular or plural))
        return done(query, ids, False, "pronoun")
    return done(f"{q} ({names[0].replace(' (', ', ').rstrip(')')})", ids, False, "ellipsis" if ellipsis else "implicit")


def _unique(mentions: list[sj.Mention]) -> list[sj.Mention]:
    seen, out = set(), []
    for m in mentions:
        if m.subject not in seen:
            seen.add(m.subject)
            out.append(m)
    return out


def _replace(text: str, anaphors: list[re.Match], names: list[str]) -> str:
    """Put names in place of pronouns; 'its' becomes a possessive."""
    out, pos = [], 0
    for a, name in sorted(zip(anaphors, names), key=lambda x: x[0].start()):
        word = a.group(0)
        rep = name
        if a.group("poss") or word.lower() in ("their", "theirs"):
            rep = f"{name}'s" if " and " not in name else name
        elif word.lower() == "it's":
            rep = f"{name} is"
        if a.start() == 0 or text[: a.start()].strip() == "":
            rep = rep[:1].upper() + rep[1:] if rep[:1].islower() and rep.split()[0].lower() == rep.split()[0] and False else rep
        out += [text[pos : a.start()], rep]
        pos = a.end()
    out.append(text[pos:])
    return "".join(out)


def _swap(ctx: _Ctx, base: Resolved, new: list[int], rest: list[str], q: str) -> Resolved | None:
    """The previous question again, with its subject(s) replaced by the new one(s)."""
    S = ctx.subjects
    ms = [m for m in S.find(base.query)]
    names = [m.text for m in _unique(S.find(q))]
    if not ms:
        return None
    if len(base.ids) == 1 or len(new) >= len(base.ids):
        # replace each old mention, in order, by the new subjects ("PRP" -> "mesotherapy")
        old_order = list(dict.fromkeys(m.subject for m in ms))
        mapping = {o: names[min(i, len(names) - 1)] for i, o in enumerate(old_order)}
        out, pos = [], 0
        for m in ms:
            out += [base.query[pos : m.start], mapping[m.subject]]
            pos = m.end
        out.append(base.query[pos:])
        query = "".join(out)
        if rest:
            query = f"{query.rstrip(' ?')} ({' '.join(rest)})"
        ids = S.ids_in(query)
        compare = len(ids) >= 2 and (_compare_cue(query) or _joined(query, S.find(query)))
        r = Resolved(query=query, subjects=[S.subjects[i].name for i in ids], compare=compare, ids=ids, how="ellipsis",
                     terms=base.terms, aspect=_strip_mentions(query, S.find(query)))
        return r
    # a comparison narrowed to fewer subjects: its aspect, about the new subject(s)
    aspect = _strip_mentions(base.query, ms)
    query = f"{aspect.rstrip(' ?:')} ({_and(names)})"
    return Resolved(query=query, subjects=[S.subjects[i].name for i in new], compare=len(new) >= 2, ids=list(new),
                    how="ellipsis", terms=base.terms, aspect=aspect)


_BEFORE = re.compile(r"(?:,\s*(?:or|and)?|\b(?:between|than|to|with|and|or|vs\.?|versus|of|for|from|after|about|on|&|/))\s*$", re.I)


def _strip_mentions(text: str, ms: list[sj.Mention]) -> str:
    """The question without its subjects: 'Which is safer, PRP or mesotherapy?' -> 'Which is safer?'"""
    out = text
    for m in sorted(ms, key=lambda m: -m.start):
        head = out[: m.start]
        b = _BEFORE.search(head)
        if b:
            head = head[: b.start()]
        out = head.rstrip() + " " + out[m.end :].lstrip()
    out = re.sub(r"^\s*(?:,|\bor\b|\band\b|\bvs\.?|\bversus\b)\s*", "", out.strip(), flags=re.I)
    out = re.sub(r"\s+([?.!,:;])", r"\1", out)
    out = re.sub(r"[:,;]+([?.!])", r"\1", out)
    out = re.sub(r"\s+", " ", out).strip()
    return "" if not _WORD.search(out) else out


def _expansion(ctx: _Ctx, context: list[Resolved], q: str) -> list[str]:
    """Historical query expansion: the rarest topical words of recent turns, weighted by recency."""
    have = set(_stems(_content_words(q)))
    score: dict[str, float] = {}
    surface: dict[str, str] = {}
    cutoff = 0.6 * _idf_max(ctx.index)
    for age, t in enumerate(reversed(context[-5:])):
        for w, idf in _topical_terms(ctx, t.query, ctx.subjects.find(t.query)):
            k = "".join(sj.parts(w))
            if k in have or idf < cutoff * 0.5:
                continue
            score[k] = score.get(k, 0.0) + idf * DECAY ** age
            surface.setdefault(k, w)
    best = sorted(score, key=lambda k: -score[k])[:HQE_TERMS]
    return [surface[k] for k in best]


def resolve(question: str, history: list[str] | None = None, index: Index | None = None,
            subjects: sj.Subjects | None = None) -> Resolved:
    """Read a question against the earlier questions. Without an index, the question is taken as is."""
    if index is None:
        return Resolved(query=question.strip())
    ctx = _Ctx(index, subjects if subjects is not None else sj.for_index(index))
    turns: list[Resolved] = []
    for h in (history or [])[-20:]:
        turns.append(read(ctx, h, turns))
    return read(ctx, question, turns)


# --- answering -------------------------------------------------------------------------------

def answer_turn(
    index: Index, retriever: Retriever, embedder: Embedder, settings: Settings,
    question: str, history: list[str], top_k: int,
) -> AskResponse:
    subjects = sj.for_index(index, settings.corpus_dir)
    turn = resolve(question, history, index, subjects)
    q = retriever.prepare(turn.query, embedder.encode_query(turn.query))
    hits = retriever.search(q, k=max(10, top_k * 3))
    if should_abstain(index, q, hits, settings):
        return AskResponse(question=question, resolved_question=turn.query, abstained=True, message=ABSTAIN_MESSAGE)
    if turn.compare and len(turn.ids) >= 2:
        answers = compare(index, retriever, embedder, settings, subjects, turn, q, top_k)
        if answers:
            return AskResponse(question=question, resolved_question=turn.query, abstained=False, answers=answers)
    if turn.how in ("pronoun", "ellipsis", "implicit") and turn.ids:
        hits = focus(subjects, hits, turn.ids)
    answers = answers_from_hits(index, hits, settings, top_k)
    return AskResponse(question=question, resolved_question=turn.query, abstained=False, answers=answers)


FOCUS = 0.15  # bonus for a passage about the subject(s) a follow-up was resolved to


def focus(subjects: sj.Subjects, hits: list[Hit], ids: list[int]) -> list[Hit]:
    """Re-rank a follow-up's hits: passages naming the subject(s) it was read as being about rise."""
    want = set(ids)

    def bonus(h: Hit) -> float:
        named = (subjects.body[h.row] | subjects.heading[h.row]) & want
        return FOCUS * len(named) / len(want)

    return sorted(hits, key=lambda h: -(h.score + bonus(h)))


_CONTRAST = re.compile(r"\b(?:whereas|unlike|in contrast|on the other hand|alternative|as opposed to)\b", re.I)


def comparison_sentences(index: Index, subjects: sj.Subjects, row: int, ids: list[int]) -> list[int]:
    """Sentences of a passage (indexes) that compare: they name a compared subject and carry a
    comparison cue ('less painful', 'more affordable than', 'whereas', 'on the other hand'), in a
    passage that names two or more of the subjects; parallel list items ('- X: ...', '- Y: ...') too."""
    p = index.passages[row]
    want = set(ids)
    if len(subjects.body[row] & want) < 2:
        return []
    text = index.docs[p.doc_id].text
    out = []
    for j, s in enumerate(p.sentences):
        if s.heading:
            continue
        sent = text[s.start : s.end]
        named = {m.subject for m in subjects.find(sent)} & want
        if named and (_COMPARE.search(sent) or _CONTRAST.search(sent)):
            out.append(j)
    return out


DEBUG = False


def _conf(index: Index, q: Query, hit: Hit) -> float:
    return confidence(evidence(index, q, hit))


def compare(index: Index, retriever: Retriever, embedder: Embedder, settings: Settings, subjects: sj.Subjects,
            turn: Resolved, q: Query, top_k: int) -> list[Answer]:
    """Evidence for each subject side by side; a passage stating the comparison itself first."""
    S = subjects
    ids = turn.ids
    want = set(ids)
    aspect = turn.aspect or _strip_mentions(turn.query, S.find(turn.query))
    if _content_words(aspect):
        vec = embedder.encode_query(aspect)
    else:
        aspect, vec = turn.query, q.vector  # "Compare X and Y.": the comparison in general
    names = " ".join(S.subjects[i].name for i in ids)
    cq = retriever.prepare(f"{aspect} {names}", vec)
    rows = S.rows(ids)
    hits = retriever.search(cq, k=min(len(rows), 40), restrict=rows)
    comp: list[tuple[Hit, float]] = []
    per: dict[int, list[Hit]] = {i: [] for i in ids}
    for h in hits:
        body = S.body[h.row] & want
        if len(body) >= 2:
            cs = comparison_sentences(index, S, h.row, ids)
            strong = bool(cs)
            best_cos = max((float(h.sentence_cosines[j]) for j in cs), default=0.0)
            best_fused = max((float(h.sentence_scores[j]) for j in cs), default=0.0)
            comp.append((h, h.score + (0.1 if strong else 0.0)))
            if DEBUG:
                print(f"   comp {h.score:.3f} strong={strong} cos={best_cos:.2f} sfused={best_fused:.2f} dense={h.dense:.2f} dsent={h.dense_sentence:.2f} {index.passages[h.row].text[:70]!r}")
        else:
            own = body or (S.heading[h.row] & want)
            if len(own) == 1:
                per[next(iter(own))].append(h)
    if DEBUG:
        for i in ids:
            for h in per[i][:2]:
                print(f"   {S.subjects[i].name}: {h.score:.3f} conf={_conf(index, cq, h):.2f} {index.passages[h.row].text[:80]!r}")
    per_subject = max(1, math.ceil(top_k * 2 / (len(ids) + 1)))
    best = max((h.score for i in ids for h in per[i][:1]), default=0.0)
    answers: list[Answer] = []
    used: list[int] = []
    comp.sort(key=lambda x: -x[1])
    for h, sc in comp[: max(1, top_k // 2)]:
        if sc < 0.7 * best:
            break
        named = [i for i in ids if i in S.body[h.row]]
        answers.append(to_answer(index, h, [], settings, about=" vs. ".join(S.subjects[i].name for i in named)))
        used.append(h.row)
    order = sorted(ids, key=lambda i: -(per[i][0].score if per[i] else 0.0))
    for depth in range(per_subject):
        for i in order:
            cands = [h for h in per[i] if h.row not in used and not any(near_duplicate(index, h.row, u) for u in used)]
            if not cands:
                continue
            h = cands[0]
            if depth > 0 and h.score < 0.5 * best:
                continue
            answers.append(to_answer(index, h, [], settings, about=S.subjects[i].name))
            used.append(h.row)
    return answers

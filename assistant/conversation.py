"""One turn of a conversation: read the question against the earlier turns, search, answer.

There is no generative model, so a follow-up is read with retrieval techniques:

- Subjects (what the articles discuss and compare) and their aliases come from the articles
  themselves (`subjects.py`). Each earlier question is read in turn, so every turn knows the
  subjects it was about, including the ones it only pointed at ("Does it hurt?").
- A question that names its own subject is searched as asked: a topic switch is followed. An
  ellipsis ("And what about mesotherapy?") repeats the previous question with the new subject.
- A pronoun ("it", "they", "the treatment", "the latter") is replaced by the subject it points at;
  a question that leans on the context without naming anything ("How long is the recovery?")
  gets the subject in play added.
- With no subject in play, a follow-up that cannot stand alone gets the rare, topical words of
  the recent turns added (historical query expansion, the best automatic run of TREC CAsT 2019),
  weighted by IDF and by recency.
- Off-topic questions in the history are skipped; recent turns weigh more than older ones.
- A comparison ("X or Y", "X vs Y", "compare X and Y", or "which ..." with two subjects in play,
  or with none in play: every subject) is answered side by side: a passage that states the
  comparison itself first, then the best passages about each subject; answers carry `about`.

`resolved_question` is the text that was searched, so a person sees how a follow-up was read.
"""
from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass, field, replace

from . import subjects as sj
from .config import Settings
from .embedder import Embedder
from .extraction import ABSTAIN_MESSAGE, answers_from_hits, near_duplicate, should_abstain, to_answer
from .index import Index
from .models import Answer, AskResponse
from .retrieval import Hit, Query, Retriever

# --- generic English cues (linguistic resources: no subject is named here) ---------------------

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’\-]*")
# category nouns a definite description can point back with: "the treatment", "this procedure"
_CATEGORY = (
    r"treatments?|procedures?|therap(?:y|ies)|techniques?|methods?|options?|approach(?:es)?|products?|"
    r"services?|modalit(?:y|ies)|injections?|ones?"
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
# "which" asking about the subjects themselves ("which one", "which treatment", "which is"), not
# about something else ("which city", "which journal")
_WHICH_SUBJECT = re.compile(
    rf"\bwhich(?:\s+(?:one|ones|of\s+(?:them|these|those|the\s+\w+)|{_CATEGORY})\b"
    r"|\s+(?:is|are|was|were|has|have|had|does|do|did|can|could|would|should|will|may|might)\b)",
    re.I,
)
_COMPARATIVES = (
    r"better|best|worse|worst|more|most|less|least|fewer|fewest|"
    r"safer|safest|cheaper|cheapest|faster|fastest|quicker|quickest|slower|slowest|longer|longest|shorter|shortest|"
    r"stronger|strongest|weaker|weakest|gentler|gentlest|higher|highest|lower|lowest|bigger|biggest|smaller|smallest|"
    r"greater|greatest|newer|newest|older|oldest|easier|easiest|harder|hardest|riskier|riskiest|pricier|priciest|"
    r"costlier|costliest|deeper|deepest|milder|mildest|sooner|earlier|later|nicer|cleaner|simpler|simplest|"
    r"superior|inferior"
)
_WHICH_VERB = re.compile(rf"\bwhich\s+\w+\s+(?:{_COMPARATIVES})\b", re.I)  # "which lasts longer"
_COMPARE = re.compile(
    rf"\b(?:vs\.?|versus|compar\w*|differ\w*|difference\w*|similar\w*|than|prefer\w*|rather|instead|{_COMPARATIVES})\b",
    re.I,
)
# a sentence that contrasts, rather than only saying that things differ
_SPECIFIC = re.compile(
    rf"\b(?:than|whereas|unlike|in contrast|on the other hand|as opposed to|alternative|{_COMPARATIVES})\b", re.I
)
# in a sentence naming two subjects, these set them against (or alongside) each other
_JOINT = re.compile(r"\b(?:while|but|however|although|though|instead|both|neither|either|same|similar(?:ly)?|like)\b", re.I)
_ELLIPSIS = re.compile(
    r"^\s*(?:and\s+(?:what|how)\s+about|what\s+about|how\s+about|what\s+of|same\s+(?:for|with)|and\s+for|and\s+with|"
    r"as\s+for|and|also|plus|but|so|or|then|now|ok(?:ay)?)\b[\s,]*",
    re.I,
)
_CONNECT = re.compile(r"\s*(?:,|or|and|&|/|vs\.?|versus|,\s*or|,\s*and)\s*", re.I)
_FRAME = re.compile(r"\s*(?:,|and|or|&|/|vs\.?|versus|compared\s+(?:to|with)|with|to|than)\s*(?:the\s+)?", re.I)
_BEFORE = re.compile(r"(?:,\s*(?:or|and)?|\b(?:between|than|to|with|and|or|vs\.?|versus|of|for|from|after|about|on|&|/))\s*$", re.I)
_QUESTION_WORDS = {
    "what", "how", "why", "when", "where", "who", "whom", "whose", "which", "is", "are", "does", "do", "did", "can",
    "could", "should", "would", "will", "was", "were", "has", "have", "tell", "give", "show", "explain", "describe",
    "me", "please", "about", "s",
}
_FILLER = {"then", "too", "please", "now", "instead", "as", "well", "also", "ok", "okay", "so"}
# words that do not make a comparison specific ("Compare X and Y.", "How does X compare to Y?")
_GENERIC = {
    "tell", "know", "explain", "describe", "stack", "stacks", "fare", "compare", "compared", "comparison",
    "difference", "differences", "differ", "versus", "vs", "against", "each", "other", "treatment", "treatments",
    "option", "options", "choose", "choice", "pick", "thing", "things",
}

# comparison words that name no aspect ("Which is better?", "How do they differ?"); "safer" does
_GENERAL = re.compile(r"(?:vs\.?|versus|compar\w*|differ\w*|similar\w*|than|prefer\w*|rather|instead|"
                      r"better|best|worse|worst|more|most|less|least)", re.I)

CONTEXT_TURNS = 2  # earlier questions scored alongside a follow-up (settings.w_context)
CONTEXT_STEPS_ASIDE = True  # ... only when the reader found no subject in play (else it names it)
DECAY = 0.6  # weight of a turn, per on-topic turn back: recent turns weigh more
HQE_TERMS = 3  # topical words added by historical query expansion
MAX_SUBJECTS = 6  # subjects gathered by "which ...?" with none in play
EVERY_TOP = 5  # ... from the subjects of its best passages
FOCUS = 0.15  # bonus for a passage naming the subject(s) a follow-up was read as being about
FOCUS_ALWAYS = False  # also for single questions that name their subject (off: the core's ranking stays as is)
ASPECT_WEIGHT = 0.5  # share of the aspect-only vector in a comparison's dense scores
CONTRAST_BONUS = 0.05  # among comparisons, one that contrasts the subjects beats one that only names them
DIRECT_BONUS = 0.05  # ... and more when one sentence sets two of them against each other ('more X than Y')
COMPARE_FIRST = 0.7
# A taken passage's near-duplicates (its `also_in`) are looked for among this many of the best
# of its pool, as a plain answer looks among its candidates: a comparison's pool holds every
# passage naming a subject, tens of thousands in a library of a million (148k checks, 8 s).
# The further answers of step 3 are looked for among as many of the best remaining passages: in
# a library full of near-copies, walking the whole pool for a fresh one cost 65k checks (1.3 s).
DUPLICATE_WINDOW = 200


@dataclass
class Resolved:
    """How a turn is read: the text to search, and the subjects it is about."""

    query: str
    subjects: list[str] = field(default_factory=list)  # subject names, in order
    compare: bool = False  # answer side by side, per subject
    ids: list[int] = field(default_factory=list)  # subject ids (of the index it was read against)
    on_topic: bool = True
    how: str = "as asked"  # as asked | pronoun | ellipsis | implicit | expansion | comparison | all subjects | off-topic
    aspect: str = ""  # the question without its subjects ("Which is safer?")


class _Ctx:
    """An index and its subjects, with the mentions and topical words of each text read once."""

    def __init__(self, index: Index, subjects: sj.Subjects) -> None:
        self.index = index
        self.subjects = subjects
        self._found: dict[str, list[sj.Mention]] = {}
        self._terms: dict[str, list[tuple[str, float]]] = {}

    def find(self, text: str) -> list[sj.Mention]:
        found = self._found.get(text)
        if found is None:
            found = self._found[text] = self.subjects.find(text)
        return found

    def terms(self, text: str) -> list[tuple[str, float]]:
        terms = self._terms.get(text)
        if terms is None:
            terms = self._terms[text] = _topical_terms(self, text)
        return terms


# --- reading a question ----------------------------------------------------------------------

def _content_words(text: str) -> list[str]:
    return [
        w for w in _WORD.findall(text)
        if w.lower().strip("'’") not in sj.STOPWORDS and w.lower() not in _QUESTION_WORDS
        and not _ANAPHOR.fullmatch(w) and len(w) > 1
    ]


def _idf_max(index: Index) -> float:
    return math.log(1 + len(index.passages) + 0.5)


def _on_topic(ctx: _Ctx, text: str, mentions: list[sj.Mention]) -> bool:
    """Does the corpus know this question's words? (IDF-weighted share of its content words)"""
    if mentions:
        return True
    stems = [p for w in _content_words(text) if not _COMPARE.fullmatch(w) for p in sj.stems(w) if len(p) > 1]
    if not stems:
        return True
    idf, vocab, top = ctx.index.idf, ctx.index.vocab, _idf_max(ctx.index)
    known = sum(idf.get(s, 0.0) for s in stems if s in vocab)
    total = sum(idf.get(s, top) if s in vocab else top for s in stems)
    return total > 0 and known / total >= 0.5


def _topical_terms(ctx: _Ctx, text: str) -> list[tuple[str, float]]:
    """Words of a question the corpus knows, with their IDF; subject names left out."""
    masked = _mask(text, [(m.start, m.end) for m in ctx.find(text)])
    out, seen = [], set()
    for w in _content_words(masked):
        ps = [p for p in sj.stems(w) if p in ctx.index.vocab]
        k = "".join(ps)
        if ps and k not in seen:
            seen.add(k)
            out.append((w.lower(), max(ctx.index.idf.get(p, 0.0) for p in ps)))
    return out


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    chars = list(text)
    for a, b in spans:
        chars[a:b] = " " * (b - a)
    return "".join(chars)


def _unique(mentions: list[sj.Mention]) -> list[int]:
    return list(dict.fromkeys(m.subject for m in mentions))


def _joined(text: str, mentions: list[sj.Mention]) -> bool:
    """Two different subjects side by side: 'X or Y', 'X vs Y', 'X and Y', 'X, Y'."""
    return any(a.subject != b.subject and _CONNECT.fullmatch(text[a.end : b.start]) for a, b in zip(mentions, mentions[1:]))


def _is_comparison(text: str, mentions: list[sj.Mention]) -> bool:
    return len(_unique(mentions)) >= 2 and bool(_COMPARE.search(text) or _WHICH.search(text) or _joined(text, mentions))


def _and(names: list[str], word: str = "and") -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {word} " + names[-1]


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
    return out if _WORD.search(out) else ""


def _replace(text: str, spans: list[re.Match], names: list[str]) -> str:
    """Put names in place of pronouns; 'its' and 'their' become possessives."""
    out, pos = [], 0
    for a, name in sorted(zip(spans, names), key=lambda x: x[0].start()):
        word = a.group(0).lower()
        rep = name
        if word in ("its", "their", "theirs") and " and " not in name:
            rep = f"{name}'s"
        elif word == "it's":
            rep = f"{name} is"
        if not text[: a.start()].strip():
            rep = rep[:1].upper() + rep[1:]
        out += [text[pos : a.start()], rep]
        pos = a.end()
    out.append(text[pos:])
    return "".join(out)


def _in_play(context: list[Resolved]) -> tuple[Resolved | None, list[int]]:
    """(the last on-topic turn with subjects, the subjects of recent turns, most recent first).

    A turn's weight decays by DECAY per on-topic turn back; subjects below DECAY**2 are out of play.
    """
    with_subjects = [t for t in context if t.ids]
    if not with_subjects:
        return None, []
    weight: dict[int, float] = {}
    for age, t in enumerate(reversed(with_subjects)):
        for s in t.ids:
            weight[s] = weight.get(s, 0.0) + DECAY**age
    recent = [s for s in weight if weight[s] >= DECAY**2 - 1e-9]
    return with_subjects[-1], recent


class _Reader:
    """Reads the questions of one conversation in order."""

    def __init__(self, ctx: _Ctx) -> None:
        self.ctx = ctx
        self.S = ctx.subjects
        self.turns: list[Resolved] = []

    def name(self, sid: int) -> str:
        return self.S.subjects[sid].name

    def said(self, sid: int) -> str:
        """How the user last named a subject, with its name when that differs:
        'platelet-rich plasma (PRP)' searches both the user's and the articles' words."""
        name = self.name(sid)
        for t in reversed(self.turns):
            for m in self.ctx.find(t.query):
                if m.subject == sid:
                    said = re.sub(r"(?:'s|’s)$", "", m.text)
                    return said if sj.key(said) == sj.key(name) else f"{said} ({name})"
        return name

    def result(self, query: str, ids: list[int], compare: bool, how: str, on_topic: bool = True,
               aspect: str | None = None) -> Resolved:
        ids = list(dict.fromkeys(ids))
        if aspect is None:
            aspect = _strip_mentions(query, self.ctx.find(query))
        return Resolved(query=query, subjects=[self.name(i) for i in ids], compare=compare and len(ids) >= 2,
                        ids=ids, on_topic=on_topic, how=how, aspect=aspect)

    def read(self, question: str) -> Resolved:
        r = self._read(question.strip())
        self.turns.append(r)
        return r

    def _read(self, q: str) -> Resolved:
        S = self.S
        mentions = self.ctx.find(q)
        explicit = _unique(mentions)
        anaphors = list(_ANAPHOR.finditer(q))
        ellipsis = bool(_ELLIPSIS.match(q))
        on_topic = _on_topic(self.ctx, q, mentions)
        which_cmp = bool(_WHICH.search(q) and _COMPARE.search(q))
        which_all = which_cmp and bool(_WHICH_SUBJECT.search(q) or _WHICH_VERB.search(q))
        context = [t for t in self.turns if t.on_topic]
        last, recent = _in_play(context)
        last_ids = last.ids if last else []

        # 1. nothing to lean on: the question as asked
        if not context:
            if explicit:
                return self.result(q, explicit, _is_comparison(q, mentions), "as asked")
            if on_topic and which_all and len(S) >= 2:
                return self._everything(q)
            return self.result(q, [], False, "as asked", on_topic)

        # 2. the question names its subject(s)
        if explicit:
            outside = _ELLIPSIS.sub("", _mask(q, [(m.start, m.end) for m in mentions]), count=1)
            rest = _content_words(outside)
            bare = not [w for w in _WORD.findall(outside) if w.lower() not in _FILLER]
            if (ellipsis or bare) and len(rest) <= 2 and not anaphors:
                swapped = self._swap(context[-1], q, explicit, rest)
                if swapped is not None:
                    return swapped
            # a pronoun before the first named subject points back: "Can it be combined with PRP?"
            back = [a for a in anaphors if a.start() < mentions[0].start and (a.group("sg") or a.group("poss") or a.group("sg_np"))]
            ref = next((s for s in last_ids if s not in explicit), None)
            if back and ref is not None:
                query = _replace(q, back, [self.said(ref)] * len(back))
                return self.result(query, [ref] + explicit, _is_comparison(query, self.ctx.find(query)), "pronoun")
            return self.result(q, explicit, _is_comparison(q, mentions), "as asked")

        # 3. no subject named
        leans = bool(anaphors) or ellipsis
        if not on_topic and not leans and not which_cmp:
            return self.result(q, [], False, "off-topic", False)  # not about the articles: no context dragged in
        if not last_ids:
            if which_all and len(S) >= 2:
                return self._everything(q)
            if leans or len(_content_words(q)) <= 2:
                extra = self._expansion(context, q)
                if extra:
                    return self.result(f"{q} ({' '.join(extra)})", [], False, "expansion", aspect=q)
            return self.result(q, [], False, "as asked", on_topic)

        former = next((a for a in anaphors if a.group("former")), None)
        latter = next((a for a in anaphors if a.group("latter")), None)
        if former or latter:
            pair = next((t.ids for t in reversed(context) if len(t.ids) >= 2), recent)
            if pair:
                ref = pair[0] if former else pair[-1]
                return self.result(_replace(q, [former or latter], [self.said(ref)]), [ref], False, "pronoun")
        plural = [a for a in anaphors if a.group("pl") or a.group("pl_np")]
        singular = [a for a in anaphors if a.group("sg") or a.group("poss") or a.group("sg_np")]
        many = bool(plural) or bool(_COMPARE.search(q)) or which_cmp
        if len(last_ids) >= 2:
            ids = last_ids  # the last question was about several: so is this one
        elif many and len(recent) >= 2:
            ids = recent[:4]  # "Which one is less painful?" after one question on each
        else:
            ids = last_ids[:1]
        if len(ids) >= 2:
            names = [self.said(i) for i in ids]
            pron = plural or singular
            if pron and not (_WHICH.search(q) and not plural):
                query = _replace(q, pron[:1], [_and(names)])
            else:
                query = f"{q.rstrip(' ?')}: {_and(names, 'or')}?"
            return self.result(query, ids, True, "comparison", aspect=q)
        if singular or plural:
            pron = singular or plural
            return self.result(_replace(q, pron, [self.said(ids[0])] * len(pron)), ids, False, "pronoun")
        # context added to a question that names nothing: the name the articles use most
        return self.result(f"{q} ({self.name(ids[0])})", ids, False, "ellipsis" if ellipsis else "implicit", aspect=q)

    def _everything(self, q: str) -> Resolved:
        """'Which has less downtime?' with no subject in play: searched as asked; the subjects are
        those its best passages are about (`answer_turn`)."""
        return self.result(q, [], False, "all subjects", aspect=q)

    def _swap(self, base: Resolved, q: str, new: list[int], rest: list[str]) -> Resolved | None:
        """Ellipsis: the previous question again, its subject(s) replaced by the new one(s)."""
        S = self.S
        said = {m.subject: re.sub(r"(?:'s|’s)$", "", m.text) for m in reversed(self.ctx.find(q))}
        names = [said[i] for i in new]
        extra = f" ({' '.join(rest)})" if rest else ""
        ms = self.ctx.find(base.query)
        if not ms:
            if not base.on_topic or not _content_words(base.query):
                return None
            query = f"{base.query.rstrip(' ?.')} ({_and(names)}){extra}?"
            return self.result(query, new, len(new) >= 2, "ellipsis")
        old = _unique(ms)
        if len(old) == 1 or len(new) >= len(old):
            # "Is PRP approved by the FDA?" + "And mesotherapy?" -> "Is mesotherapy approved by the FDA?"
            mapping = {o: names[min(i, len(names) - 1)] for i, o in enumerate(old)}
            out, pos = [], 0
            for m in ms:
                out += [base.query[pos : m.start], mapping[m.subject]]
                pos = m.end
            out.append(base.query[pos:])
            query = "".join(out)
            for name in set(mapping.values()):  # "platelet-rich plasma (PRP)" became "X (X)"
                query = re.sub(rf"({re.escape(name)})\s*\(\s*{re.escape(name)}\s*\)", r"\1", query)
            if extra:
                query = f"{query.rstrip(' ?')}{extra}?"
            ids = S.ids_in(query)
            return self.result(query, ids, _is_comparison(query, self.ctx.find(query)), "ellipsis")
        # a comparison narrowed to fewer subjects: its aspect, about the new one(s)
        aspect = _strip_mentions(base.query, ms)
        query = f"{aspect.rstrip(' ?.:')} ({_and(names)}){extra}?"
        return self.result(query, new, len(new) >= 2, "ellipsis", aspect=aspect)

    def _expansion(self, context: list[Resolved], q: str) -> list[str]:
        """Historical query expansion: the rarest topical words of recent turns, weighted by recency."""
        have = {"".join(sj.stems(w)) for w in _content_words(q)}
        score: dict[str, float] = {}
        surface: dict[str, tuple[int, int, str]] = {}  # key -> (age, position, word): to show in reading order
        floor = 0.3 * _idf_max(self.ctx.index)
        for age, t in enumerate(reversed(context[-3:])):
            for pos, (w, idf) in enumerate(self.ctx.terms(t.query)):
                k = "".join(sj.stems(w))
                if k in have or idf < floor:
                    continue
                score[k] = score.get(k, 0.0) + idf * DECAY**age
                surface.setdefault(k, (age, pos, w))
        best = sorted(score, key=lambda k: -score[k])[:HQE_TERMS]
        keep = [k for k in best if score[k] >= 0.6 * score[best[0]]]  # the latest turn's words lead
        return [surface[k][2] for k in sorted(keep, key=lambda k: surface[k][:2])]


def resolve(question: str, history: list[str] | None = None, index: Index | None = None,
            subjects: sj.Subjects | None = None) -> Resolved:
    """Read a question against the earlier questions (oldest first; the last 20 count).
    Without an index there are no subjects and the question is taken as asked."""
    if index is None:
        return Resolved(query=question.strip(), aspect=question.strip())
    reader = _Reader(_Ctx(index, subjects if subjects is not None else sj.for_index(index)))
    for h in (history or [])[-20:]:
        if isinstance(h, str) and h.strip():
            reader.read(h)
    return reader.read(question)


# --- answering -------------------------------------------------------------------------------

def answer_turn(
    index: Index, retriever: Retriever, embedder: Embedder, settings: Settings,
    question: str, history: list[str], top_k: int,
) -> AskResponse:
    subjects = sj.for_index(index, settings.corpus_dir)
    turn = resolve(question, history, index, subjects)
    aspect_vector = None
    if turn.compare and not _general(turn.aspect):
        vec, aspect_vector = _encode(embedder, [turn.query, turn.aspect])
    else:
        vec = embedder.encode_query(turn.query)
    q = retriever.prepare(turn.query, vec)
    q.context = _context(retriever, embedder, settings, turn, history)
    hits = retriever.search(q, k=max(10, top_k * 3))
    if turn.how == "all subjects":
        # "Which has less downtime?" with no subject in play: when its best passages are about
        # several subjects, it compares them (searched with their names, as if it had named them)
        ids = list(dict.fromkeys(i for h in hits[:EVERY_TOP] for i in sorted(subjects.body[h.row] | subjects.heading[h.row])))
        if len(ids) >= 2:
            ids = ids[:MAX_SUBJECTS]
            names = [subjects.subjects[i].name for i in ids]
            turn = replace(turn, query=f"{turn.query.rstrip(' ?')}: {_and(names, 'or')}?", ids=ids, subjects=names,
                           compare=True)
            q = retriever.prepare(turn.query, embedder.encode_query(turn.query))
            hits = retriever.search(q, k=max(10, top_k * 3))
    if should_abstain(index, q, hits, settings, embedder):
        return AskResponse(question=question, resolved_question=turn.query, abstained=True, message=ABSTAIN_MESSAGE)
    answers: list[Answer] = []
    if turn.compare:
        answers = compare(index, retriever, settings, subjects, turn, q, top_k, aspect_vector)
    if not answers:
        if turn.ids and (turn.how in ("pronoun", "ellipsis", "implicit") or FOCUS_ALWAYS):
            hits = focus(index, subjects, hits, turn.ids)
        answers = answers_from_hits(index, hits, settings, top_k)
    return AskResponse(question=question, resolved_question=turn.query, abstained=False, answers=answers)


def _context(retriever: Retriever, embedder: Embedder, settings: Settings, turn: Resolved,
             history: list[str]) -> Query | None:
    """The recent earlier questions as one query, scored alongside a follow-up (settings.w_context).
    None for a first question, for one that names its own subject (a topic switch, or a question
    that stands alone), and for one read as off-topic that does not lean on the conversation
    (abstention judges a follow-up with its context too, see extraction.judged: the history must
    not carry a question about something else; "Which documents?" leans, "How tall is Mount
    Everest?" does not)."""
    if not settings.w_context or not history or (turn.ids and (CONTEXT_STEPS_ASIDE or turn.how == "as asked")):
        return None
    if not turn.on_topic and not _leans(turn.query):
        return None  # a question of its own on something else ("Who won the last world cup?")
    text = " ".join(h.strip() for h in history[-CONTEXT_TURNS:])[-settings.max_question_chars :]
    return retriever.prepare(text, embedder.encode_query(text))


def _leans(question: str) -> bool:
    """Does a question lean on the conversation: a pronoun, an ellipsis, or at most two content
    words ("Which documents?", "And the rate?")."""
    return bool(_ANAPHOR.search(question) or _ELLIPSIS.match(question)) or len(_content_words(question)) <= 2


def _encode(embedder: Embedder, texts: list[str]) -> list:
    """Query vectors of several texts, in one batch when the embedder offers it."""
    batch = getattr(embedder, "encode_queries", None)
    return list(batch(texts)) if batch is not None else [embedder.encode_query(t) for t in texts]


def _general(aspect: str) -> bool:
    """A comparison with no particular aspect: 'Compare X and Y.', 'How do X and Y differ?'"""
    return not [w for w in _content_words(aspect) if not _GENERAL.fullmatch(w) and w.lower() not in _GENERIC]


def focus(index: Index, subjects: sj.Subjects, hits: list[Hit], ids: list[int]) -> list[Hit]:
    """Re-rank a follow-up's hits: passages about the subject(s) it was read as being about rise
    (named in the text, the section heading or a one-subject title). A passage that also names
    other subjects is not held back, since comparing the subject with another often is the answer
    ("Are they regulated?" -> how exosomes and PRP are each regulated), unless its answering
    sentence is about another subject only ("What does PRP contain?" -> "Mesotherapy injections
    often contain minerals ...")."""
    want = set(ids)

    def bonus(h: Hit) -> float:
        named = subjects.body[h.row] | subjects.heading[h.row]
        if not named & want:
            return 0.0
        p = index.passages[h.row]
        scores = [-1.0 if s.heading else float(v) for s, v in zip(p.sentences, h.sentence_scores)]
        if scores:
            s = p.sentences[max(range(len(scores)), key=scores.__getitem__)]
            said = set(subjects.ids_in(index.docs[p.doc_id].text[s.start : s.end]))
            if said and not said & want:
                return 0.0  # the sentence that answers is about another subject
        return FOCUS * len(named & want) / len(want)

    return sorted(hits, key=lambda h: -(h.score + bonus(h)))


def _lead_subject(subjects: sj.Subjects, sentence: str) -> int | None:
    """The subject a list item or sentence opens with ('- Mesotherapy: Can be more painful ...')."""
    ms = subjects.find(sentence[:80])
    if ms and not re.search(r"\w", re.sub(r"^\s*(?:[-*•·–]|\d{1,2}[.)]|[a-zA-Z][.)])\s+", "", sentence[: ms[0].start])):
        return ms[0].subject
    return None


def _duplicate(index: Index, subjects: sj.Subjects, a: int, b: int) -> bool:
    """extraction.near_duplicate, remembered per index (passages do not change within one)."""
    memo = subjects.memo.setdefault("duplicate", {})
    if len(memo) > 200_000:
        memo.clear()
    pair = (a, b) if a < b else (b, a)
    if pair not in memo:
        memo[pair] = near_duplicate(index, a, b)
    return memo[pair]


def comparison_kind(index: Index, subjects: sj.Subjects, row: int, ids: list[int]) -> tuple[int, bool, bool, bool]:
    memo = subjects.memo.setdefault("kind", {})
    if len(memo) > 200_000:
        memo.clear()
    k = (row, tuple(sorted(ids)))
    if k not in memo:
        memo[k] = _comparison_kind(index, subjects, row, ids)
    return memo[k]


def _comparison_kind(index: Index, subjects: sj.Subjects, row: int, ids: list[int]) -> tuple[int, bool, bool, bool]:
    """How a passage naming two or more of the subjects compares them: (framing, states, contrasts, direct).

    framing is 2 when a heading inside the passage sets the subjects side by side ('PRP Therapy vs.
    Mesotherapy'), 1 when a sentence does ('the difference between X and Y'), else 0; states is
    True when it says anything comparative about them; contrasts when a sentence naming one of
    them contrasts ('less painful', 'more affordable than', 'on the other hand'), or parallel list
    items give one line per subject ('- X: ...', '- Y: ...'); direct when one sentence names two of
    them and contrasts them ('more research is available on X than Y'), or parallel items do.
    """
    p = index.passages[row]
    want = set(ids)
    if len(subjects.body[row] & want) < 2:
        return 0, False, False, False
    text = index.docs[p.doc_id].text
    framing, states, contrasts, direct, leads = 0, False, False, False, set()
    for s in p.sentences:
        sent = text[s.start : s.end]
        ms = [m for m in subjects.find(sent) if m.subject in want]
        named = {m.subject for m in ms}
        if len(named) >= 2:
            for x, y in zip(ms, ms[1:]):
                if x.subject != y.subject and _FRAME.fullmatch(sent[x.end : y.start]):
                    framing = max(framing, 2 if s.heading else 1)
        if s.heading:
            continue
        states = states or bool(named and _COMPARE.search(sent))
        contrasts = contrasts or bool(named and _SPECIFIC.search(sent)) or bool(len(named) >= 2 and _JOINT.search(sent))
        direct = direct or bool(len(named) >= 2 and _SPECIFIC.search(sent))
        lead = _lead_subject(subjects, sent)
        if lead in want:
            leads.add(lead)
    contrasts = contrasts or len(leads) >= 2
    direct = direct or len(leads) >= 2
    return framing, states or contrasts or framing > 0, contrasts, direct


def compare(index: Index, retriever: Retriever, settings: Settings, subjects: sj.Subjects, turn: Resolved,
            q: Query, top_k: int, aspect_vector=None) -> list[Answer]:
    """Evidence for each subject side by side, a passage stating the comparison itself first.

    One search, restricted to the passages that name any of the subjects, scores them all on one
    scale. A passage naming two or more of them and comparing them is a comparison; the others are
    evidence for the one subject they name. A comparison leads when it is about as relevant as the
    best single-subject passage; with no aspect ("Compare X and Y."), the passage that frames the
    comparison (a heading or sentence setting X and Y side by side) leads.
    """
    S = subjects
    ids = turn.ids
    want = set(ids)
    rows = S.rows(ids)
    if not rows.size:
        return []
    general = _general(turn.aspect)
    if not general:
        # every passage here names a subject: the names would only favour passages naming several,
        # so BM25 scores the aspect alone; the dense side blends the whole question and the aspect
        q = replace(retriever.prepare(turn.aspect, q.vector), text=q.text)
    hits = retriever.search(q, k=int(rows.size), restrict=rows)
    if aspect_vector is not None and ASPECT_WEIGHT > 0:
        by_row = {h.row: h for h in retriever.search(replace(q, vector=aspect_vector), k=int(rows.size), restrict=rows)}
        hits = sorted(
            (replace(by_row[h.row], score=(1 - ASPECT_WEIGHT) * h.score + ASPECT_WEIGHT * by_row[h.row].score)
             for h in hits if h.row in by_row),
            key=lambda h: -h.score,
        )
    comp: list[tuple[tuple, Hit, bool]] = []
    per: dict[int, list[Hit]] = {i: [] for i in ids}
    for h in hits:
        named = S.body[h.row] & want
        if len(named) >= 2:
            framing, states, contrasts, direct = comparison_kind(index, S, h.row, ids)
            rank = h.score + (CONTRAST_BONUS if contrasts else 0.0) + (DIRECT_BONUS if direct else 0.0)
            comp.append((((framing, rank) if general else (rank,)), h, states))
        else:
            own = named or (S.heading[h.row] & want)
            if len(own) == 1:
                per[next(iter(own))].append(h)
    comp.sort(key=lambda x: x[0], reverse=True)
    best_single = max((per[i][0].score for i in ids if per[i]), default=0.0)
    answers: list[Answer] = []
    used: list[int] = []

    def fresh(h: Hit) -> bool:
        return h.row not in used and not any(_duplicate(index, S, h.row, u) for u in used)

    def take(h: Hit, pool: list[Hit], about: str) -> None:
        others = [o for o in pool[:DUPLICATE_WINDOW]
                  if o.row != h.row and o.row not in used and _duplicate(index, S, h.row, o.row)]
        answers.append(to_answer(index, h, others, settings, about=about))
        used.extend([h.row] + [o.row for o in others])

    def about(h: Hit) -> str:
        return " vs. ".join(S.subjects[i].name for i in ids if i in S.body[h.row])

    # 1. the comparison itself, when it is about as relevant as the best single-subject passage
    #    (with every subject in play, a passage comparing two of them must beat the best single one);
    #    for a question with an aspect, further comparisons lead while they beat every single-subject
    #    passage. A shorter answer list is a prefix of a longer one: each step stops once top_k
    #    answers are taken only because what it would add is cut off at the end anyway.
    every = turn.how == "all subjects"
    first = 1.0 if every else COMPARE_FIRST
    comp_hits = [h for _, h, _ in comp]
    stating = [h for _, h, states in comp if states]
    for n, h in enumerate(stating):
        if len(answers) >= top_k:
            break  # what follows would be cut off below: the same answers, without the checks
        if not fresh(h):
            continue
        if answers and (general or h.score < best_single):
            break  # more comparisons lead only while more relevant than any single-subject passage
        if not (general and n == 0 and not every) and h.score < first * best_single:
            break
        take(h, comp_hits, about(h))
    # 2. side by side: the best passage about each subject (the subjects the question named
    #    always get one; those gathered by "which ...?" only when about as relevant as the best)
    for i in sorted(ids, key=lambda i: -(per[i][0].score if per[i] else 0.0)):
        if len(answers) >= top_k:
            break
        cand = next((h for h in per[i] if fresh(h)), None)  # the first fresh one: not all checked
        if cand is not None and (not every or cand.score >= 0.5 * best_single):
            take(cand, per[i], S.subjects[i].name)
    # 3. then the rest by relevance: more comparisons, more about each subject
    best = max([h.score for h in comp_hits[:1]] + [best_single])
    rest = [(h, comp_hits, None) for h in comp_hits] + [(h, per[i], S.subjects[i].name) for i in ids for h in per[i]]
    for h, pool, label in heapq.nsmallest(DUPLICATE_WINDOW, rest, key=lambda x: -x[0].score):
        if len(answers) >= top_k or h.score < 0.5 * best:
            break
        if fresh(h):
            take(h, pool, about(h) if label is None else label)
    return answers[:top_k]  # at most top_k

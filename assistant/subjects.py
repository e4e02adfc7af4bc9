"""Subjects and their aliases, discovered from the articles themselves (plus an optional glossary).

A subject is something the articles discuss and compare (in the seed corpus: treatments). No
subject is known in advance; they are read from the ways articles name and compare things:

- comparisons in titles, headings and sentences: "X vs. Y", "X versus Y", "Comparing X and Y",
  "the difference between X and Y";
- naming: "X, also known as Y", "X (also known as Y)", "X is also called Y", "X, commonly known as Y";
- abbreviations: "long form (ABBR)", "ABBR (long form)", "(long form – ABBR)", checked letter by letter;
- for an article whose title names none of those: the title's noun phrase that the article repeats.

Phrase boundaries are found without a parser: a side of "X vs. Y" is the longest run of content
words next to the cue that the corpus repeats ("The choice between mesotherapy and microneedling
depends ..." yields "microneedling", not "microneedling depends"). Names that differ only in
case, hyphens, spacing or plural ("micro-needling", "Microneedling") are one alias. A last word
that several different subjects share ("therapy" in "exosome therapy", "plasma therapy") is a
generic head: what comes before it ("exosome") names the subject too, unless that is a common word.

The optional `glossary.toml` in the corpus folder adds or fixes aliases (format: `load_glossary`).
Discovery runs when a generation is built (reindex) and is stored in it (`subjects.json`, with the
glossary's hash): a serving process reads it in milliseconds, so no question waits for it. An
index without it, or a glossary edited since, is discovered on first use and cached per index.
A discovered subject that names more than `max_subject_rows` passages is dropped.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
import tomllib
import weakref
import zipfile
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from .index import Index

log = logging.getLogger(__name__)

GLOSSARY_NAME = "glossary.toml"
SAVED_NAME = "subjects.json"  # the subjects of a generation, discovered when it was built (its row maps: `save`)
# A subject may name at most this share of the passages of a large library (and always up to
# MAX_ROWS_FLOOR): a comparison searches the passages of its subjects.
MAX_SHARE = 0.02
MAX_ROWS_FLOOR = 2000


def max_subject_rows(n_passages: int) -> int:
    """How many passages one discovered subject may name (a glossary subject is never capped)."""
    return max(MAX_ROWS_FLOOR, int(MAX_SHARE * n_passages))

# Generic English function words (a linguistic resource; no subject is listed anywhere here).
STOPWORDS = frozenset("""
a an the and or nor but if then else so than as of in on at to for from by with without within into onto
over under about above below between among through during before after against per via vs versus
is are was were be been being am do does did doing done have has had having can could may might must
shall should will would this that these those it its itself they them their theirs themselves there
here what which who whom whose when where why how not no also very more most less least some any each
both either neither all other others another own same just only too i you he she we me my your our his
her us one ones such many much few several like well even still yet ever often usually generally
typically however while whereas although though because since until unless whether
""".split())

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’]*(?:-[A-Za-z0-9][A-Za-z0-9'’]*)*")
_PARTS = re.compile(r"[a-z0-9]+")
# punctuation that ends a phrase ("vs." is protected first: a cue, not a full stop)
# (written so that re scans fast: `[,.;:!?()\[\]{}\"“”«»|/]|\s[–—-]\s|[–—]` and
# `\b(?:vs\.?|versus|v\.)(?=\s)`, the same matches)
_BOUNDARY = re.compile(r"[,.;:!?()\[\]{}\"“”«»|/–—]|\s[–—-]\s")
_VS = re.compile(r"v(?<!\w.)(?:s\.?|ersus|\.)(?=\s)", re.I)
_ALIAS_CUE = re.compile(
    r"(?P<pre>[,(]\s*)?(?:\b(?:is|are|was|were)\s+)?"
    r"(?P<adv>\b(?:also|commonly|often|sometimes|otherwise|popularly|better|more\s+commonly|generally|usually|widely|"
    r"formerly|originally)\s+)?"
    r"\b(?:known\s+as|referred\s+to\s+as|called|termed|nicknamed|dubbed)\s+"
    r"|(?P<aka>\b(?:aka|a\.k\.a\.?)\s+)",
    re.I,
)
_BETWEEN = re.compile(r"\b(?:between|comparing|compare|compared)\s+", re.I)
_PAREN = re.compile(r"\(([^()]{1,80})\)")
_ABBR = re.compile(r"^[A-Za-z][A-Za-z0-9&]*$")
_NAMED_RUN = re.compile(r"(?:\([^()]{1,80}\)|[^,.;:!?()\[\]\"“”])*")  # _PAREN groups or non-stops
# a line can hold an _ALIAS_CUE only if it holds one of these words (the cue is slow to look for)
_ALIAS_WORD = re.compile(r"known|referred|called|termed|nicknamed|dubbed|aka|a\.k\.a", re.I)
_ALIAS_WORDS = ("known", "referred", "called", "termed", "nicknamed", "dubbed", "aka", "a.k.a")  # (faster than it)
_HALVES = re.compile(r"\s[–—-]\s|[–—]|,|;")  # "(long form – ABBR)"
_WORDS = re.compile(r"[\s\-–]+")  # between the words whose initials an abbreviation holds
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_AND = re.compile(r"(.{1,80}?)\s+(?:and|with|to|&)\s+(.{1,80})")  # after "between"


def _norm(word: str) -> str:
    """A light plural-folding: 'exosomes' -> 'exosome', 'therapies' -> 'therapy' (no stemming:
    'islamism' must stay apart from 'islam')."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith("es") and w[-3] in "sxz" or w.endswith(("ches", "shes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def parts(phrase: str) -> list[str]:
    """Lower-case, plural-folded parts of a phrase; hyphens and spaces both separate parts."""
    return [_norm(p) for p in _PARTS.findall(phrase.lower().replace("’", "'").replace("'s", ""))]


def key(phrase: str) -> str:
    """One key for 'micro-needling', 'Microneedling', 'micro needling' and 'microneedlings'."""
    return "".join(parts(phrase))


_stemmer = None
_stem_lock = threading.Lock()


def stems(text: str) -> list[str]:
    """Snowball stems of a text's words, as the BM25 vocabulary of the index holds them."""
    global _stemmer
    if _stemmer is None:
        import Stemmer

        with _stem_lock:
            _stemmer = _stemmer or Stemmer.Stemmer("english")
    return _stemmer.stemWords(re.findall(r"\w\w+", text.lower()))


def is_abbreviation(word: str) -> bool:
    letters = [c for c in word if c.isalpha()]
    return 2 <= len(word) <= 10 and sum(c.isupper() for c in letters) >= 2 and bool(_ABBR.match(word))


def abbreviates(abbr: str, phrase: str) -> bool:
    """True when the letters of `abbr` are the initials of `phrase`'s words (function words optional)."""
    letters = [c.lower() for c in abbr if c.isalnum()]
    words = [w for w in _WORDS.split(phrase.strip()) if w]
    if not words or not letters or words[0][0].lower() != letters[0]:
        return False
    strict = [w[0].lower() for w in words]
    loose = [w[0].lower() for w in words if w.lower() not in STOPWORDS]
    return letters in (strict, loose)


# --- the result ------------------------------------------------------------------------------

@dataclass
class Subject:
    id: int
    name: str  # the label answers carry as `about`
    aliases: list[str]  # surface forms, lower-case except abbreviations
    rows: np.ndarray  # passage rows whose text or section heading names it
    sources: set[str] = field(default_factory=set)  # compared, named, abbreviation, core, title, glossary
    mentions: int = 0  # times the passages name it


@dataclass(frozen=True)
class Mention:
    subject: int
    start: int
    end: int
    text: str


class Subjects:
    """The subjects of one index, with one matcher for all their aliases (the longest alias wins)."""

    def __init__(self, subjects: list[Subject], body: list[frozenset[int]], heading: list[frozenset[int]]):
        self.subjects = subjects
        self.body = body  # passage row -> subjects its text names
        self.heading = heading  # passage row -> subjects its section heading (or one-subject title) names
        self._matcher = _Matcher(sorted(((a, s.id) for s in subjects for a in s.aliases),
                                        key=lambda x: (-len(x[0]), x[0])))
        self.memo: dict = {}  # facts about this index's passages that answering remembers (see conversation)
        self.found: _Found | None = None  # where discovery found them (build only; not saved)

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self):
        return iter(self.subjects)

    def find(self, text: str) -> list[Mention]:
        """Mentions of subjects in `text`, in reading order."""
        return self._matcher.find(text)

    def ids_in(self, text: str) -> list[int]:
        """Subjects named in `text`, each once, in order of first mention."""
        return list(dict.fromkeys(m.subject for m in self.find(text)))

    def by_name(self, name: str) -> Subject | None:
        """The subject one of whose aliases is `name` (any case, hyphenation or number)."""
        k = key(name)
        return next((s for s in self.subjects if any(key(a) == k for a in s.aliases)), None)

    def rows(self, ids: list[int]) -> np.ndarray:
        if not ids:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([self.subjects[i].rows for i in ids])).astype(np.int64)

    def describe(self) -> list[dict]:
        return [{"name": s.name, "aliases": s.aliases, "passages": int(len(s.rows)), "sources": sorted(s.sources)}
                for s in self.subjects]


def _alias_pattern(alias: str) -> str:
    """'micro-needling' also matches 'micro needling', 'Micro-Needling', 'micro-needlings', "micro-needling's"."""
    return _alias_parts(alias)[0]


def _alias_parts(alias: str) -> tuple[str, str]:
    """The pattern of an alias, and the literal text (lower case) every match of it starts with."""
    words = [w for w in re.split(r"[\s\-–]+", alias) if w]
    last, plural = words[-1], r"(?:'s|’s|e?s)?"
    if not last[-1:].isalpha() or alias.isupper():
        stem = last
        tail = re.escape(last) + (plural if last[-1:].isalpha() else "")
    else:
        one = _norm(last) if last.lower().startswith(_norm(last)[:-1]) else last.lower()  # 'peels' -> 'peel'
        stem = one[:-1] if one.endswith("y") else one
        tail = re.escape(stem) + r"(?:y|ies)(?:'s|’s)?" if one.endswith("y") else re.escape(one) + plural
    body = r"[\s\-–]*".join([re.escape(w) for w in words[:-1]] + [tail])
    body = rf"(?<![\w\-]){body}(?![\w])"
    lead = (words[0] if len(words) > 1 else stem).lower()
    # a short abbreviation that is also a word ('IT', 'US') only matches in capitals
    return (f"(?-i:{body})" if alias.isupper() and alias.lower() in STOPWORDS else body), lead


@functools.lru_cache(maxsize=65536)
def _compiled(alias: str) -> tuple[re.Pattern, str]:
    """`_alias_parts` with the pattern compiled (re's own cache holds too few for a discovery,
    which builds several matchers over the same thousands of aliases)."""
    pattern, lead = _alias_parts(alias)
    return re.compile(pattern, re.I), lead


def _fold(text: str) -> str:
    """Case-folded, one character for one, so offsets stay those of `text` ('İ' -> 'i')."""
    folded = text.casefold()
    return folded if len(folded) == len(text) else "".join(c.casefold()[:1] for c in text)


class _Matcher:
    """Finds aliases as one alternation of all of them would (leftmost match first, then the
    earliest alias in the given order), in time linear in the text: at each word start only the
    aliases whose literal start (its first few letters) is there are tried. One alternation regex
    of thousands of aliases costs about 0.1 s per passage; this costs microseconds.

    A full discovery runs matchers over every passage, so the word starts are not visited one by
    one in Python: one C-level scan of the folded text with a trie regex of the aliases' literal
    starts stops only where an alias may begin. In ASCII (where folding keeps every character's
    class, and re.I equals comparing folded letters) an ASCII alias can only begin where its whole
    first word (or stem) is, and the scan looks for that; at the few places where a non-ASCII
    character may make the folded text disagree with the text, every word start is visited."""

    PREFIX = 4  # letters of an alias's literal start used as its key

    def __init__(self, alts: list[tuple[str, int]]) -> None:
        # key -> (order, pattern, id, folded first word when ASCII: in ASCII text it must be there)
        self._table: dict[str, list[tuple[int, re.Pattern, int, str | None]]] = defaultdict(list)
        odd = set()
        for order, (alias, sid) in enumerate(alts):
            rx, lead = _compiled(alias)
            fl = _fold(lead)
            self._table[fl[: self.PREFIX]].append((order, rx, sid, fl if lead.isascii() else None))
            if lead and not re.match(r"\w", lead[0]):
                odd.add(lead[0])
        self._lengths = sorted({len(k) for k in self._table})
        # every place a match can begin: the aliases' own look-behind, then a word character (or
        # the first character of an alias that starts with punctuation)
        extra = "".join(re.escape(c) for c in sorted(odd))
        self._starts = re.compile(rf"(?<![\w\-])(?:\w{'|[' + extra + ']' if extra else ''})")
        self._memo: dict[str, tuple] = {}
        self._scan = "" not in self._table  # an alias with no literal start ('y') is tried at every start
        # what the scans look for, of the keys and words whose first character passes `_starts`
        # (no other can match where the text is ASCII): in ASCII text each alias's first word
        # (then what must follow it) when that is ASCII, else its key; elsewhere the keys
        starts = [(k, "") for k in self._table if k.isascii() and self._starts.match(k)]
        firsts = [(w, _alias_follow(alias)) for alias, _ in alts
                  if (w := _compiled(alias)[1]).isascii() and self._starts.match(w)]
        firsts += [(k, "") for k, es in self._table.items() if any(e[3] is None for e in es) and (k, "") in starts]
        self._ascii = re.compile(rf"(?<![\w\-])(?={_trie(firsts)})") if firsts else None
        self._keys = re.compile(rf"(?<![\w\-])(?={_trie(starts)})") if starts else None

    def _candidates(self, low: str, i: int) -> tuple:
        """The aliases whose key is at `i` of the folded text, in the given order."""
        head = low[i : i + self._lengths[-1]]
        got = self._memo.get(head)
        if got is None:
            cands: list = []
            for n in self._lengths:
                k = head[:n]
                if len(k) == n and k in self._table:
                    cands += self._table[k]
            cands.sort(key=lambda c: c[0])
            got = self._memo[head] = tuple((rx, sid, full) for _, rx, sid, full in cands)
        return got

    def _positions(self, text: str, low: str) -> list[int]:
        """Where a match may begin, in order (a few more places do no harm: nothing matches there)."""
        if not self._scan:
            return [m.start() for m in self._starts.finditer(text)]
        if text.isascii():
            return [m.start() for m in self._ascii.finditer(low)] if self._ascii is not None else []
        found = [m.start() for m in self._keys.finditer(low)] if self._keys is not None else []
        # near a non-ASCII character the folded text may differ from the text in a character's
        # class or a key's letters: every word start there, as `_starts` tells
        near = set()
        for m in _NON_ASCII.finditer(text):
            j = m.start()
            near.update(i for i in range(max(0, j - self.PREFIX + 1), j + 2) if self._starts.match(text, i))
        return sorted(near.union(found)) if near else found

    def find(self, text: str) -> list[Mention]:
        if not self._table or not text:
            return []
        low = _fold(text)
        ascii_ = text.isascii()
        out: list[Mention] = []
        pos = 0
        for i in self._positions(text, low):
            if i < pos:
                continue
            for rx, sid, full in self._candidates(low, i):
                if ascii_ and full is not None and not low.startswith(full, i):
                    continue  # its first word is not there: its pattern cannot match
                m = rx.match(text, i)
                if m:
                    out.append(Mention(sid, i, m.end(), m.group()))
                    pos = m.end()
                    break
        return out

    def present(self, text: str) -> set[int]:
        """The ids with an alias that matches anywhere in `text`, overlaps included (as one
        `re.search` per alias would tell)."""
        out: set[int] = set()
        if not self._table or not text:
            return out
        low = _fold(text)
        ascii_ = text.isascii()
        for i in self._positions(text, low):
            for rx, sid, full in self._candidates(low, i):
                if sid in out or ascii_ and full is not None and not low.startswith(full, i):
                    continue
                if rx.match(text, i):
                    out.add(sid)
        return out


def _trie(words: list[tuple[str, str]]) -> str:
    """A regex matching where any of `words` (literal strings, each with a regex of what must
    follow it, "" for nothing) starts a text, one branch per character."""
    root: dict = {}
    for w, follow in words:
        node = root
        for c in w:
            node = node.setdefault(c, {})
        node.setdefault(None, set()).add(follow)

    def pattern(node: dict) -> str:
        ends = node.get(None, set())
        if "" in ends:  # a word ends here with nothing to follow: any longer one starts with it
            return ""
        alts = [re.escape(c) + pattern(sub) for c, sub in sorted((c, sub) for c, sub in node.items() if c is not None)]
        alts += sorted(ends)
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return pattern(root)


def _alias_follow(alias: str) -> str:
    """What must follow the literal start of `alias`'s pattern (`_alias_parts`) in a text for
    the pattern to match, as a regex over the lower-cased text ("" for nothing known)."""
    words = [w for w in re.split(r"[\s\-–]+", alias) if w]
    last = words[-1]
    if not last[-1:].isalpha() or alias.isupper():
        stem, after = last, r"(?!\w)" if not last[-1:].isalpha() else r"(?:['’es]|(?!\w))"
    else:
        one = _norm(last) if last.lower().startswith(_norm(last)[:-1]) else last.lower()
        stem, after = (one[:-1], "[yi]") if one.endswith("y") else (one, r"(?:['’es]|(?!\w))")
    if len(words) == 1:
        return after
    # separators, then the next word (or the last one's stem) as written
    then = words[1] if len(words) > 2 else stem
    return r"[\s\-–]*" + re.escape(then.lower()) if then and then.isascii() else ""


# --- discovery -------------------------------------------------------------------------------

class _Groups:
    """Union-find over alias keys, remembering surface forms and where each came from."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.forms: dict[str, Counter] = defaultdict(Counter)
        self.sources: dict[str, set[str]] = defaultdict(set)

    def add(self, phrase: str, source: str) -> str | None:
        phrase = _clean_phrase(phrase)
        k = key(phrase)
        if len(k) < 2:
            return None
        self.parent.setdefault(k, k)
        self.forms[k][phrase] += 1
        self.sources[k].add(source)
        return k

    def find(self, k: str) -> str:
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a: str | None, b: str | None) -> None:
        if a and b and a in self.parent and b in self.parent:
            ra, rb = self.find(a), self.find(b)
            if ra != rb:
                self.parent[rb] = ra

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for k in self.parent:
            out[self.find(k)].append(k)
        return out


def _clean_phrase(p: str) -> str:
    words = re.sub(r"\s+", " ", p.replace("’", "'")).strip(" -–—'\"").split(" ")
    while words and words[0].lower() in STOPWORDS:
        words = words[1:]
    while words and words[-1].lower() in STOPWORDS:
        words = words[:-1]
    return " ".join(words)


def _content(tok: str) -> bool:
    return tok.lower() not in STOPWORDS and any(c.isalpha() for c in tok) and len(tok) >= 2


def _segments(text: str) -> list[list[str]]:
    """Runs of word tokens between punctuation; 'vs.' is kept as a token."""
    return [toks for seg in _BOUNDARY.split(_VS.sub(" vs ", text)) if (toks := _TOKEN.findall(seg))]


class _Stats:
    """Counts of word n-grams over the corpus, to validate phrase boundaries: of the n-grams of
    `phrases` only (the phrases discovery will ask about), so its memory is theirs, not the
    corpus's. One pass over the texts in batches, without a Python step per word: a batch is
    split and folded by a few regex calls over all of it (as `_segments` then `parts` would read
    each text), its words become numbers (those of the phrases' words, 0 for any other) and the
    n-grams are matched as packed integers by numpy."""

    BATCH = 2000  # texts per pass step
    MAX_WORDS = 2_000_000  # distinct words whose number is remembered
    _SEP = "\x00"  # ends a segment (never part of a word)
    _PART_OR_SEP = re.compile(r"[a-z0-9]+|\x00")

    def __init__(self, texts: list[str], phrases: Iterable[str] = (), max_n: int = 4) -> None:
        self.texts, self.max_n = texts, max_n
        self.counts: Counter = Counter()
        self.want: set[tuple[str, ...]] = set()
        self._add(phrases)

    def _key(self, phrase: str) -> tuple[str, ...]:
        return tuple(parts(phrase))

    def _add(self, phrases: Iterable[str]) -> None:
        new = {k for ph in phrases if 1 <= len(k := self._key(ph)) <= self.max_n} - self.want
        if new:
            self.want |= new
            self._count(sorted(new))

    def _count(self, grams: list[tuple[str, ...]]) -> None:
        """Count `grams` over the texts, in one pass (in several when they hold too many words
        to pack an n-gram of their numbers in 63 bits)."""
        vocab = {w: i + 1 for i, w in enumerate(sorted({w for g in grams for w in g}))}
        bits = len(vocab).bit_length()
        if bits * self.max_n > 63 and len(grams) > 1:
            self._count(grams[: len(grams) // 2])
            self._count(grams[len(grams) // 2 :])
            return
        keys: dict[int, np.ndarray] = {}
        of_key: dict[int, list[tuple[str, ...]]] = {}
        for n in sorted({len(g) for g in grams}):
            gs = [g for g in grams if len(g) == n]
            packed = np.array([sum(vocab[w] << (bits * j) for j, w in enumerate(g)) for g in gs], dtype=np.int64)
            order = np.argsort(packed)
            keys[n], of_key[n] = packed[order], [gs[i] for i in order]
        totals = {n: np.zeros(len(k), dtype=np.int64) for n, k in keys.items()}
        number = _WordNumbers(vocab, self.MAX_WORDS)
        for i in range(0, len(self.texts), self.BATCH):
            words = self._words(self.texts[i : i + self.BATCH])
            ids = np.fromiter(map(number.__getitem__, words), dtype=np.int64, count=len(words))
            for n, k in keys.items():
                m = len(ids) - n + 1
                if m <= 0:
                    continue
                packed = ids[:m].copy()
                ok = ids[:m] > 0
                for j in range(1, n):
                    packed |= ids[j : j + m] << (bits * j)
                    ok &= ids[j : j + m] > 0
                packed = packed[ok]
                at = np.minimum(np.searchsorted(k, packed), len(k) - 1)
                totals[n] += np.bincount(at[k[at] == packed], minlength=len(k))
        for n, t in totals.items():
            for g, c in zip(of_key[n], t.tolist()):
                if c:
                    self.counts[g] = c

    def _words(self, texts: list[str]) -> list[str]:
        """The word parts of the texts, before plural folding, segment after segment, with a
        separator after each segment (n-grams never span one): what `_segments` then `parts`
        read in each text. (A NUL in a text is neither word nor boundary: so is the \\x01 it
        becomes here; 'İ' and the Kelvin sign, the only letters that lower() makes ASCII, are
        not word characters for `_TOKEN` either.)"""
        joined = self._SEP.join(t.replace("\x00", "\x01") if "\x00" in t else t for t in texts)
        text = _BOUNDARY.sub(self._SEP, _VS.sub(" vs ", joined))
        if "\u0130" in text or "\u212a" in text:
            text = text.replace("\u0130", "\x01").replace("\u212a", "\x01")
        text = text.lower()
        if "’" in text:
            text = text.replace("’", "'")
        if "'s" in text:
            text = _APOS_S.sub(_in_word_dropped, text)
        return self._PART_OR_SEP.findall(text)

    def count(self, phrase: str) -> int:
        k = self._key(phrase)
        if not 1 <= len(k) <= self.max_n:
            return 0
        if k not in self.want:  # a phrase not announced: one more pass (discovery announces all)
            log.debug("n-gram %r counted on demand", phrase)
            self._add([phrase])
        return self.counts.get(k, 0)


_APOS_S = re.compile("'s")
_WORD_OR_APOS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789'")


def _in_word_dropped(m: re.Match) -> str:
    """An "'s" of lower-cased text goes when it is inside a word (`parts` drops it there): when a
    letter or digit precedes it, apostrophes between them (a word starts with one of those)."""
    text, i = m.string, m.start() - 1
    while i >= 0 and text[i] in _WORD_OR_APOS:
        if text[i] != "'":
            return ""
        i -= 1
    return "'s"


class _WordNumbers(dict):
    """word part -> the number of its plural-folded form in `vocab` (0: not there, or the
    separator), computed once per distinct part."""

    def __init__(self, vocab: dict[str, int], limit: int) -> None:
        super().__init__()
        self.vocab, self.limit = vocab, limit

    def __missing__(self, word: str) -> int:
        if len(self) > self.limit:  # memory bounded whatever the vocabulary
            self.clear()
        got = self[word] = 0 if word == _Stats._SEP else self.vocab.get(_norm(word), 0)
        return got


def _run(tokens: list[str], leftwards: bool, max_words: int = 4) -> list[str]:
    """The content words next to a cue (at most `max_words`)."""
    run: list[str] = []
    for t in reversed(tokens) if leftwards else tokens:
        if not _content(t) or t.lower() in ("vs", "versus") or len(run) >= max_words:
            break
        run.append(t)
    if leftwards:
        run.reverse()
    return run


def _choices(tokens: list[str], leftwards: bool, max_words: int = 4) -> tuple[str, ...]:
    """The phrases a side of a cue may be, longest first."""
    run = _run(tokens, leftwards, max_words)
    return tuple(" ".join(run[-n:] if leftwards else run[:n]) for n in range(len(run), 0, -1))


def _pick(choices: tuple[str, ...], stats: _Stats, min_count: int) -> str | None:
    """The longest of `choices` that the corpus repeats (`min_count` times)."""
    return next((phrase for phrase in choices if stats.count(phrase) >= min_count), None)


def _side(tokens: list[str], stats: _Stats, leftwards: bool, min_count: int, max_words: int = 4) -> str | None:
    """The phrase next to a cue: the longest run of content words that the corpus repeats."""
    return _pick(_choices(tokens, leftwards, max_words), stats, min_count)


# A phrase boundary that no other pattern here reads across: splitting a text after one of these
# splits its segments the same way (no "vs." cue, no " - " dash and no word holds it). So the
# words before a cue are read from the text after the last of them, not from the whole line (a
# long paragraph with many cues would be read again for every one).
_CUT = re.compile(r"[,;:!?()\[\]{}\"“”«»|/]")
_WINDOW = 256  # characters of a line read first, next to a cue


def _tokens_before(text: str) -> list[str]:
    """The words of the last segment of `text` (none when `text` ends on a boundary)."""
    if not text or _BOUNDARY.search(text[-1:]):
        return []
    if len(text) > _WINDOW and (cut := _CUT.search(text, len(text) - _WINDOW)):
        segs = _segments(text[cut.end() :])
        if segs:
            return segs[-1]
    segs = _segments(text)
    return segs[-1] if segs else []


def _tokens_after(text: str) -> list[str]:
    """The words of the first segment of `text` (none when `text` starts on a boundary)."""
    if not text or _BOUNDARY.match(text[:1]):
        return []
    if len(text) > _WINDOW and (cut := _CUT.search(text)):
        segs = _segments(text[: cut.end()])
        if segs:
            return segs[0]
    segs = _segments(text)
    return segs[0] if segs else []


def _named_after(text: str, max_words: int = 5) -> list[str]:
    """The names after 'also known as': 'the vampire facial) involves' -> ['vampire facial'];
    'bio-revitalization or bio-rejuvenation, is' -> both."""
    # what precedes the first stop once short parentheses are blanked out (`_PAREN.sub(" ",
    # text)`), read only up to that stop
    head = _PAREN.sub(" ", _NAMED_RUN.match(text).group(0))
    out = []
    for alt in re.split(r"\s+or\s+|\s+and\s+|/", head):
        toks = _TOKEN.findall(alt)
        while toks and not _content(toks[0]):
            toks = toks[1:]
        run = []
        for t in toks:
            if not _content(t) or len(run) >= max_words:
                break
            run.append(t)
        if run:
            out.append(" ".join(run))
    return out[:3]


def _cues(texts: list[str]) -> list[tuple]:
    """The naming and comparing patterns of the articles, in reading order, each with the phrases
    its sides may be (the corpus counts that choose among them are taken afterwards, in one pass):
    ("pair", left, right), ("between", left, left's whole text, right), ("named", x, [y, ...]),
    ("same", a, b) for an abbreviation and its long form."""
    out: list[tuple] = []
    for line in (line for t in texts for line in t.split("\n") if line.strip()):
        # most lines hold no cue: in ASCII (where lower() folds case as the patterns' re.I does)
        # a plain search of the lower-cased line for the cues' words rules them out
        low = line.lower() if line.isascii() else None
        # "X vs. Y" (and chains: "X vs. Y vs. Z")
        if low is None or "vs" in low or "v." in low or "versus" in low:
            pieces = re.split(r"\bvs\b", _VS.sub("vs", line))
            for a, b in zip(pieces, pieces[1:]):
                out.append(("pair", _choices(_tokens_before(a), True), _choices(_tokens_after(b.lstrip()), False)))
        # "between X and Y", "comparing X and/with/to Y"
        for m in _BETWEEN.finditer(line) if low is None else _at_words(_BETWEEN, line, low, ("between", "compar")):
            mm = _AND.match(line, m.end())
            if mm and len(_segments(mm.group(1))) == 1:
                out.append(("between", _choices(_tokens_after(mm.group(1)), False), _clean_phrase(mm.group(1)),
                            _choices(_tokens_after(mm.group(2)), False)))
        # "X, also known as Y", "X (also known as Y)", "X is also called Y"
        for m in _ALIAS_CUE.finditer(line) if (_ALIAS_WORD.search(line) if low is None else
                                               any(w in low for w in _ALIAS_WORDS)) else ():
            if not (m.group("pre") or m.group("adv") or m.group("aka")):
                continue  # "This is called ...", "known for": not a naming
            ys = _named_after(line[m.end() :])
            if ys:
                out.append(("named", _choices(_tokens_before(line[: m.start()].rstrip()), True), ys))
        # abbreviations: "long form (ABBR)", "ABBR (long form)", "(long form – ABBR)"
        for m in _PAREN.finditer(line) if "(" in line else ():
            inner = m.group(1).strip()
            halves = [p.strip() for p in _HALVES.split(inner) if p.strip()] if _HALVES.search(inner) else ()
            if len(halves) == 2:
                for abbr, long in (halves, halves[::-1]):
                    if is_abbreviation(abbr) and abbreviates(abbr, long):
                        out.append(("same", abbr, long))
            if len(inner) <= 10 and is_abbreviation(inner):
                before = _tokens_before(line[: m.start()].rstrip())
                for n in range(min(len(before), len(inner) + 3), 0, -1):
                    if abbreviates(inner, " ".join(before[-n:])):
                        out.append(("same", inner, " ".join(before[-n:])))
                        break
            elif _WORDS.search(inner) and len([w for w in _WORDS.split(inner) if w]) >= 2:  # a long form: 2 words+
                before = _tokens_before(line[: m.start()].rstrip())
                if before and is_abbreviation(before[-1]) and abbreviates(before[-1], inner):
                    out.append(("same", before[-1], inner))
    return out


def _at_words(rx: re.Pattern, line: str, low: str, words: tuple[str, ...]) -> Iterator[re.Match]:
    """`rx.finditer(line)` for a pattern whose every match starts with one of `words` (in the
    lower-cased ASCII `low`): tried only where those are, not at every character."""
    starts = sorted(i for w in words for i in _occurrences(low, w))
    end = 0
    for i in starts:
        if i >= end and (m := rx.match(line, i)):
            end = m.end()
            yield m


def _occurrences(text: str, word: str) -> Iterator[int]:
    i = text.find(word)
    while i >= 0:
        yield i
        i = text.find(word, i + 1)


def _cue_phrases(cues: list[tuple]) -> Iterator[str]:
    """Every phrase whose corpus count a cue may ask for."""
    for c in cues:
        if c[0] == "pair":
            yield from c[1] + c[2]
        elif c[0] == "between":
            yield from c[1] + c[3]
        elif c[0] == "named":
            yield from c[1]


def _title_phrases(title: str) -> Iterator[str]:
    """Every phrase of a title whose corpus count `_title_subject` may ask for."""
    for seg in _segments(title):
        run: list[str] = []
        for t in seg + [""]:
            if t and _content(t):
                run.append(t)
                continue
            for i in range(len(run)):
                for j in range(i + 1, min(len(run), i + 4) + 1):
                    yield " ".join(run[i:j])
            run = []


def _discover(texts: list[str], titles: Iterable[str] = ()) -> tuple[_Groups, _Stats]:
    """Candidate names, grouped by the naming and comparing patterns of the articles; and the
    corpus counts of the phrases of those patterns and of `titles` (for `_title_subject`)."""
    cues = _cues(texts)
    stats = _Stats(texts, chain(_cue_phrases(cues), chain.from_iterable(map(_title_phrases, titles))))
    g = _Groups()

    def pair(left: str | None, right: str | None) -> None:
        if left and right and key(left) != key(right):
            g.add(left, "compared")
            g.add(right, "compared")

    for c in cues:
        if c[0] == "pair":
            pair(_pick(c[1], stats, 2), _pick(c[2], stats, 2))
        elif c[0] == "between":
            left = _pick(c[1], stats, 2)
            if left is not None and c[2] == left:  # X is all of it
                pair(left, _pick(c[3], stats, 2))
        elif c[0] == "named":
            x = _pick(c[1], stats, 1)
            if x:
                kx = g.add(x, "named")
                for y in c[2]:
                    g.union(kx, g.add(y, "named"))
        else:
            g.union(g.add(c[1], "abbreviation"), g.add(c[2], "abbreviation"))
    return g, stats


def _merge_heads(g: _Groups, passage_texts: list[str]) -> None:
    """'PRP injections' joins 'PRP'; 'exosome therapy' also answers to 'exosome' when 'therapy'
    is the last word of several different subjects' names."""
    multi = [(k, f) for k in list(g.parent) for f in list(g.forms[k]) if len(parts(f)) >= 2]
    heads: dict[str, set[str]] = defaultdict(set)
    for k, f in multi:
        heads[parts(f)[-1]].add(g.find(k))
    generic = {h for h, roots in heads.items() if len(roots) >= 2}
    by_parts = {" ".join(parts(f)): k for k in g.parent for f in g.forms[k]}

    def core_of(f: str) -> str:
        core = " ".join(f.split(" ")[:-1]) if " " in f else ""
        return "" if len(core) < 3 or core.lower() in STOPWORDS else core

    # how many passages use each core (one pass over the passages for all of them)
    cores = {core_of(f).lower() for _, f in multi if parts(f)[-1] in generic} - {""}
    number = {c: n for n, c in enumerate(sorted(cores))}
    matcher = _Matcher(list(number.items()))
    df: Counter = Counter()
    for t in passage_texts:
        df.update(matcher.present(t))
    for k, f in multi:
        ps = parts(f)
        rest = " ".join(ps[:-1])
        if rest in by_parts:  # the name without its last word is a known name
            g.union(by_parts[rest], k)
        elif ps[-1] in generic:
            core = core_of(f)
            if not core:
                continue
            used = df[number[core.lower()]]
            if is_abbreviation(core) or used <= 0.5 * max(1, len(passage_texts)):  # not a word every passage uses
                g.union(k, g.add(core if is_abbreviation(core) else core.lower(), "core"))


def _count_at(rx: re.Pattern, lead: str, low: str) -> int:
    """`len(rx.findall(low))` for an alias pattern and its literal start `lead`, both ASCII: every
    match starts where `lead` is, so only those places are tried."""
    c, end, i = 0, 0, low.find(lead)
    while i >= 0:
        if i >= end and (m := rx.match(low, i)):
            c, end = c + 1, m.end()
        i = low.find(lead, i + 1)
    return c


def _title_subject(title: str, text: str, stats: _Stats) -> str | None:
    """The noun phrase of a title that its article keeps returning to ('Hydrafacial: What to Expect')."""
    best, best_score = None, 0.0
    low = text.lower()
    ascii_ = low.isascii()
    for phrase in _title_phrases(title):
        words = phrase.count(" ") + 1
        rx, lead = _compiled(phrase.lower())
        c = _count_at(rx, lead, low) if ascii_ and lead and lead.isascii() else len(rx.findall(low))
        if c < (3 if words == 1 else 2):
            continue
        share = c / max(stats.count(phrase), c)  # how much of its use is in this article
        if share < 0.5:
            continue  # a word the other articles use as much: not what this one is about
        score = c * share * words ** 2  # the whole name over a word of it
        if score > best_score:
            best, best_score = phrase, score
    return best


@dataclass
class _Library:
    """What a full discovery reads of an index, read once (an index of format 4 parses an article
    or passage record at each access)."""

    docs: list[tuple[str, str, str]]  # doc_id, title, text
    ptexts: list[str]  # passage row -> its text
    row_doc: list[str]  # passage row -> its article
    row_heading: list[str]  # passage row -> its section heading ("" for none)

    @classmethod
    def of(cls, index: Index) -> "_Library":
        docs = [(d.doc_id, d.title, d.text) for d in index.docs.values()]
        text_of = {doc_id: text for doc_id, _, text in docs}
        ptexts, row_doc, row_heading = [], [], []
        for p in index.passages:
            ptexts.append(text_of[p.doc_id][p.start : p.end])
            row_doc.append(p.doc_id)
            row_heading.append(p.heading or "")
        return cls(docs, ptexts, row_doc, row_heading)

    def texts(self) -> list[str]:
        """The articles' texts, each with its title in front unless it starts with it."""
        return [text if title in text[: len(title) + 200] else f"{title}\n{text}" for _, title, text in self.docs]


def build(index: Index, glossary: dict | None = None) -> Subjects:
    """Discover the subjects of an index, then apply a parsed glossary."""
    lib = _Library.of(index)
    texts = lib.texts()
    ptexts = lib.ptexts
    g, stats = _discover(texts, (title for _, title, _ in lib.docs))
    _merge_heads(g, ptexts)

    def candidates() -> list[tuple[set, Counter]]:
        out = []
        for keys in g.groups().values():
            srcs = set().union(*(g.sources[k] for k in keys))
            if srcs & {"compared", "named", "title"}:  # an abbreviation alone (FDA, JAMA) is no subject
                forms: Counter = Counter()
                for k in keys:
                    forms.update(g.forms[k])
                out.append((srcs, forms))
        return out

    # an article whose title names none of them: its title's most repeated noun phrase
    probe = _subjects_of(lib, candidates(), min_passages=0, keep=True)
    by_title: dict[str, list[str]] = defaultdict(list)  # articles split in parts share a title
    for _, title, text in lib.docs:
        if not probe.find(title):
            by_title[title].append(text)
    for title, bodies in by_title.items():
        phrase = _title_subject(title, "\n".join(bodies), stats)
        if phrase:
            g.add(phrase.lower(), "title")
    cands = candidates()
    if glossary:
        cands = _apply_glossary(cands, glossary)
    return _subjects_of(lib, cands, previous=probe.found)


class _Found:
    """Where a matcher found which subject in every passage, kept compact (three int arrays) so
    that the next step of a discovery, whose aliases differ from these by a few, reads again only
    the passages that those few name, and takes the rest from here: the same mentions, in the
    same order, as a full pass would find."""

    def __init__(self, alias_sid: dict[str, int]) -> None:
        self.alias_sid = alias_sid  # alias -> subject id (-1: several subjects hold it)
        self.sid, self.start, self.end = array("i"), array("i"), array("i")  # 12 bytes a mention
        self.offsets = array("q", [0])  # passage r's mentions are [offsets[r], offsets[r + 1])

    @staticmethod
    def aliases_of(subjects: list[Subject]) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in subjects:
            for a in s.aliases:
                out[a] = s.id if out.get(a, s.id) == s.id else -1
        return out


def _placed(probe: Subjects, ptexts: list[str], previous: _Found | None = None,
            keep: bool = False) -> tuple[list[set[int]], dict[int, Counter], _Found | None]:
    """What `probe` finds in each passage: its subjects, and each subject's surface forms with
    their counts (in order of first mention); `previous` (a `_Found` of other aliases) is reused
    where it must agree, and with `keep` this pass's `_Found` is returned too."""
    alias_sid = _Found.aliases_of(probe.subjects)
    found = _Found(alias_sid) if keep else None
    redo: set[int] | None = None
    same: dict[int, int] = {}  # previous subject id -> this one's
    if previous is not None:
        # A passage in which no alias that changed (added, gone, or moved to another subject)
        # matches anywhere is read the same by both matchers: the others keep their order
        # (longest first, then by text) and their subject.
        changed = set()
        for a in alias_sid.keys() | previous.alias_sid.keys():
            was, now = previous.alias_sid.get(a, -1), alias_sid.get(a, -1)
            if was < 0 or now < 0 or same.setdefault(was, now) != now:
                changed.add(a)
        look = _Matcher([(a, 0) for a in sorted(changed)])
        redo = {r for r, t in enumerate(ptexts) if look.present(t)} if changed else set()
        log.debug("%d aliases changed: %d of %d passages read again", len(changed), len(redo), len(ptexts))
    body: list[set[int]] = []
    surface: dict[int, Counter] = defaultdict(Counter)
    for r, t in enumerate(ptexts):
        ms: list[tuple[int, int, int]] | None = None
        if redo is not None and r not in redo:
            lo, hi = previous.offsets[r], previous.offsets[r + 1]
            ms = [(same.get(x, -1), a, b) for x, a, b in
                  zip(previous.sid[lo:hi], previous.start[lo:hi], previous.end[lo:hi])]
            if any(x < 0 for x, _, _ in ms):
                ms = None  # (cannot be: its aliases did not change) read it
        if ms is None:
            ms = [(m.subject, m.start, m.end) for m in probe.find(t)]
        body.append({x for x, _, _ in ms})
        for x, a, b in ms:
            surface[x][t[a:b]] += 1
        if found is not None:
            for x, a, b in ms:
                found.sid.append(x)
                found.start.append(a)
                found.end.append(b)
            found.offsets.append(len(found.sid))
    return body, surface, found


def _subjects_of(lib: _Library, cands: list[tuple[set, Counter]], min_passages: int = 1,
                 previous: _Found | None = None, keep: bool = False) -> Subjects:
    """Subjects from candidate alias groups: where the passages name them, and a label for each.
    (`previous`, `keep`: see `_placed`; with `keep` the result's `found` is this pass's `_Found`.)"""
    subjects = []
    labels: dict[int, str] = {}
    for srcs, forms in cands:
        aliases = _aliases(forms)
        if aliases:
            label = next((x[len("name:"):] for x in srcs if x.startswith("name:")), None)
            if label:
                labels[len(subjects)] = label
            subjects.append(Subject(len(subjects), label or aliases[0], aliases, np.zeros(0, np.int64),
                                    {x for x in srcs if not x.startswith("name:")}))
    probe = Subjects(subjects, [], [])
    ptexts = lib.ptexts
    body, surface, found = _placed(probe, ptexts, previous, keep)
    # what a passage is about besides what it names: its section heading, and the title of its
    # article when that names a single subject (an article about one thing)
    about_doc = {}
    for doc_id, title, _ in lib.docs:
        named = {m.subject for m in probe.find(title)}
        about_doc[doc_id] = named if len(named) == 1 else set()
    in_heading: dict[str, set[int]] = {}  # a heading is shared by the passages of its section
    heads = []
    for doc_id, h in zip(lib.row_doc, lib.row_heading):
        if h not in in_heading:
            in_heading[h] = {m.subject for m in probe.find(h)}
        heads.append(in_heading[h] | about_doc.get(doc_id, set()))
    rows_of: dict[int, list[int]] = defaultdict(list)
    for r in range(len(ptexts)):
        for s in body[r] | heads[r]:
            rows_of[s].append(r)
    keep = []
    cap = max_subject_rows(len(ptexts))
    for s in subjects:
        s.rows = np.asarray(rows_of[s.id], dtype=np.int64)
        s.mentions = sum(surface[s.id].values())
        if len(s.rows) < min_passages and "glossary" not in s.sources:
            continue
        if len(s.rows) > cap and "glossary" not in s.sources:
            # a plain word ("file", "command") that half a large library uses is no subject, and
            # a comparison restricted to it would score a large share of the library
            log.info("subject %r dropped: %d passages name it (at most %d)", s.name, len(s.rows), cap)
            continue
        s.name = labels.get(s.id) or _display_name(s, surface[s.id])  # a glossary name is the label
        keep.append(s)
    keep.sort(key=lambda s: (-len(s.rows), s.name.lower()))  # most discussed first
    remap = {s.id: i for i, s in enumerate(keep)}
    for s in keep:
        s.id = remap[s.id]
    out = Subjects(
        keep,
        [frozenset(remap[x] for x in b if x in remap) for b in body],
        [frozenset(remap[x] for x in h if x in remap) for h in heads],
    )
    out.found = found
    return out


def _aliases(forms: Counter) -> list[str]:
    """Distinct surface forms, most used first: abbreviations keep their case, the rest are lower-cased."""
    seen: dict[str, str] = {}
    weight: Counter = Counter()
    for f, c in forms.items():
        f = f.strip()
        if not f:
            continue
        shown = f if is_abbreviation(f) and f.upper() == f else f.lower()
        k = re.sub(r"[\s\-–]+", " ", shown.lower())
        seen.setdefault(k, shown)
        weight[seen[k]] += c
    return sorted(seen.values(), key=lambda a: (-weight[a], len(a)))


def _display_name(s: Subject, surface: Counter) -> str:
    """The alias the articles use most on its own (the longest alias wins a match), in lower case
    when the articles write it so, else as they write it ('PRP', 'HydraFacial')."""
    if not surface:
        return s.name
    by_alias: Counter = Counter()
    variants: dict[str, Counter] = defaultdict(Counter)
    for text, c in surface.items():
        base = re.sub(r"(?:'s|’s)$", "", text)
        alias = next((a for a in s.aliases if key(a) == key(base)), base)
        by_alias[alias] += c
        variants[alias][base] += c
    best = max(by_alias, key=lambda a: (by_alias[a], -len(a)))
    forms = variants[best]
    lower = [v for v in forms if v == v.lower()]
    if lower:  # written in lower case in running text: capitals were only sentence starts
        return max(lower, key=lambda v: forms[v])
    return max(forms, key=lambda v: (forms[v], v))  # 'PRP', 'HydraFacial'



# --- glossary --------------------------------------------------------------------------------

def load_glossary(path: Path) -> dict | None:
    """Parse `glossary.toml`. A missing file is None; a malformed one logs a warning and is None.

        # corpus/glossary.toml
        [[subject]]
        name = "PRP"                                   # the label answers get (optional)
        aliases = ["platelet-rich plasma", "vampire facial"]

        [[subject]]
        name = "HydraFacial"                           # one discovery missed
        aliases = ["hydradermabrasion"]

        [ignore]
        aliases = ["plasma"]                           # never an alias of anything
        subjects = ["facial rejuvenation"]             # drop the discovered subject holding this name

    An entry whose name or alias matches a discovered subject changes that subject (its aliases
    are added; an alias listed here moves here from any other subject); otherwise it adds one.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        log.warning("glossary %s ignored: %s", path, e)
        return None
    out: dict = {"subject": [], "ignore": {"aliases": [], "subjects": []}}
    subs = data.get("subject", [])
    if not isinstance(subs, list):
        log.warning("glossary %s ignored: 'subject' must be an array of tables ([[subject]])", path)
        return None
    for i, entry in enumerate(subs, 1):
        if not isinstance(entry, dict):
            log.warning("glossary %s: subject #%d ignored (not a table)", path, i)
            continue
        name, aliases = entry.get("name"), entry.get("aliases", [])
        if name is not None and not (isinstance(name, str) and name.strip()):
            log.warning("glossary %s: subject #%d ignored ('name' must be a non-empty string)", path, i)
            continue
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
            log.warning("glossary %s: subject #%d ignored ('aliases' must be a list of strings)", path, i)
            continue
        if not name and not aliases:
            log.warning("glossary %s: subject #%d ignored (neither a name nor aliases)", path, i)
            continue
        out["subject"].append({"name": name.strip() if name else None, "aliases": [a.strip() for a in aliases]})
    ignore = data.get("ignore", {})
    if not isinstance(ignore, dict):
        log.warning("glossary %s: 'ignore' must be a table ([ignore]); ignored", path)
        ignore = {}
    for k in ("aliases", "subjects"):
        v = ignore.get(k, [])
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            out["ignore"][k] = [x.strip() for x in v if x.strip()]
        else:
            log.warning("glossary %s: ignore.%s must be a list of strings; ignored", path, k)
    unknown = sorted(set(data) - {"subject", "ignore"})
    if unknown:
        log.warning("glossary %s: unknown keys ignored: %s", path, ", ".join(unknown))
    return out


def _apply_glossary(cands: list[tuple[set, Counter]], glossary: dict) -> list[tuple[set, Counter]]:
    cands = [(set(s), Counter(f)) for s, f in cands]

    def holder(term: str) -> int | None:
        k = key(term)
        return next((i for i, (_, forms) in enumerate(cands) if any(key(f) == k for f in forms)), None)

    def remove(term: str) -> None:
        k = key(term)
        for _, forms in cands:
            for f in [f for f in forms if key(f) == k]:
                del forms[f]

    drop = {holder(t) for t in glossary["ignore"]["subjects"]} - {None}
    cands = [c for i, c in enumerate(cands) if i not in drop]
    for t in glossary["ignore"]["aliases"]:
        remove(t)
    for entry in glossary["subject"]:
        name, aliases = entry["name"], entry["aliases"]
        target = holder(name) if name else None
        if target is None:
            target = next((h for h in map(holder, aliases) if h is not None), None)
        if target is None:
            cands.append((set(), Counter()))
            target = len(cands) - 1
        srcs, forms = cands[target]
        for term in ([name] if name else []) + aliases:
            h = holder(term)
            if h is not None and h != target:
                remove(term)  # a fix: the alias moves here
            forms[term] += 1
        srcs.add("glossary")
        if name:
            for x in [x for x in srcs if x.startswith("name:")]:
                srcs.discard(x)
            srcs.add(f"name:{name}")  # the label answers get
    return [(srcs, Counter({f: c for f, c in forms.items() if c > 0})) for srcs, forms in cands if forms]


# --- per-index cache -------------------------------------------------------------------------

_cache: dict[int, tuple[weakref.ref, tuple, Subjects]] = {}
_cache_lock = threading.Lock()


def _signature(path: Path | None) -> tuple:
    if path is None:
        return ()
    try:
        st = os.stat(path)
    except OSError:
        return (str(path), None)
    return (str(path), st.st_mtime_ns, st.st_size)


def glossary_hash(path: Path | None) -> str | None:
    """What a saved discovery depends on besides the articles: the glossary's content (None: no glossary)."""
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


# The row maps of a discovery are kept as arrays (CSR: for each passage row, a count, then the
# subject ids of every row in order; for each subject, its rows likewise), in a file beside the
# small subjects.json that holds the rest and names it: a million passages' maps as JSON dicts
# were 18 MB to write and seconds of Python to read or move at each reindex; as arrays they are
# read and renumbered by numpy. A saved discovery in memory ("the saved form") is a dict as
# subjects.json was: "subjects" (name, aliases, rows, sources, mentions), "body" and "heading"
# as {"indptr", "ids"} (lists in JSON and Postgres, arrays once read), "glossary" and
# "changed_since_discovery". A generation saved before (row maps as {str(row): [ids]}) still loads.

def _is_csr(rowmap) -> bool:
    return isinstance(rowmap, dict) and "indptr" in rowmap


def _rowmap(rowmap: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, ids) of a row map in either form; in the old form, rows past `n` are left out."""
    if _is_csr(rowmap):
        indptr = np.asarray(rowmap["indptr"], dtype=np.int64)
        return indptr, np.asarray(rowmap["ids"], dtype=np.int64)
    rows = np.fromiter((int(r) for r in rowmap), dtype=np.int64, count=len(rowmap))
    lens = np.fromiter((len(v) for v in rowmap.values()), dtype=np.int64, count=len(rowmap))
    ids = np.fromiter(chain.from_iterable(rowmap.values()), dtype=np.int64, count=int(lens.sum()))
    starts = np.cumsum(lens) - lens
    order = np.argsort(rows, kind="stable")
    ok = rows[order] < n
    order = order[ok]
    counts = np.zeros(n, dtype=np.int64)
    counts[rows[order]] = lens[order]
    take = np.repeat(starts[order] - (np.cumsum(lens[order]) - lens[order]), lens[order]) + np.arange(int(lens[order].sum()))
    return _indptr(counts), ids[take]


def _indptr(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _csr_of(keys: np.ndarray, width: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, values) of sorted composite keys `outer * width + value` over `n` outers."""
    outer, values = np.divmod(keys, width)
    return _indptr(np.bincount(outer, minlength=n)[:n]), values


def _keys(indptr: np.ndarray, values: np.ndarray, width: int, renum: np.ndarray | None = None) -> np.ndarray:
    """The composite keys `outer * width + value` of a CSR, its outers moved by `renum` (-1: gone)."""
    outer = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    if renum is not None:
        outer = renum[outer]
    keys = outer * width + values
    return keys if renum is None else keys[outer >= 0]


def _merged(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two sorted key arrays with no key in common, as one sorted array (b is the small one: no
    sort of the whole)."""
    if not len(b):
        return a
    out = np.empty(len(a) + len(b), dtype=np.int64)
    at = np.searchsorted(a, b) + np.arange(len(b))
    rest = np.ones(len(out), dtype=bool)
    rest[at] = False
    out[at] = b
    out[rest] = a
    return out


def _sorted(keys: np.ndarray) -> np.ndarray:
    """`keys` sorted (they already are when rows were renumbered in order: one check)."""
    return keys if len(keys) < 2 or bool(np.all(keys[1:] > keys[:-1])) else np.unique(keys)


def to_json(subjects: Subjects, glossary: str | None) -> dict:
    """A plain JSON form of a discovery (the saved form with lists: `save` stores it)."""
    out = {"glossary": glossary,
           "subjects": [{"name": x.name, "aliases": x.aliases, "rows": x.rows.tolist(), "sources": sorted(x.sources),
                         "mentions": x.mentions} for x in subjects.subjects]}
    for key_, sets in (("body", subjects.body), ("heading", subjects.heading)):
        out[key_] = {"indptr": _indptr(np.fromiter(map(len, sets), dtype=np.int64, count=len(sets))).tolist(),
                     "ids": [i for s in sets for i in sorted(s)]}
    return out


def plain(data: dict) -> dict:
    """The saved form with lists for arrays (as JSON and Postgres hold it)."""
    out = dict(data)
    out["subjects"] = [{**d, "rows": np.asarray(d.get("rows", []), dtype=np.int64).tolist()} for d in data["subjects"]]
    for key_ in ("body", "heading"):
        if _is_csr(data.get(key_)):
            out[key_] = {k: np.asarray(v, dtype=np.int64).tolist() for k, v in data[key_].items()}
    return out


def renumbered(data: dict, order: list[int] | np.ndarray) -> dict:
    """A saved discovery's passage rows moved to another row order (`order[new] = old`), in the
    saved form with arrays."""
    order = np.asarray(order, dtype=np.int64)
    n = len(order)
    new_of = np.full(n, -1, dtype=np.int64)
    new_of[order] = np.arange(n)
    out = dict(data)
    out["subjects"] = [{**d, "rows": np.sort(new_of[np.asarray(d.get("rows", []), dtype=np.int64)])}
                       for d in data.get("subjects", [])]
    width = len(out["subjects"]) + 1
    for key_ in ("body", "heading"):
        indptr, ids = _rowmap(data.get(key_) or {}, n)
        indptr, ids = _csr_of(np.sort(_keys(indptr, ids, width, new_of)), width, n)
        out[key_] = {"indptr": indptr, "ids": ids}
    return out


def save(folder: Path, data: dict) -> None:
    """Store a saved discovery in a generation folder: its arrays in a new file, then
    subjects.json (which names that file) replaced atomically, then the file it named before
    removed. A saved form of before (row maps as dicts, from an old database version) is stored
    as it is."""
    folder = Path(folder)
    small = {k: v for k, v in data.items() if k not in ("body", "heading", "arrays")}
    old = saved_small(folder)
    stamp = f"{os.getpid()}-{threading.get_ident()}-{time.time_ns()}"
    arrays_name = None
    if _is_csr(data.get("body")) and _is_csr(data.get("heading")):
        arrays: dict[str, np.ndarray] = {}
        rows = [np.asarray(d.get("rows", []), dtype=np.int64) for d in data["subjects"]]
        width = max(1, len(rows))
        for key_, (counts, values) in (
                ("body", _counts_values(data["body"])), ("heading", _counts_values(data["heading"])),
                ("rows", (np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)),
                          np.concatenate(rows) if rows else np.zeros(0, np.int64)))):
            arrays[f"{key_}_counts"] = counts.astype(np.min_scalar_type(int(counts.max(initial=0))))
            top = width if key_ != "rows" else int(values.max(initial=0)) + 1
            arrays[f"{key_}_ids"] = values.astype(np.min_scalar_type(top))
        small["subjects"] = [{k: v for k, v in d.items() if k != "rows"} for d in data["subjects"]]
        arrays_name = f"subjects-{stamp}.npz"
        tmp = folder / f".{arrays_name}.tmp"
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / arrays_name)
        small["arrays"] = arrays_name
    else:
        small = dict(data)
    tmp = folder / f".{SAVED_NAME}.{stamp}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(small, ensure_ascii=False))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / SAVED_NAME)
    gone = (old or {}).get("arrays")
    if gone and gone != arrays_name:
        try:
            (folder / gone).unlink()  # (a reader that read the old JSON reads it again: `saved_json`)
        except OSError:
            pass


def _counts_values(rowmap: dict) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.asarray(rowmap["indptr"], dtype=np.int64)
    return np.diff(indptr), np.asarray(rowmap["ids"], dtype=np.int64)


def _row_sets(indptr: np.ndarray, ids: np.ndarray, n: int, shared: dict) -> list[frozenset]:
    """Passage row -> frozenset of its subject ids, one frozenset per distinct set (shared by every
    passage naming just those; `shared` across maps), built by numpy per set size: no Python
    step per row."""
    if len(indptr) != n + 1:
        raise ValueError(f"a row map of {len(indptr) - 1} passages for an index of {n}")
    counts = np.diff(indptr)
    out = np.empty(n, dtype=object)
    out.fill(shared.setdefault((), frozenset()))
    width = int(ids.max(initial=0)) + 1
    for k in np.unique(counts[counts > 0]).tolist():
        rows = np.flatnonzero(counts == k)
        sets = ids[indptr[rows][:, None] + np.arange(k)]
        if width**k < 2**63:  # each set as one number (np.unique of rows, axis=0, is ten times slower)
            code = np.zeros(len(rows), dtype=np.int64)
            for j in range(k):
                code = code * width + sets[:, j]
            _, first, inv = np.unique(code, return_index=True, return_inverse=True)
            uniq = sets[first]
        else:
            uniq, inv = np.unique(sets, axis=0, return_inverse=True)
        vals = np.empty(len(uniq), dtype=object)
        for j, t in enumerate(map(tuple, uniq.tolist())):
            vals[j] = shared.setdefault(t, frozenset(t))
        out[rows] = vals[inv.ravel()]
    return out.tolist()


def from_json(data: dict, n_passages: int) -> Subjects:
    """The `Subjects` of a saved discovery (either form)."""
    subs = [Subject(i, d["name"], list(d["aliases"]), np.asarray(d["rows"], dtype=np.int64), set(d["sources"]),
                    int(d.get("mentions", 0))) for i, d in enumerate(data["subjects"])]
    # one frozenset per distinct set of subjects, shared by every passage naming just those: at a
    # million passages, half a million sets of one or two ids were 119 MB, a few thousand are < 1 MB
    shared: dict[tuple, frozenset] = {}
    if _is_csr(data["body"]):
        body, heading = (_row_sets(*_rowmap(data[k], n_passages), n_passages, shared) for k in ("body", "heading"))
        return Subjects(subs, body, heading)
    body = [frozenset()] * n_passages
    heading = [frozenset()] * n_passages
    for key_, rows in (("body", body), ("heading", heading)):
        for r, ids in data[key_].items():
            rows[int(r)] = shared.setdefault(tuple(ids), frozenset(ids))
    return Subjects(subs, body, heading)


def discover_for_build(index: Index, corpus_dir: Path | None) -> dict | None:
    """Discovery at build time (reindex), so no reader's question ever waits for it. None if it fails."""
    gpath = Path(corpus_dir) / GLOSSARY_NAME if corpus_dir is not None else None
    try:
        found = build(index, load_glossary(gpath) if gpath is not None else None)
    except Exception:
        log.exception("could not discover the subjects at build time; serving processes will")
        return None
    return to_json(found, glossary_hash(gpath))


# A reindex that changed little keeps the previous discovery: the passages of new and changed
# articles are placed by the same matcher, the subjects those articles introduce (their own
# comparisons, namings and titles) are added and placed over the passages that hold their words
# (found through the BM25 postings, not by reading the library), subjects no passage names any
# more are dropped. Cost: the change. A full discovery (it reads every passage: about 0.5 ms of
# CPU per passage on this machine, linear) runs below INCREMENTAL_MIN_PASSAGES, where it costs under a few
# seconds, and again once the passages changed since the last one reach REDISCOVER_SHARE of the
# library (so its cost, spread over the changes that led to it, stays proportional to them).
INCREMENTAL_MIN_PASSAGES = 1_000
REDISCOVER_SHARE = 0.2


def carry_over(data: dict, index: Index, old_to_new: np.ndarray, first_new: int, removed: int) -> dict | None:
    """The saved discovery of the previous generation, moved to the rows of `index` (kept rows
    renumbered by `old_to_new`, -1 for gone), with the passages from `first_new` on placed and
    the subjects their articles introduce added; None when a full discovery is due (small
    library, or too much changed since the last one). Returned in the saved form with arrays;
    `data`'s row maps are consumed (at a million passages, a saved form of before holds hundreds
    of MB of Python objects in them).

    The kept rows' maps are moved by numpy (composite keys `row * width + id` and `id * n + row`,
    sorted: renumbering in order keeps them so); only the rows placed again (the new passages,
    and those holding a new subject's words) are read, in Python, and merged in."""
    n = len(index.passages)
    changed = int(data.get("changed_since_discovery", 0)) + (n - first_new) + removed
    if n < INCREMENTAL_MIN_PASSAGES or changed > REDISCOVER_SHARE * n:
        return None
    old_to_new = np.asarray(old_to_new, dtype=np.int64)
    n_prev = len(old_to_new)
    subs = [Subject(i, d["name"], list(d["aliases"]), np.zeros(0, np.int64), set(d["sources"]), int(d.get("mentions", 0)))
            for i, d in enumerate(data["subjects"])]
    n_old = len(subs)
    # subjects the new articles introduce, placed wherever the library names them
    added = _introduced(index, first_new, subs)
    for srcs, forms in added:
        subs.append(Subject(len(subs), "", _aliases(forms), np.zeros(0, np.int64), set(srcs)))
    width = max(1, len(subs))
    probe = Subjects(subs, [], [])
    redo = set(range(first_new, n))
    for s in subs[n_old:]:
        redo.update(_rows_naming(index, s.aliases))
    redo_rows = np.asarray(sorted(redo), dtype=np.int64)
    again = np.zeros(n + 1, dtype=bool)
    again[redo_rows] = True
    # the kept rows' maps, moved, without the rows placed again
    renum = np.full(n_prev + 1, -1, dtype=np.int64)
    renum[:n_prev] = old_to_new
    renum[renum >= n] = -1
    kept: dict[str, np.ndarray] = {}
    stored_rows = _is_csr(data["body"])  # (each subject's rows are written from body | heading: the same)
    for key_ in ("body", "heading"):
        indptr, ids = _rowmap(data.pop(key_), n_prev)  # (a saved form of before: its dicts go as read)
        if len(indptr) - 1 > n_prev:  # (rows past the previous index: none are kept)
            indptr = indptr[: n_prev + 1]
            ids = ids[: int(indptr[-1])]
        keys = _sorted(_keys(indptr, ids, width, renum[: len(indptr) - 1]))
        kept[key_] = keys[~again[keys // width]]
    # each subject's rows: stored (moved likewise), or for a saved form of before, body | heading
    if stored_rows:
        rows = [np.asarray(d["rows"], dtype=np.int64) for d in data["subjects"]]
        lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        flat = np.where(flat < n_prev, renum[np.minimum(flat, n_prev)], -1)
        owner = np.repeat(np.arange(len(rows), dtype=np.int64), lens)
        ok = flat >= 0
        of_rows = _sorted(owner[ok] * (n + 1) + flat[ok])
    else:
        both = np.concatenate([kept["body"], kept["heading"]])
        of_rows = np.unique((both % width) * (n + 1) + both // width)
    of_rows = of_rows[~again[of_rows % (n + 1)]]
    # the rows placed again, by the matcher
    about_doc: dict[str, set[int]] = {}
    surface: dict[int, Counter] = defaultdict(Counter)
    placed: dict[str, list[int]] = {"body": [], "heading": []}
    for r in redo_rows.tolist():
        p = index.passages[r]
        if p.doc_id not in about_doc:
            named = {m.subject for m in probe.find(index.docs[p.doc_id].title)}
            about_doc[p.doc_id] = named if len(named) == 1 else set()
        found = probe.find(index.docs[p.doc_id].text[p.start : p.end])
        for m in found:
            if m.subject >= n_old:
                surface[m.subject][m.text] += 1
        b = {m.subject for m in found}
        h = {m.subject for m in probe.find(p.heading or "")} | about_doc[p.doc_id]
        placed["body"].extend(r * width + i for i in sorted(b))
        placed["heading"].extend(r * width + i for i in sorted(h))
    new_keys = {k: np.asarray(v, dtype=np.int64) for k, v in placed.items()}
    for key_ in kept:
        kept[key_] = _merged(kept[key_], new_keys[key_])
    both = np.union1d(new_keys["body"], new_keys["heading"])
    of_rows = _merged(of_rows, np.sort((both % width) * (n + 1) + both // width))
    row_count = np.bincount(of_rows // (n + 1), minlength=len(subs))
    # a subject named nowhere any more (its articles were removed) or, if new, too widely, goes
    cap = max_subject_rows(n)
    keep = [s.id for s in subs if "glossary" in s.sources or (row_count[s.id] and (s.id < n_old or row_count[s.id] <= cap))]
    remap = np.full(len(subs), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    rows_indptr, rows_flat = _csr_of(of_rows, n + 1, len(subs))
    out = {k: v for k, v in data.items() if k not in ("subjects", "body", "heading", "arrays")}
    out["subjects"] = []
    for i in keep:
        s = subs[i]
        s.rows = rows_flat[rows_indptr[i] : rows_indptr[i + 1]]
        if i < n_old:
            d = {k: v for k, v in data["subjects"][i].items() if k != "rows"}
        else:
            s.mentions = sum(surface[i].values())
            d = {"name": _display_name(s, surface[i]) if surface[i] else s.aliases[0], "aliases": s.aliases,
                 "sources": sorted(s.sources), "mentions": s.mentions}
        out["subjects"].append({**d, "rows": s.rows})
    for key_, keys in kept.items():
        r, i = np.divmod(keys, width)
        i = remap[i]
        ok = i >= 0  # (remap keeps the order: each row's ids stay sorted)
        out[key_] = {"indptr": _indptr(np.bincount(r[ok], minlength=n)), "ids": i[ok]}
    out["changed_since_discovery"] = changed
    if added:
        log.info("subjects added by the new articles: %s", ", ".join(d["name"] for d in out["subjects"][n_old:]))
    return out


def _introduced(index: Index, first_new: int, known: list[Subject]) -> list[tuple[set, Counter]]:
    """Subjects the articles of passages[first_new:] name, compare or are titled after that no
    known subject holds: discovery run on those articles alone (their own word counts)."""
    doc_ids = list(dict.fromkeys(p.doc_id for p in index.passages[first_new:]))
    if not doc_ids:
        return []
    docs = [index.docs[d] for d in doc_ids]
    texts = [d.text if d.title in d.text[: len(d.title) + 200] else f"{d.title}\n{d.text}" for d in docs]
    g, stats = _discover(texts, (d.title for d in docs))
    known_keys = {key(a) for s in known for a in s.aliases}
    probe = Subjects(known, [], [])

    def groups() -> list[tuple[set, Counter]]:
        out = []
        for keys in g.groups().values():
            srcs = set().union(*(g.sources[k] for k in keys))
            if not srcs & {"compared", "named", "title"} or any(k in known_keys for k in keys):
                continue  # an abbreviation alone is no subject; a known one stays as it is
            forms: Counter = Counter()
            for k in keys:
                forms.update(g.forms[k])
            out.append((srcs, forms))
        return out

    found = groups()
    if found:
        probe = Subjects(known + [Subject(len(known) + i, "", _aliases(f), np.zeros(0, np.int64)) for i, (_, f) in
                                  enumerate(found)], [], [])
    by_title: dict[str, list[str]] = defaultdict(list)
    for d in docs:
        if not probe.find(d.title):
            by_title[d.title].append(d.text)
    for title, bodies in by_title.items():
        phrase = _title_subject(title, "\n".join(bodies), stats)
        if phrase and key(phrase) not in known_keys:
            g.add(phrase.lower(), "title")
    return groups()


def _rows_naming(index: Index, aliases: list[str]) -> set[int]:
    """Passage rows that may name one of `aliases` (in text, heading or title): those whose BM25
    tokens hold every word of it, written apart or run together. Cost: the postings of those
    words. An alias made of stop words only is looked for nowhere (logged)."""
    from .index import tokenize

    level = index.bm25_passages
    vocab = level.vocab_dict
    out: set[int] = set()
    for alias in aliases:
        words = [w for w in re.split(r"[\s\-–]+", alias) if w][:6]
        for mask in range(1 << max(0, len(words) - 1)):  # bit i: words i and i+1 written as one
            groups, cur = [], words[0]
            for i, w in enumerate(words[1:]):
                if mask >> i & 1:
                    cur += w
                else:
                    groups.append(cur)
                    cur = w
            groups.append(cur)
            toks = [t for grp in groups for t in tokenize([grp])[0]]
            if not toks:
                log.info("alias %r: only stop words; its passages are not looked for", alias)
                continue
            rows: np.ndarray | None = None
            for t in dict.fromkeys(toks):
                tid = vocab.get(t)
                if tid is None:
                    rows = np.zeros(0, dtype=np.int64)
                    break
                here = np.asarray(level.rows(tid), dtype=np.int64)
                rows = here if rows is None else np.intersect1d(rows, here, assume_unique=True)
                if not len(rows):
                    break
            if rows is not None:
                out.update(rows.tolist())
    return out


def saved_small(gen: Path | None) -> dict | None:
    """The subjects.json of a generation folder as it is (without the arrays it names), or None."""
    if gen is None:
        return None
    try:
        return json.loads((Path(gen) / SAVED_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def saved_json(gen: Path | None) -> dict | None:
    """The saved discovery of a generation folder (the saved form, with arrays), or None."""
    for _ in range(2):  # its arrays replaced (a glossary edit) between reading the JSON and them: again
        data = saved_small(gen)
        name = (data or {}).get("arrays")
        if not name:
            return data
        try:
            with np.load(Path(gen) / name, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            continue
        counts = arrays["rows_counts"].astype(np.int64)
        rows = arrays["rows_ids"].astype(np.int64)
        ends = np.cumsum(counts)
        data["subjects"] = [{**d, "rows": rows[e - c : e]} for d, c, e in zip(data["subjects"], counts, ends)]
        for key_ in ("body", "heading"):
            data[key_] = {"indptr": _indptr(arrays[f"{key_}_counts"].astype(np.int64)),
                          "ids": arrays[f"{key_}_ids"].astype(np.int64)}
        return data
    return None


def _saved(index: Index, gpath: Path | None) -> Subjects | None:
    """The subjects stored with the index's generation, if they were found with this glossary."""
    data = getattr(index, "saved_subjects", None)  # an index not read from a folder (pgstore) carries them
    if data is None:
        if index.path is None:
            return None
        small = saved_small(index.path)
        if small is None or small.get("glossary") != glossary_hash(gpath):
            return None  # (the arrays are read only when they will be used)
        data = saved_json(index.path)
        if data is None:
            return None
    if data.get("glossary") != glossary_hash(gpath):
        return None  # the glossary changed since the build: discover again (answering goes on)
    try:
        return from_json(data, len(index.passages))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        log.warning("saved subjects of %s unreadable (%s); discovering again", index.path, e)
        return None


def for_index(index: Index, corpus_dir: Path | None = None) -> Subjects:
    """The subjects of a loaded index: those saved with its generation at build time (read in
    milliseconds), else discovered on first use; cached per index and glossary version (an
    edited glossary applies at the next question; new articles at the next reindex)."""
    gpath = Path(corpus_dir) / GLOSSARY_NAME if corpus_dir is not None else None
    sig = _signature(gpath)
    hit = _cache.get(id(index))
    if hit is not None and hit[0]() is index and hit[1] == sig:
        return hit[2]
    with _cache_lock:
        hit = _cache.get(id(index))
        if hit is not None and hit[0]() is index and hit[1] == sig:
            return hit[2]
        subjects = _saved(index, gpath)
        if subjects is None:
            try:
                subjects = build(index, load_glossary(gpath) if gpath is not None else None)
            except Exception:  # discovery must never take answering down: answer without subjects
                log.exception("could not discover the subjects of the index; answering without them")
                subjects = Subjects([], [frozenset()] * len(index.passages), [frozenset()] * len(index.passages))
        for k in [k for k, v in _cache.items() if v[0]() is None]:
            del _cache[k]
        _cache[id(index)] = (weakref.ref(index), sig, subjects)
        log.info("subjects: %s", "; ".join(f"{s.name} ({len(s.rows)} passages)" for s in subjects.subjects[:50]))
        return subjects

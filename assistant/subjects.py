"""Subjects and their aliases, discovered from the articles themselves (plus an optional glossary).

A subject is something the articles discuss and compare (in the seed corpus: treatments). Nothing
here knows any subject in advance; they are read from patterns articles use when they name and
compare things:

- comparisons in titles, headings and sentences: "X vs. Y", "X versus Y", "Comparing X and Y",
  "the difference between X and Y";
- naming: "X, also known as Y", "X (also known as Y)", "X is also called Y", "X, commonly known as Y";
- abbreviations: "long form (ABBR)" and "ABBR (long form)", checked letter by letter;
- the title of an article that names no known subject: its most repeated noun phrase.

Phrase boundaries are found without a parser: a side of "X vs. Y" is the longest run of content
words next to the cue that the corpus repeats (so "microneedling depends" yields "microneedling").
Names that differ only in hyphens, spacing, case or plural ("micro-needling", "Microneedling")
are one alias. A trailing word shared by several subjects ("therapy" in "exosome therapy",
"plasma therapy") is a generic head: the core before it ("exosome") names the subject too.

`corpus/glossary.toml` adds or fixes aliases (format in `load_glossary`). The result is computed
once per loaded index (and glossary version) and cached: a reindex picks up new subjects.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
import tomllib
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .index import Index

log = logging.getLogger(__name__)

GLOSSARY_NAME = "glossary.toml"

# Generic English function words (a linguistic resource, not a list of subjects).
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
# punctuation that ends a phrase ("vs." is protected first: it is a cue, not a full stop)
_BOUNDARY = re.compile(r"[,.;:!?()\[\]{}\"“”«»|/]|\s[–—-]\s|[–—]")
_VS = re.compile(r"\b(?:vs\.?|versus|v\.)(?=\s)", re.I)
_ALIAS_CUE = re.compile(
    r"(?P<pre>,|\(|\bis|\bare|\bor)?\s*\b(?P<adv>also|commonly|often|sometimes|otherwise|popularly|more commonly|better|"
    r"generally|usually|widely)?\s*\b(?:known|referred to|called|termed|nicknamed|dubbed)(?:\s+as)?\s+|\b(?:aka|a\.k\.a\.)\s+",
    re.I,
)
_BETWEEN = re.compile(r"\b(?:between|comparing|compare|compared)\s+", re.I)
_PAREN = re.compile(r"\(([^()]{1,80})\)")
_ABBR = re.compile(r"^[A-Za-z][A-Za-z0-9&]*$")

_stemmer = None
_stem_lock = threading.Lock()


def _stem(word: str) -> str:
    global _stemmer
    if _stemmer is None:
        import Stemmer

        with _stem_lock:
            if _stemmer is None:
                _stemmer = Stemmer.Stemmer("english")
    return _stemmer.stemWord(word)


def parts(phrase: str) -> list[str]:
    """Stemmed lower-case parts of a phrase; hyphens and spaces both separate parts."""
    return [_stem(p) for p in _PARTS.findall(phrase.lower().replace("’", "'").replace("'s", ""))]


def key(phrase: str) -> str:
    """One key for 'micro-needling', 'Microneedling', 'micro needling' and 'microneedlings'."""
    return "".join(parts(phrase))


def is_abbreviation(word: str) -> bool:
    letters = [c for c in word if c.isalpha()]
    return 2 <= len(word) <= 10 and " " not in word and sum(c.isupper() for c in letters) >= 2 and bool(_ABBR.match(word))


def abbreviates(abbr: str, phrase: str) -> bool:
    """True when the letters of `abbr` are the initials of `phrase`'s words (function words optional)."""
    letters = [c.lower() for c in abbr if c.isalnum()]
    words = [w for w in re.split(r"[\s\-–]+", phrase.strip()) if w]
    if not words or not letters:
        return False
    strict = [w[0].lower() for w in words]
    loose = [w[0].lower() for w in words if w.lower() not in STOPWORDS]
    return letters in (strict, loose) and words[0][0].lower() == letters[0]


# --- the result ------------------------------------------------------------------------------

@dataclass
class Subject:
    id: int
    name: str  # the label answers carry as `about`
    aliases: list[str]  # surface forms, lower-case except abbreviations
    rows: np.ndarray  # passage rows that mention it (text or section heading)
    sources: set[str] = field(default_factory=set)  # how it was found: compared, named, abbreviation, title, glossary
    mentions: int = 0  # mentions in the corpus


@dataclass(frozen=True)
class Mention:
    subject: int
    start: int
    end: int
    text: str


class Subjects:
    """The subjects of one index, with a matcher for their aliases."""

    def __init__(self, subjects: list[Subject], n_passages: int, body: list[frozenset[int]], heading: list[frozenset[int]]):
        self.subjects = subjects
        self.n_passages = n_passages
        self.body = body  # passage row -> subjects its text mentions
        self.heading = heading  # passage row -> subjects its section heading mentions
        self._regex, self._owner = _compile(subjects)
        self._tokens: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self):
        return iter(self.subjects)

    def find(self, text: str) -> list[Mention]:
        """Mentions of subjects in `text`, in reading order."""
        if self._regex is None or not text:
            return []
        return [Mention(self._owner[m.lastgroup], m.start(), m.end(), m.group()) for m in self._regex.finditer(text)]

    def ids_in(self, text: str) -> list[int]:
        """Subjects named in `text`, each once, in order of first mention."""
        out: list[int] = []
        for m in self.find(text):
            if m.subject not in out:
                out.append(m.subject)
        return out

    def bm25_tokens(self, alias: str) -> list[str]:
        """The index's BM25 tokens of an alias (cached)."""
        toks = self._tokens.get(alias)
        if toks is None:
            from .index import tokenize

            toks = self._tokens[alias] = list(tokenize([alias])[0])
        return toks

    def by_name(self, name: str) -> Subject | None:
        k = key(name)
        for s in self.subjects:
            if key(s.name) == k or any(key(a) == k for a in s.aliases):
                return s
        return None

    def rows(self, ids: list[int]) -> np.ndarray:
        if not ids:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([self.subjects[i].rows for i in ids])).astype(np.int64)

    def describe(self) -> list[dict]:
        return [{"name": s.name, "aliases": s.aliases, "passages": int(len(s.rows)), "sources": sorted(s.sources)}
                for s in self.subjects]


def _alias_pattern(alias: str, case_sensitive: bool) -> str:
    words = [w for w in re.split(r"[\s\-–]+", alias) if w]
    body = r"[\s\-–]*".join(re.escape(w) for w in words)
    if not words[-1][-1:].isdigit():
        body += r"(?:'s|’s|e?s)?"
    body = rf"(?<![\w\-]){body}(?![\w])"
    return f"(?-i:{body})" if case_sensitive else body


def _compile(subjects: list[Subject]):
    alts = []
    owner: dict[str, int] = {}
    for s in subjects:
        for a in s.aliases:
            alts.append((len(a), a, s.id))
    if not alts:
        return None, owner
    alts.sort(key=lambda x: (-x[0], x[1]))
    pats = []
    for n, (_, a, sid) in enumerate(alts):
        g = f"a{n}"
        owner[g] = sid
        cs = is_abbreviation(a) and a.isupper() and len(a) <= 3 and a.lower() in STOPWORDS
        pats.append(f"(?P<{g}>{_alias_pattern(a, cs)})")
    return re.compile("|".join(pats), re.I), owner


# --- discovery -------------------------------------------------------------------------------

class _Groups:
    """Union-find over alias keys, remembering surface forms and where each came from."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.forms: dict[str, Counter] = defaultdict(Counter)  # key -> surface forms
        self.sources: dict[str, set[str]] = defaultdict(set)

    def add(self, phrase: str, source: str) -> str | None:
        phrase = _clean_phrase(phrase)
        k = key(phrase)
        if not k or len(k) < 2:
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
    p = re.sub(r"\s+", " ", p.replace("’", "'")).strip(" -–—'\"")
    words = p.split(" ")
    while words and words[0].lower() in STOPWORDS:
        words = words[1:]
    while words and words[-1].lower() in STOPWORDS:
        words = words[:-1]
    return " ".join(words)


def _content(tok: str) -> bool:
    return tok.lower() not in STOPWORDS and any(c.isalpha() for c in tok) and len(tok) >= 2


class _Stats:
    """Counts of part n-grams over the corpus, to validate phrase boundaries."""

    def __init__(self, texts: list[str], max_n: int = 5) -> None:
        self.counts: Counter = Counter()
        for text in texts:
            for seg in _segments(text):
                ps = [p for tok in seg for p in parts(tok)]
                for n in range(1, max_n + 1):
                    for i in range(len(ps) - n + 1):
                        self.counts[" ".join(ps[i : i + n])] += 1

    def count(self, phrase: str) -> int:
        return self.counts.get(" ".join(parts(phrase)), 0)


def _segments(text: str) -> list[list[str]]:
    """Runs of word tokens between punctuation; 'vs.' is kept as a token."""
    text = _VS.sub(" vs ", text)
    out = []
    for seg in _BOUNDARY.split(text):
        toks = _TOKEN.findall(seg)
        if toks:
            out.append(toks)
    return out


def _side(tokens: list[str], stats: _Stats, leftwards: bool, min_count: int, max_words: int = 4) -> str | None:
    """The phrase next to a cue: the longest run of content words the corpus repeats."""
    run: list[str] = []
    seq = reversed(tokens) if leftwards else iter(tokens)
    for t in seq:
        if not _content(t) or t.lower() in ("vs", "versus") or len(run) >= max_words:
            break
        run.append(t)
    if leftwards:
        run.reverse()
    for n in range(len(run), 0, -1):
        cand = run[-n:] if leftwards else run[:n]
        phrase = " ".join(cand)
        if stats.count(phrase) >= min_count:
            return phrase
    return None


def _tokens_before(text: str) -> list[str]:
    segs = _segments(text)
    return segs[-1] if segs and not _BOUNDARY.search(text[-1:] if text else "") else []


def _tokens_after(text: str) -> list[str]:
    if not text or _BOUNDARY.match(text[:1]):
        return []
    segs = _segments(text)
    return segs[0] if segs else []


def _named_after(text: str, max_words: int = 5) -> list[str]:
    """'the vampire facial) involves' -> ['vampire facial']; 'A or B, is' -> ['A', 'B']."""
    text = _PAREN.sub(" ", text)
    m = re.match(r"[^,.;:!?()\[\]\"“”]*", text)
    chunk = m.group(0) if m else ""
    out = []
    for alt in re.split(r"\s+or\s+|\s+and\s+|/", chunk):
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
        if len(out) >= 3:
            break
    return out


def _discover(index: Index) -> tuple[_Groups, set[str], _Stats]:
    """Candidate aliases grouped by the naming patterns; returns groups, keys of compared sides, stats."""
    docs = list(index.docs.values())
    texts = []
    for d in docs:
        texts.append(d.text if d.title in d.text[: len(d.title) + 200] else f"{d.title}\n{d.text}")
    stats = _Stats(texts)
    g = _Groups()
    compared: set[str] = set()

    lines = [line for t in texts for line in t.split("\n") if line.strip()]
    for line in lines:
        norm = _VS.sub("vs", line)
        # "X vs. Y" (chains: "X vs. Y vs. Z")
        pieces = re.split(r"\bvs\b", norm)
        if len(pieces) > 1:
            for i in range(len(pieces) - 1):
                left = _side(_tokens_before(pieces[i]), stats, True, 2)
                right = _side(_tokens_after(pieces[i + 1].lstrip()), stats, False, 2)
                if left and right:
                    ka, kb = g.add(left, "compared"), g.add(right, "compared")
                    if ka and kb and ka != kb:
                        compared.update((ka, kb))
        # "between X and Y", "comparing X and/with/to Y"
        for m in _BETWEEN.finditer(line):
            rest = line[m.end() :]
            mm = re.match(r"(.{1,80}?)\s+(?:and|with|to|&)\s+(.{1,80})", rest)
            if not mm:
                continue
            left = _side(_tokens_after(mm.group(1)) if len(_segments(mm.group(1))) == 1 else [], stats, False, 2)
            if left is None or _clean_phrase(mm.group(1)) != left:
                continue  # X must be the whole phrase between the cue and "and"
            right = _side(_tokens_after(mm.group(2)), stats, False, 2)
            if right:
                ka, kb = g.add(left, "compared"), g.add(right, "compared")
                if ka and kb and ka != kb:
                    compared.update((ka, kb))
        # "X, also known as Y", "X (also known as Y)", "X is also called Y"
        for m in _ALIAS_CUE.finditer(line):
            if not (m.group("pre") or m.group("adv") or m.group(0).lower().startswith(("aka", "a.k.a"))):
                continue
            before = line[: m.start()] if not m.group("pre") else line[: m.start("pre")]
            before = re.sub(r"\s*[(,]\s*$", "", before)
            x = _side(_tokens_before(before.rstrip()), stats, True, 1)
            ys = _named_after(line[m.end() :])
            if x and ys:
                kx = g.add(x, "named")
                for y in ys:
                    g.union(kx, g.add(y, "named"))
        # abbreviations: "long form (ABBR)", "ABBR (long form)", "(long form – ABBR)"
        for m in _PAREN.finditer(line):
            inner = m.group(1).strip()
            inner_parts = [p.strip() for p in re.split(r"\s[–—-]\s|[–—]|,|;", inner) if p.strip()]
            if len(inner_parts) == 2:
                a, b = inner_parts
                for abbr, long in ((a, b), (b, a)):
                    if is_abbreviation(abbr) and abbreviates(abbr, long):
                        g.union(g.add(abbr, "abbreviation"), g.add(long, "abbreviation"))
            before_toks = _tokens_before(line[: m.start()].rstrip())
            if is_abbreviation(inner):
                for n in range(min(len(before_toks), len(inner) + 3), 0, -1):
                    long = " ".join(before_toks[-n:])
                    if abbreviates(inner, long):
                        g.union(g.add(inner, "abbreviation"), g.add(long, "abbreviation"))
                        break
            elif before_toks and is_abbreviation(before_toks[-1]) and abbreviates(before_toks[-1], inner):
                g.union(g.add(before_toks[-1], "abbreviation"), g.add(inner, "abbreviation"))
    return g, compared, stats


def _merge_heads(g: _Groups, index: Index, passage_texts: list[str]) -> None:
    """'PRP injections' ~ 'PRP'; 'exosome therapy' -> also 'exosome' when 'therapy' heads several names."""
    multi = [(k, f) for k in list(g.parent) for f in g.forms[k] if len(parts(f)) >= 2]
    heads: dict[str, set[str]] = defaultdict(set)
    for k, f in multi:
        ps = parts(f)
        heads[ps[-1]].add(" ".join(ps[:-1]))
    generic = {h for h, rests in heads.items() if len(rests) >= 2}
    by_parts = {" ".join(parts(f)): k for k in g.parent for f in g.forms[k]}
    n = max(1, len(passage_texts))
    lowered = [t.lower() for t in passage_texts]
    for k, f in multi:
        words = re.split(r"\s+", f)
        ps = parts(f)
        rest = " ".join(ps[:-1])
        if rest in by_parts:  # the phrase minus its last word is a known name
            g.union(by_parts[rest], k)
            continue
        if ps[-1] in generic and len(words) >= 2:
            core = " ".join(words[:-1])
            core_l = core.lower()
            if core_l in STOPWORDS or len(core_l) < 3:
                continue
            pat = re.compile(_alias_pattern(core_l, False), re.I)
            df = sum(1 for t in lowered if pat.search(t))
            if is_abbreviation(core) or df <= 0.5 * n:
                g.union(k, g.add(core_l, "core"))


def _title_subject(title: str, text: str, stats: _Stats, others: list[str]) -> str | None:
    """The most repeated noun phrase of a title in its own article ('Hydrafacial: What to Expect')."""
    best, best_score = None, 0.0
    low = text.lower()
    for seg in _segments(title):
        run: list[str] = []
        for t in seg + [""]:
            if t and _content(t):
                run.append(t)
                continue
            for i in range(len(run)):
                for j in range(i + 1, min(len(run), i + 4) + 1):
                    phrase = " ".join(run[i:j])
                    c = len(re.findall(_alias_pattern(phrase.lower(), False), low, re.I))
                    if c < 3:
                        continue
                    total = stats.count(phrase) or c
                    share = c / max(total, 1)  # how much of its use is in this article
                    score = c * share * (1 + 0.25 * (j - i - 1))
                    if score > best_score:
                        best, best_score = phrase, score
            run = []
    return best


def build(index: Index, glossary: dict | None = None) -> Subjects:
    """Discover the subjects of an index (then apply a parsed glossary)."""
    passages = index.passages
    ptexts = [index.docs[p.doc_id].text[p.start : p.end] for p in passages]
    g, compared, stats = _discover(index)
    _merge_heads(g, index, ptexts)

    groups = g.groups()
    # title fallback: an article whose title names no subject found above
    def _matches(title: str) -> bool:
        tk = set()
        for seg in _segments(title):
            ps = [p for t in seg for p in parts(t)]
            for i in range(len(ps)):
                for j in range(i + 1, min(len(ps), i + 5) + 1):
                    tk.add("".join(ps[i:j]))
        return any(k in tk for k in g.parent if (g.sources[k] & {"compared", "named"}) or g.find(k) in named_roots)

    named_roots = {g.find(k) for k in g.parent if g.sources[k] & {"compared", "named"}}
    for d in index.docs.values():
        if not _matches(d.title):
            phrase = _title_subject(d.title, d.text, stats, [])
            if phrase:
                k = g.add(phrase.lower(), "title")
                # attach to an abbreviation group that already holds it
                named_roots.add(g.find(k))
    groups = g.groups()

    # candidate subjects: groups with a naming or comparing source
    cands = []
    for root, keys in groups.items():
        srcs = set().union(*(g.sources[k] for k in keys))
        if not srcs & {"compared", "named", "title"}:
            continue  # abbreviations alone (FDA, JAMA) are aliases, not subjects
        forms: Counter = Counter()
        for k in keys:
            forms.update(g.forms[k])
        cands.append((srcs, forms))

    cands = _apply_glossary(cands, glossary) if glossary else cands
    return _finish(index, ptexts, cands)


def _finish(index: Index, ptexts: list[str], cands: list[tuple[set, Counter]], min_passages: int = 2) -> Subjects:
    passages = index.passages
    heads = [p.heading or "" for p in passages]
    subjects: list[Subject] = []
    for srcs, forms in cands:
        aliases = _aliases(forms)
        if not aliases:
            continue
        tmp = Subject(id=len(subjects), name=aliases[0], aliases=aliases, rows=np.zeros(0, np.int64), sources=set(srcs))
        subjects.append(tmp)
    # mentions per passage, one matcher for all (longest alias wins)
    probe = Subjects(subjects, len(passages), [], [])
    body_sets: list[set[int]] = []
    head_sets: list[set[int]] = []
    counts: Counter = Counter()
    surface: dict[int, Counter] = defaultdict(Counter)
    for t, h in zip(ptexts, heads):
        ms = probe.find(t)
        body_sets.append({m.subject for m in ms})
        for m in ms:
            counts[m.subject] += 1
            surface[m.subject][m.text] += 1
        head_sets.append({m.subject for m in probe.find(h)})
    keep = []
    for s in subjects:
        rows = [i for i in range(len(passages)) if s.id in body_sets[i] or s.id in head_sets[i]]
        if len(rows) < min_passages and "glossary" not in s.sources:
            continue
        s.rows = np.asarray(rows, dtype=np.int64)
        s.mentions = counts[s.id]
        if "glossary-name" not in s.sources:
            s.name = _display_name(s, surface[s.id])
        keep.append(s)
    # re-number, most discussed first
    keep.sort(key=lambda s: (-len(s.rows), s.name.lower()))
    remap = {s.id: i for i, s in enumerate(keep)}
    for s in keep:
        s.id = remap[s.id]
    body = [frozenset(remap[x] for x in b if x in remap) for b in body_sets]
    head = [frozenset(remap[x] for x in h if x in remap) for h in head_sets]
    return Subjects(keep, len(passages), body, head)


def _aliases(forms: Counter) -> list[str]:
    """Distinct surface forms: abbreviations keep their case, the rest are lower-cased."""
    seen: dict[str, str] = {}
    for f, _ in forms.most_common():
        f = f.strip()
        if not f:
            continue
        shown = f if is_abbreviation(f) and f.upper() == f else f.lower()
        k = shown.lower().replace("-", " ").replace("–", " ")
        k = re.sub(r"\s+", " ", k)
        if k not in seen:
            seen[k] = shown
    return sorted(seen.values(), key=lambda a: (-forms.get(a, 0), len(a)))


def _display_name(s: Subject, surface: Counter) -> str:
    """The alias the articles use most on its own; lower-case unless only ever written in capitals."""
    if not surface:
        return s.name
    by_alias: Counter = Counter()
    variants: dict[str, Counter] = defaultdict(Counter)
    for text, c in surface.items():
        # map the matched text back to the alias it came from
        base = re.sub(r"(?:'s|’s)$", "", text)
        k = key(base)
        alias = next((a for a in s.aliases if key(a) == k), base)
        by_alias[alias] += c
        variants[alias][base] += c
    # prefer names the articles compare or name over derived cores
    best = max(by_alias, key=lambda a: (by_alias[a], -len(a)))
    forms = variants[best]
    lower = [v for v in forms if v == v.lower()]
    if lower:
        return max(lower, key=lambda v: forms[v])
    if all(v.upper() == v for v in forms):
        return max(forms, key=lambda v: forms[v])
    return best.lower() if not is_abbreviation(best) else best


# --- glossary --------------------------------------------------------------------------------

def load_glossary(path: Path) -> dict | None:
    """Parse corpus/glossary.toml; a missing file is None, a malformed one logs a warning and is None.

    Format:

        [[subject]]
        name = "PRP"                                   # the label answers get (optional)
        aliases = ["platelet-rich plasma", "vampire facial"]

        [ignore]
        aliases = ["plasma"]                           # never an alias of anything
        subjects = ["facial rejuvenation"]             # drop a discovered subject holding this name
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
        name = entry.get("name")
        aliases = entry.get("aliases", [])
        if name is not None and not (isinstance(name, str) and name.strip()):
            log.warning("glossary %s: subject #%d ignored ('name' must be a non-empty string)", path, i)
            continue
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
            log.warning("glossary %s: subject #%d ignored ('aliases' must be a list of strings)", path, i)
            continue
        if not name and not aliases:
            log.warning("glossary %s: subject #%d ignored (neither name nor aliases)", path, i)
            continue
        out["subject"].append({"name": name.strip() if name else None, "aliases": [a.strip() for a in aliases]})
    ign = data.get("ignore", {})
    if not isinstance(ign, dict):
        log.warning("glossary %s: 'ignore' must be a table ([ignore]); ignored", path)
        ign = {}
    for k in ("aliases", "subjects"):
        v = ign.get(k, [])
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            out["ignore"][k] = [x.strip() for x in v if x.strip()]
        else:
            log.warning("glossary %s: ignore.%s must be a list of strings; ignored", path, k)
    unknown = set(data) - {"subject", "ignore"}
    if unknown:
        log.warning("glossary %s: unknown keys %s ignored", path, ", ".join(sorted(unknown)))
    return out


def _apply_glossary(cands: list[tuple[set, Counter]], glossary: dict) -> list[tuple[set, Counter]]:
    cands = [(set(s), Counter(f)) for s, f in cands]

    def holder(term: str) -> int | None:
        k = key(term)
        for i, (_, forms) in enumerate(cands):
            if any(key(f) == k for f in forms):
                return i
        return None

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
                remove(term)  # a fix: the glossary moves the alias here
            forms[term] += 1000  # glossary names rank first among aliases
        srcs.add("glossary")
        if name:
            srcs.add("glossary-name")
            forms[name] += 1000
    out = []
    for srcs, forms in cands:
        forms = Counter({f: c for f, c in forms.items() if c > 0})
        if forms:
            out.append((srcs, forms))
    # a glossary name is the label
    for entry in glossary["subject"]:
        if entry["name"]:
            for srcs, forms in out:
                if entry["name"] in forms:
                    forms[entry["name"]] += 10**6
    return out


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


def for_index(index: Index, corpus_dir: Path | None = None) -> Subjects:
    """The subjects of a loaded index, built on first use and cached (keyed by index and glossary)."""
    gpath = Path(corpus_dir) / GLOSSARY_NAME if corpus_dir is not None else None
    sig = _signature(gpath)
    hit = _cache.get(id(index))
    if hit is not None and hit[0]() is index and hit[1] == sig:
        return hit[2]
    with _cache_lock:
        hit = _cache.get(id(index))
        if hit is not None and hit[0]() is index and hit[1] == sig:
            return hit[2]
        glossary = load_glossary(gpath) if gpath is not None else None
        subjects = build(index, glossary)
        for k in [k for k, v in _cache.items() if v[0]() is None]:
            del _cache[k]
        _cache[id(index)] = (weakref.ref(index), sig, subjects)
        log.info("subjects: %s", ", ".join(f"{s.name} ({len(s.rows)})" for s in subjects))
        return subjects

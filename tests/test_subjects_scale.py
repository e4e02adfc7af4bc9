"""A full subject discovery is fast enough for a million passages (issue 11) and finds what the
plain algorithm found: the shortcuts in subjects.py (reading near a cue, counting only the asked
n-grams, scanning for the aliases' first words, reusing the first placing pass) are checked here
against the plain definitions they replace, on generated text full of the awkward cases.

No model is needed: discovery reads only the articles' text and passages.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from types import SimpleNamespace

import numpy as np

from assistant import subjects as sj

# --- the plain definitions (as subjects.py had them before issue 11) -------------------------

BOUNDARY = re.compile(r"[,.;:!?()\[\]{}\"“”«»|/]|\s[–—-]\s|[–—]")
VS = re.compile(r"\b(?:vs\.?|versus|v\.)(?=\s)", re.I)


def plain_segments(text: str) -> list[list[str]]:
    return [toks for seg in BOUNDARY.split(VS.sub(" vs ", text)) if (toks := sj._TOKEN.findall(seg))]


def plain_before(text: str) -> list[str]:
    segs = plain_segments(text)
    return segs[-1] if segs and text and not BOUNDARY.search(text[-1:]) else []


def plain_after(text: str) -> list[str]:
    if not text or BOUNDARY.match(text[:1]):
        return []
    segs = plain_segments(text)
    return segs[0] if segs else []


def plain_named_head(text: str) -> str:
    return re.match(r"[^,.;:!?()\[\]\"“”]*", sj._PAREN.sub(" ", text)).group(0)


class PlainMatcher:
    """The matcher as it was: every word start visited, the aliases keyed by their first four
    folded letters tried there in order."""

    def __init__(self, alts: list[tuple[str, int]]) -> None:
        self.table: dict[str, list] = {}
        odd = set()
        for order, (alias, sid) in enumerate(alts):
            pattern, lead = sj._alias_parts(alias)
            self.table.setdefault(sj._fold(lead)[:4], []).append((order, re.compile(pattern, re.I), sid))
            if lead and not re.match(r"\w", lead[0]):
                odd.add(lead[0])
        self.lengths = sorted({len(k) for k in self.table})
        extra = "".join(re.escape(c) for c in sorted(odd))
        self.starts = re.compile(rf"(?<![\w\-])(?:\w{'|[' + extra + ']' if extra else ''})")

    def candidates(self, low: str, i: int) -> list:
        cands = [c for n in self.lengths if len(k := low[i : i + n]) == n and k in self.table for c in self.table[k]]
        return sorted(cands, key=lambda c: c[0])

    def find(self, text: str) -> list[tuple]:
        low, out, pos = sj._fold(text), [], 0
        for s in self.starts.finditer(text):
            if s.start() < pos:
                continue
            for _, rx, sid in self.candidates(low, s.start()):
                if m := rx.match(text, s.start()):
                    out.append((sid, s.start(), m.end(), m.group()))
                    pos = m.end()
                    break
        return out

    def present(self, text: str) -> set[int]:
        low = sj._fold(text)
        return {sid for s in self.starts.finditer(text) for _, rx, sid in self.candidates(low, s.start())
                if rx.match(text, s.start())}


def plain_counts(texts: list[str]) -> Counter:
    out: Counter = Counter()
    for text in texts:
        for seg in plain_segments(text):
            ps = [p for tok in seg for p in sj.parts(tok)]
            for n in range(1, 5):
                for i in range(len(ps) - n + 1):
                    out[" ".join(ps[i : i + n])] += 1
    return out


# --- generated text with the awkward cases ----------------------------------------------------

WORDS = ("micro-needling PRP platelet-rich plasma therapy therapies exosome exosomes peel peels "
         "it's patient's O'Sullivan don’t a.k.a. vs vs. v. versus V. Vs known called aka "
         "the and or of with between comparing LED light İstanbul Kelvin Kx ſoft ıt "
         "x''ss ''s -PRP e-light 5PRP covid-19 HA HAs IT US us y Y").split()
PUNCT = [" ", " ", " ", " ", ", ", ". ", "; ", " (", ") ", " - ", " – ", "—", "/", " “", "” ", "\x00", "\n", " [", "] "]


def gen_text(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        out.append(rng.choice(WORDS))
        out.append(rng.choice(PUNCT))
    return "".join(out)


def test_words_near_a_cue_are_read_as_from_the_whole_line():
    rng = random.Random(11)
    for _ in range(300):
        line = gen_text(rng, rng.randint(0, 400))
        for cut in sorted(rng.sample(range(len(line) + 1), min(8, len(line) + 1))):
            assert sj._tokens_before(line[:cut]) == plain_before(line[:cut]), (line, cut)
            assert sj._tokens_after(line[cut:]) == plain_after(line[cut:]), (line, cut)
            assert sj._PAREN.sub(" ", sj._NAMED_RUN.match(line[cut:]).group(0)) == plain_named_head(line[cut:]), line
        assert sj._segments(line) == plain_segments(line)
        cued = line.replace("PRP", rng.choice(["between", "Between", "comparing", "compared", "Compare", "betweenx"]))
        if cued.isascii():
            assert ([m.span() for m in sj._at_words(sj._BETWEEN, cued, cued.lower(), ("between", "compar"))]
                    == [m.span() for m in sj._BETWEEN.finditer(cued)]), cued
    # a long stretch without words next to the cue: the words are further away
    quiet = " ' ; ' " * 80
    assert sj._tokens_before("alpha beta, gamma delta," + quiet) == ["gamma", "delta"] == plain_before("alpha beta, gamma delta," + quiet)
    assert sj._tokens_after(quiet + ", alpha beta. gamma") == ["alpha", "beta"] == plain_after(quiet + ", alpha beta. gamma")


def test_a_title_phrase_is_counted_as_findall_counts_it():
    rng = random.Random(9)
    for _ in range(200):
        low = gen_text(rng, rng.randint(0, 200)).lower().encode("ascii", "ignore").decode()
        for phrase in rng.sample(WORDS, 5) + ["platelet-rich plasma", "peel", "therapy", "e-light", "x"]:
            rx, lead = sj._compiled(phrase.lower())
            if lead and lead.isascii():
                assert sj._count_at(rx, lead, low) == len(rx.findall(low)), (phrase, low)


def test_ngram_counts_are_those_of_every_ngram():
    rng = random.Random(5)
    texts = [gen_text(rng, rng.randint(0, 300)) for _ in range(60)]
    ref = plain_counts(texts)
    asked = list(ref)[:: 3] + ["platelet rich plasma", "no such phrase", "micro needling peels", "a b c d e"]
    stats = sj._Stats(texts, asked)
    assert stats.counts, "nothing counted"
    for phrase in asked:
        assert stats.count(phrase) == ref.get(" ".join(sj.parts(phrase)), 0), phrase
    # a phrase not announced is counted on demand, the same
    late = next(p for p in ref if p not in asked and len(p.split()) == 3)
    assert stats.count(late) == ref[late]
    # several passes when the asked words are too many to pack four of them in 63 bits
    stats = sj._Stats(texts, [])
    stats.max_n = 4
    grams = sorted({tuple(p.split()) for p in ref})
    many = [g + (f"w{i}",) for i, g in enumerate(grams * 10) if len(g) < 4][:40000]
    stats._count(many + grams)
    for g in grams:
        assert stats.counts.get(g, 0) == ref[" ".join(g)], g


def test_the_scan_for_first_words_finds_what_every_word_start_finds():
    """Random aliases (hyphens, several words, 'y' plurals, capitals) over random text, ASCII or
    not (with the letters that fold or match case-insensitively in odd ways): the matcher finds
    what visiting every word start found."""
    rng, found = random.Random(3), 0
    letters = "aeioubdklmnprsty"
    for _ in range(30):
        names = {"".join(rng.choice(letters + ("éıßİ" if rng.random() < 0.2 else "")) for _ in range(rng.randint(1, 7)))
                 for _ in range(60)}
        aliases = []
        for i, n in enumerate(sorted(names)):
            form = rng.choice([n, n.upper(), f"{n}-{rng.choice(sorted(names))}", f"{n} {rng.choice(sorted(names))}y",
                               f"{n} {rng.choice(sorted(names))} {rng.choice(sorted(names))}", n + "y", n + "-19"])
            aliases.append((form, i))
        alts = sorted(aliases, key=lambda x: (-len(x[0]), x[0]))
        m, plain = sj._Matcher(alts), PlainMatcher(alts)
        for _ in range(20):
            words = [rng.choice([a for a, _ in aliases]) if rng.random() < 0.3 else
                     "".join(rng.choice(letters + "İıKſ’'-éßͅ") for _ in range(rng.randint(1, 8))) for _ in range(40)]
            text = "".join(w + rng.choice([" ", " ", "-", ", ", "'s ", "ies ", "s. ", " – "]) for w in words)
            if rng.random() < 0.5:
                text = text.encode("ascii", "ignore").decode()
            assert [(x.subject, x.start, x.end, x.text) for x in m.find(text)] == plain.find(text), text
            assert m.present(text) == plain.present(text), text
            found += len(plain.find(text))
    assert found > 1000  # the texts do name the aliases


# --- a whole discovery, pinned -----------------------------------------------------------------

TREATMENTS = ["microneedling", "mesotherapy", "PRP injections", "exosome therapy", "plasma therapy",
              "chemical peels", "laser resurfacing", "LED light therapy", "HydraFacial", "dermaplaning"]
NICKNAMES = {"microneedling": "collagen induction therapy", "PRP injections": "vampire facial",
             "chemical peels": "chemexfoliation", "HydraFacial": "hydradermabrasion"}
SENTENCES = [
    "{a} vs. {b}: which one suits sensitive skin?",
    "The choice between {a} and {b} depends on the budget.",
    "Comparing {a} with {b}, recovery is shorter.",
    "{a}, also known as {c}, is offered in most clinics.",
    "Platelet-rich plasma (PRP) is drawn from the patient's own blood.",
    "Light-emitting diode (LED) panels are used after {a}.",
    "Many patients ask whether {a} hurts; {b} usually does not.",
    "{a} sessions are repeated every {n} weeks, and {b} is often combined with it.",
    "Results of {a} last longer than those of {b} (about {n} months).",
    "Side effects of {a} include redness — rarely swelling.",
]


def generated_index(seed: int = 1, n_docs: int = 40) -> SimpleNamespace:
    """Articles of comparisons, namings and abbreviations, split into passages by paragraph."""
    rng = random.Random(seed)
    docs, passages = {}, []
    for d in range(n_docs):
        a, b = rng.sample(TREATMENTS, 2)
        title = rng.choice([f"{a} vs {b}", f"What to expect from {a}", f"{a.title()} Guide", f"Reading Notes {d}"])
        paras = []
        for _ in range(rng.randint(2, 6)):
            x, y = rng.sample(TREATMENTS, 2)
            paras.append(" ".join(rng.choice(SENTENCES).format(a=x, b=y, c=NICKNAMES.get(x, x), n=rng.randint(2, 9))
                                  for _ in range(rng.randint(2, 5))))
        text = "\n\n".join(paras)
        doc_id = f"doc{d:03d}"
        docs[doc_id] = SimpleNamespace(doc_id=doc_id, title=title, text=text)
        start = 0
        for k, p in enumerate(paras):
            passages.append(SimpleNamespace(doc_id=doc_id, start=start, end=start + len(p),
                                            heading=rng.choice(["", "", f"About {a}", "Aftercare"])))
            start += len(p) + 2
    return SimpleNamespace(docs=docs, passages=passages)


# sha256 of the discovery's JSON on `generated_index()` as the plain algorithm (before issue 11)
# found it; with the glossary below too
PINNED = "f282a5c0d34ff7fccec01df24ebc71e49003fcba4bf2f699f71bcee318129925"
PINNED_GLOSSARY = "9db09a8b555e706dfa389390078da18bf17dff650cd1ff023b2e75e3742bd9ac"
GLOSSARY = {"subject": [{"name": "PRP", "aliases": ["platelet-rich plasma", "vampire facial"]},
                        {"name": None, "aliases": ["hydradermabrasion", "hydrafacial"]}],
            "ignore": {"aliases": ["plasma therapy"], "subjects": ["dermaplaning"]}}


def digest(found: sj.Subjects) -> str:
    """Of the discovery in the form the pins were taken in (row maps as JSON dicts, as subjects.json
    held them before the arrays; test_subjects_arrays holds the two forms equal)."""
    from tests.test_subjects_arrays import old_to_json

    return hashlib.sha256(json.dumps(old_to_json(found, None), sort_keys=True).encode()).hexdigest()


def test_a_discovery_finds_what_the_plain_algorithm_found():
    index = generated_index()
    found = sj.build(index)
    assert len(found) >= 5 and {"microneedling", "PRP"} <= {s.name for s in found}
    assert digest(found) == PINNED
    assert digest(sj.build(index, GLOSSARY)) == PINNED_GLOSSARY


def test_the_second_placing_pass_reuses_the_first_only_where_it_must_agree():
    lib = sj._Library.of(generated_index(seed=2))
    first = sj._subjects_of(lib, [({"compared"}, Counter({"microneedling": 1, "PRP": 1})),
                                            ({"compared"}, Counter({"exosome therapy": 1}))], min_passages=0, keep=True)
    later = [({"compared"}, Counter({"microneedling": 1, "PRP": 1, "platelet-rich plasma": 1})),
             ({"compared"}, Counter({"therapy": 1})), ({"named"}, Counter({"exosome therapy": 1}))]
    reused = sj._subjects_of(lib, later, previous=first.found)
    fresh = sj._subjects_of(lib, later)
    assert sj.to_json(reused, None) == sj.to_json(fresh, None)
    assert any(s.name == "therapy" for s in fresh)  # the changed aliases did change what is found
    assert np.diff(np.asarray(first.found.offsets)).sum() == len(first.found.sid) > 0

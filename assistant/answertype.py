"""What kind of answer a question wants, and whether a sentence holds one.

No reader model is available offline, so the answering sentence is found as early TREC QA
systems found it: "How many ...?" wants a number, "When ...?" a date, "Who ...?" a name. A
sentence that repeats the question's words but holds no answer of that kind ("The Broncos
reached the AFC Championship game.") is not the answer; its neighbour with the name or the
number usually is; "What amino acids are ...?" wants the list after "including". Generic English
cues only: nothing here knows any corpus.
"""
from __future__ import annotations

import re

_NUMBER_Q = re.compile(
    r"\bhow\s+(?:many|much|long|old|far|large|big|tall|high|often|fast|deep|wide|heavy|frequently)\b|"
    r"\bwhat\s+(?:percentage|percent|proportion|fraction|number|amount|size|age|rate|ratio|length|duration|"
    r"dose|dosage|temperature|speed|distance|population)\b|\bhow\s+much\b",
    re.I,
)
_WHEN_Q = re.compile(r"^\s*when\b|\b(?:what|which|in\s+what|in\s+which)\s+(?:year|years|date|month|day|century|decade|era|period)\b", re.I)
_WHO_Q = re.compile(r"^\s*(?:who|whom|whose)\b|\b(?:what|which)\s+(?:person|people|man|woman|company|organi[sz]ation|"
                    r"group|team|king|queen|president|author|scientist|university|institution|agency)\b", re.I)
_WHERE_Q = re.compile(r"^\s*where\b|\b(?:what|which|in\s+what|in\s+which)\s+(?:city|country|place|state|region|"
                      r"continent|county|town|province|location|area)\b", re.I)

# "What amino acids are in ...?", "Which vitamins does it contain?": a plural noun after what/which,
# then a verb, wants instances of that noun; articles list them after a cue ("including alanine,
# arginine, ...", "such as A, B and C"), the TREC list-question pattern
_LIST_Q = re.compile(r"^\s*(?:what|which)\s+(?:[a-z\-]+\s+){0,2}?(?!(?:is|was|has|does|this|its|as|us)\b)[a-z\-]{3,}s\s+"
                     r"(?:are|were|do|does|did|can|could|should|have|has|might|may|will|would)\b", re.I)
_LIST = re.compile(r"\b(?:including|such\s+as|like|namely|e\.g\.|for\s+example|for\s+instance)\s+([^.;:!?]*?,[^.;:!?]*)", re.I)
# False: no "list" kind (README, "Numbers": on its own it changes little on any set; it keeps a
# seed question right once sentence coverage weighs more, Settings.w_cover_passage)
LIST_KIND = True

_NUMBER = re.compile(
    r"\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|"
    r"sixty|seventy|eighty|ninety|hundreds?|thousands?|millions?|billions?|dozens?|half|once|twice|"
    r"single|double|triple|several)\b",
    re.I,
)
_DATE = re.compile(
    r"\b(?:1[0-9]{3}|20[0-9]{2})s?\b|\b(?:January|February|March|April|May|June|July|August|September|October|"
    r"November|December|spring|summer|autumn|fall|winter|century|centuries|decade|BC|AD)\b|"
    r"\b(?:yesterday|today|ago|since|until|during|after|before)\b",
)
_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][\w'’\-]+")
_WORD = re.compile(r"\w+")
# question-word kinds, in the order they are tested
KINDS = ("number", "when", "who", "where", "list")


def kind(question: str) -> str | None:
    """The kind of answer a question wants: 'number', 'when', 'who', 'where', 'list' (with LIST_KIND), or None."""
    if _NUMBER_Q.search(question):
        return "number"
    if _WHEN_Q.search(question):
        return "when"
    if _WHO_Q.search(question):
        return "who"
    if _WHERE_Q.search(question):
        return "where"
    if LIST_KIND and _LIST_Q.search(question):
        return "list"
    return None


def holds(sentence: str, want: str | None, question_words: frozenset[str]) -> bool:
    """Does the sentence hold an answer of the wanted kind that the question does not already say?"""
    return want is not None and any_new(candidates(sentence, want), question_words)


def any_new(found: tuple[str, ...], question_words: frozenset[str]) -> bool:
    """Is one of a sentence's `candidates` something the question does not already say?"""
    return any(m not in question_words for m in found)


def candidates(sentence: str, want: str) -> tuple[str, ...]:
    """The sentence's possible answers of kind `want`, lower-cased: numbers, dates, (who / where)
    capitalised words other than the sentence's first, or (list) the words of a comma list after
    "including", "such as" and the like. They depend on the sentence alone,
    so a caller may remember them per sentence."""
    if want == "list":
        return tuple(w.lower() for m in _LIST.finditer(sentence) for w in _WORD.findall(m.group(1)))
    pattern = _NUMBER if want == "number" else _DATE if want == "when" else _CAPITALISED
    return tuple(m.group(0).lower() for m in pattern.finditer(sentence))


def question_words(question: str) -> frozenset[str]:
    return frozenset(w.lower() for w in _WORD.findall(question))

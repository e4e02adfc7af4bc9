"""Document -> passages of a few sentences, and sentences, each with offsets in the clean text.

Passages follow the article's structure: a heading ("Pain and Recovery:") or a lead-in ending
in ':' stays with the items under it, list items are never cut, long paragraphs are split at
sentence boundaries into windows of about `target_words`. Ids hash the content, so a passage
that did not change keeps its id across reindexes.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from .documents import _LIST_ITEM as _LIST_MARKER
from .documents import Document, _is_list_item, _looks_like_heading


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    heading: bool = False  # a heading line: context, not an answer


@dataclass
class Passage:
    id: str
    doc_id: str
    start: int
    end: int
    text: str
    sentences: list[Sentence]
    heading: str = ""  # the section heading(s) above or in the passage, for context

    def words(self) -> int:
        return len(self.text.split())


@dataclass
class _Block:
    start: int
    end: int
    text: str
    kind: str  # "heading" | "lead" | "item" | "para"
    sentences: list[Sentence] = field(default_factory=list)


_ABBREV = {
    "vs", "e.g", "i.e", "etc", "dr", "mr", "mrs", "ms", "st", "no", "approx", "inc", "ltd", "jr", "sr",
    "u.s", "u.k", "a.m", "p.m", "fig", "al", "cf", "vol", "ca", "mt", "ft", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "prof", "gen", "col", "lt", "sgt", "rev",
}
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")


def split_sentences(text: str, offset: int = 0) -> list[tuple[int, int]]:
    """Sentence spans in `text` (shifted by `offset`); abbreviations and initials do not split."""
    spans = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        before = text[start : m.start() + 1]
        last = re.search(r"([\w.]+)[.!?…]*$", before)
        word = (last.group(1) if last else "").rstrip(".").lower()
        if text[m.start()] == "." and (word in _ABBREV or (len(word) == 1 and word.isalpha())):
            continue
        end = m.end()
        sent_end = len(text[:end].rstrip())
        if text[start:sent_end].strip():
            spans.append((offset + start, offset + sent_end))
        start = end
    if text[start:].strip():
        spans.append((offset + start, offset + len(text.rstrip())))
    return spans


def _blocks(doc: Document) -> list[_Block]:
    blocks = []
    pos = 0
    for line in doc.text.split("\n"):
        start, end = pos, pos + len(line)
        pos = end + 1
        if not line.strip():
            continue
        if _is_list_item(line):
            kind = "item"
        elif _looks_like_heading(line):
            kind = "heading"
        elif line.rstrip().endswith(":") and len(line.split()) <= 40:
            kind = "lead"
        else:
            kind = "para"
        if kind == "heading":
            sents = [Sentence(start, end, heading=True)]
        else:
            marker = _LIST_MARKER.match(line) if kind == "item" else None
            skip = marker.end() if marker else 0
            spans = split_sentences(line[skip:], start + skip) or [(start, end)]
            spans[0] = (start, spans[0][1])  # the list marker belongs to the first sentence
            sents = [Sentence(s, e) for s, e in spans]
        blocks.append(_Block(start, end, line, kind, sents))
    return blocks


def _windows(sents: list[Sentence], text: str, target: int, max_words: int) -> list[list[Sentence]]:
    """Split a long run of sentences into about-equal windows of roughly `target` words,
    none over `max_words` (unless one sentence alone is longer)."""
    counts = [len(text[s.start : s.end].split()) for s in sents]
    total = sum(counts)
    n = max(1, round(total / target), -(-total // max_words))
    if n == 1:
        return [sents]
    per = total / n
    out: list[list[Sentence]] = []
    cur: list[Sentence] = []
    acc = cur_words = 0
    for s, c in zip(sents, counts):
        if cur and (acc + c / 2 > (len(out) + 1) * per or cur_words + c > max_words):
            out.append(cur)
            cur, cur_words = [], 0
        cur.append(s)
        acc += c
        cur_words += c
    if cur:
        out.append(cur)
    return out


def passage_id(doc_id: str, text: str) -> str:
    return hashlib.sha1(f"{doc_id}\x00{text}".encode("utf-8")).hexdigest()[:16]


def chunk(doc: Document, target_words: int = 70, max_words: int = 120) -> list[Passage]:
    """Passages of one document, in reading order."""
    text = doc.text

    def nwords(sents: list[Sentence]) -> int:
        return sum(len(text[s.start : s.end].split()) for s in sents)

    # 1. units: indivisible runs of sentences. Headings and lead-ins attach to what follows.
    units: list[tuple[list[Sentence], bool, bool, str]] = []  # sentences, new section, is item, heading
    pending: list[Sentence] = []
    heading = ""
    prev_kind = ""
    for b in _blocks(doc):
        if b.kind in ("heading", "lead"):
            pending += b.sentences
            if b.kind == "heading":
                heading = f"{heading} {b.text}".strip() if prev_kind == "heading" else b.text
            prev_kind = b.kind
            continue
        prev_kind = b.kind
        long_para = b.kind == "para" and len(b.text.split()) > max_words
        groups = _windows(b.sentences, text, target_words, max_words) if long_para else [b.sentences]
        for g in groups:
            units.append((pending + g, bool(pending), b.kind == "item", heading))
            pending = []
    if any(not x.heading for x in pending):
        # a closing lead-in ("...the law:") with nothing after it is still text worth finding
        units.append((pending, True, False, heading))
    # bare headings left pending at the end have nothing under them: no passage

    # 2. a heading's list stays whole when it fits: its items become one unit
    merged: list[tuple[list[Sentence], bool, bool, str]] = []
    for u in units:
        sents, new_section, is_item, head = u
        if is_item and not new_section and merged and merged[-1][2] and merged[-1][3] == head:
            prev = merged[-1]
            if nwords(prev[0]) + nwords(sents) <= max_words:
                merged[-1] = (prev[0] + sents, prev[1], True, head)
                continue
        merged.append(u)

    # 3. pack greedily: a heading starts a passage; a passage closes once it reaches
    #    target_words or the next unit would take it past max_words. Decisions are local, so
    #    editing one paragraph leaves the passages after it (and their ids) alone.
    passages: list[Passage] = []
    cur: list[Sentence] = []
    cur_words = 0
    cur_heading = ""
    for sents, new_section, _is_item, head in merged:
        size = nwords(sents)
        if cur and (new_section or cur_words >= target_words or cur_words + size > max_words):
            passages.append(_make(doc, cur, cur_heading))
            cur, cur_words = [], 0
        if not cur:
            cur_heading = head
        cur = cur + sents
        cur_words += size
    if cur:
        passages.append(_make(doc, cur, cur_heading))
    return passages


def _make(doc: Document, sents: list[Sentence], heading: str) -> Passage:
    start, end = sents[0].start, sents[-1].end
    body = doc.text[start:end]
    return Passage(
        id=passage_id(doc.doc_id, body),
        doc_id=doc.doc_id,
        start=start,
        end=end,
        text=body,
        sentences=list(sents),
        heading=heading,
    )

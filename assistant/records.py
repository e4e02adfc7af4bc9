"""Article and passage records of a generation, read as they are needed and carried over by link.

Format 5 (index.py) keeps them as:

    articles-<stamp>.rec     segments of binary article records (layout below). Written once,
                             never changed: the next generation links the segments it still uses
                             and writes only the new and changed articles' records.
    articles.json            the generation's table: doc ids (sorted), path, sha256, passage count,
                             and where each record is (segment, byte offset, length).
    passage_doc.npy          passage row -> article number in the table (int32)
    passage_pos.npy          passage row -> its position among its article's passages (int32)
    sentence_heading.npy     sentence row -> is a heading line (bool)

One record (little-endian, 8-byte aligned; offsets inside it are relative, so a record is copied
as bytes when segments are rewritten):

    header      magic b"AR5\\0", meta length, passages, sentences, text length in bytes (uint32)
    meta        JSON: {"doc": the DocRecord without its text, "ids": passage ids, "headings": ...}
    passages    int32 [passages, 5]: char start, char end, byte start, byte end, first sentence
    sentences   int32 [sentences, 5]: char start, char end, byte start, byte end, heading
    text        the article's text, UTF-8

Why: a question reads the sentences and passages of a few dozen to a few hundred articles it
has not read before (its candidates' sentences for definitions and answer kinds, its hits for
de-duplication and the answer). Format 4 stored each article as one JSON line with its text and
its layout as nested lists, and json.loads of the whole line (~0.18 ms) was most of a cold
question's tail. Here a sentence's text is decoded from its own bytes and the layout is two small
arrays; the meta JSON (title, path, ...) is parsed only when a DocRecord is asked for.

Format-4 segments (`articles-<stamp>.jsonl`, one JSON line per article: {"doc": record with
text, "passages": [[id, start, end, heading, [[start, end, heading], ...]], ...]}) are still
read; the next reindex writes their articles again as binary records.

A reindex reads the table (ids, paths, hashes: no text) and the arrays; a one-article change
writes one short segment, the table and the arrays. A process holds no Python object per
passage. Once the segments hold as many bytes of replaced articles as of live ones they are
rewritten into one.
"""
from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .chunking import Passage, Sentence

TABLE = "articles.json"
PASSAGE_DOC, PASSAGE_POS, SENTENCE_HEADING = "passage_doc.npy", "passage_pos.npy", "sentence_heading.npy"
SEGMENT_PREFIX = "articles-"
SEGMENT_SUFFIX = ".rec"  # binary records (format 5)
JSON_SUFFIX = ".jsonl"  # JSON-line records (format 4): read, and converted by the next reindex
CACHE_RECORDS = 4096  # parsed article records kept per loaded generation
CACHE_PASSAGES = 16384  # Passage objects kept per loaded generation
REWRITE_DEAD_SHARE = 0.5  # segments are rewritten once this share of their bytes is replaced articles
MAGIC = b"AR5\0"
_HEAD = struct.Struct("<4sIIII")  # magic, meta bytes, passages, sentences, text bytes
_COLS = 5  # int32 columns of the passage and sentence arrays


@dataclass
class DocMeta:
    """What a reindex compares a file with, without the article's text."""

    doc_id: str
    path: str
    sha256: str
    n_passages: int


def _pad(n: int, to: int) -> int:
    return -n % to


def encode_record(doc, passages: list[Passage]) -> bytes:
    """One article as a binary record (layout in the module docstring), padded to 8 bytes."""
    text = doc.text
    raw = text.encode("utf-8")
    if len(raw) == len(text):  # ASCII: byte offsets are the character offsets
        at = None
    else:  # byte offset of each character offset: cumulative UTF-8 widths
        cp = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        width = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
        at = np.concatenate([np.zeros(1, np.int64), np.cumsum(width)])

    def b(c: int) -> int:
        return c if at is None else int(at[c])

    prow, srow = [], []
    for p in passages:
        prow.append((p.start, p.end, b(p.start), b(p.end), len(srow)))
        srow.extend((s.start, s.end, b(s.start), b(s.end), int(s.heading)) for s in p.sentences)
    fields = {k: v for k, v in doc.__dict__.items() if k != "text"}
    meta = json.dumps({"doc": fields, "ids": [p.id for p in passages], "headings": [p.heading for p in passages]},
                      ensure_ascii=False).encode("utf-8")
    parts = [_HEAD.pack(MAGIC, len(meta), len(prow), len(srow), len(raw)), meta, b"\0" * _pad(len(meta), 4),
             np.asarray(prow, dtype="<i4").reshape(-1, _COLS).tobytes(),
             np.asarray(srow, dtype="<i4").reshape(-1, _COLS).tobytes(), raw]
    n = sum(len(x) for x in parts)
    parts.append(b"\0" * _pad(n, 8))
    return b"".join(parts)


_DocRecord = None


def _doc_record(fields: dict):
    global _DocRecord
    if _DocRecord is None:  # index.py imports this module
        from .index import DocRecord as _DocRecord
    return _DocRecord(**fields)


_NATIVE = sys.byteorder == "little"


class _Binary:
    """A format-5 record in a mapped segment: the header read now, the layout (a flat int32 view,
    no Python list made) when a passage or sentence is asked for, the meta JSON when a passage or
    the DocRecord is, the whole text only for the DocRecord."""

    __slots__ = ("buf", "at", "n_meta", "n_p", "n_s", "n_text", "_lay", "_text_at", "_layout", "_meta", "_doc")

    def __init__(self, buf, at: int) -> None:
        magic, self.n_meta, self.n_p, self.n_s, self.n_text = _HEAD.unpack_from(buf, at)
        if magic != MAGIC:
            raise ValueError(f"not an article record at byte {at} (the index is damaged: reindex it)")
        self.buf, self.at = buf, at
        self._lay = at + _HEAD.size + self.n_meta + _pad(self.n_meta, 4)
        self._text_at = self._lay + 4 * _COLS * (self.n_p + self.n_s)
        self._layout = self._meta = self._doc = None

    def layout(self):
        """passages then sentences, _COLS ints each: row k, column c at [k * _COLS + c]."""
        if self._layout is None:
            raw = self.buf[self._lay : self._text_at]
            self._layout = memoryview(raw).cast("i") if _NATIVE else np.frombuffer(raw, "<i4").tolist()
        return self._layout

    def meta(self) -> dict:
        if self._meta is None:
            m = self.at + _HEAD.size
            self._meta = json.loads(self.buf[m : m + self.n_meta])
        return self._meta

    def doc(self):
        if self._doc is None:
            t = self._text_at
            self._doc = _doc_record({**self.meta()["doc"], "text": self.buf[t : t + self.n_text].decode("utf-8")})
        return self._doc

    def _text(self, b0: int, b1: int) -> str:
        t = self._text_at
        return self.buf[t + b0 : t + b1].decode("utf-8")

    def passage(self, pos: int) -> Passage:
        lay, k = self.layout(), pos * _COLS
        c0, c1, b0, b1, first = lay[k : k + _COLS]
        last = lay[k + _COLS + 4] if pos + 1 < self.n_p else self.n_s
        meta = self.meta()
        text = self._doc.text[c0:c1] if self._doc is not None else self._text(b0, b1)
        s0 = (self.n_p + first) * _COLS
        return Passage(id=meta["ids"][pos], doc_id=meta["doc"]["doc_id"], start=c0, end=c1, text=text,
                       sentences=[Sentence(lay[x], lay[x + 1], bool(lay[x + 4]))
                                  for x in range(s0, s0 + (last - first) * _COLS, _COLS)],
                       heading=meta["headings"][pos])

    def sentence_text(self, pos: int, j: int) -> str:
        lay = self.layout()
        x = (self.n_p + lay[pos * _COLS + 4] + j) * _COLS
        if self._doc is not None:
            return self._doc.text[lay[x] : lay[x + 1]]
        return self._text(lay[x + 2], lay[x + 3])

    def passages(self) -> list[Passage]:
        return [self.passage(i) for i in range(self.n_p)]

    def end(self) -> int:
        """Where the record ends (its padding included): the next one starts there."""
        e = self._text_at + self.n_text
        return e + _pad(e - self.at, 8)


class _Parsed:
    """A record held as objects: a format-4 JSON line (parsed whole), or a new article in memory."""

    __slots__ = ("_doc", "_passages")

    def __init__(self, doc, passages: list) -> None:
        self._doc, self._passages = doc, passages

    @classmethod
    def from_json(cls, line: bytes) -> "_Parsed":
        d = json.loads(line)
        return cls(_doc_record(d["doc"]), d["passages"])

    def doc(self):
        return self._doc

    def passage(self, pos: int) -> Passage:
        x = self._passages[pos]
        if isinstance(x, Passage):
            return x
        pid, start, end, heading, sents = x
        return Passage(id=pid, doc_id=self._doc.doc_id, start=start, end=end, text=self._doc.text[start:end],
                       sentences=[Sentence(s, e, bool(h)) for s, e, h in sents], heading=heading)

    def sentence_text(self, pos: int, j: int) -> str:
        x = self._passages[pos]
        s, e = (x.sentences[j].start, x.sentences[j].end) if isinstance(x, Passage) else x[4][j][:2]
        return self._doc.text[s:e]

    def passages(self) -> list[Passage]:
        return [self.passage(i) for i in range(len(self._passages))]


def iter_segment(path: Path):
    """(DocRecord, [Passage]) of each record of one segment file, in file order (tests, checks)."""
    path = Path(path)
    if path.name.endswith(JSON_SUFFIX):
        for line in path.read_bytes().splitlines():
            if line.strip():
                e = _Parsed.from_json(line)
                yield e.doc(), e.passages()
        return
    buf = path.read_bytes()
    at = 0
    while at < len(buf):
        e = _Binary(buf, at)
        yield e.doc(), e.passages()
        at = e.end()


class DocTable(Mapping):
    """doc_id -> DocRecord, in doc_id order; records parsed on access (a small cache of them).

    An entry is either on disk (segment, offset, length) or in memory (a new or changed article:
    its record and passages, written to a new segment by `save`)."""

    def __init__(self, ids: list[str], paths: list[str], shas: list[str], n_passages: list[int],
                 where: list[tuple], segments: dict[str, Path]) -> None:
        self.ids, self.paths, self.shas, self.n_passages = ids, paths, shas, n_passages
        self.where = where  # per doc: (segment name, offset, length) or ("", record, passages)
        self.segments = segments  # segment name -> file
        self._number = {d: i for i, d in enumerate(ids)}
        self._maps: dict[str, mmap.mmap] = {}
        self._cache: OrderedDict[int, _Binary | _Parsed] = OrderedDict()
        self._lock = threading.Lock()

    # --- reading ---
    @classmethod
    def load(cls, gen: Path) -> "DocTable":
        t = json.loads((Path(gen) / TABLE).read_text(encoding="utf-8"))
        segs = t["segments"]
        where = [(segs[s], o, n) for s, o, n in zip(t["segment"], t["offset"], t["length"])]
        table = cls(t["ids"], t["path"], t["sha256"], t["n_passages"], where, {s: Path(gen) / s for s in segs})
        for s in segs:  # mapped now: a server still answering from a pruned generation keeps its records
            table._map(s)
        return table

    def _map(self, seg: str) -> mmap.mmap:
        with self._lock:
            m = self._maps.get(seg)
            if m is None:
                with open(self.segments[seg], "rb") as fh:
                    m = self._maps[seg] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            return m

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return iter(self.ids)

    def __contains__(self, doc_id) -> bool:
        return doc_id in self._number

    def number(self, doc_id: str) -> int | None:
        return self._number.get(doc_id)

    def meta(self, doc_id: str) -> DocMeta | None:
        i = self._number.get(doc_id)
        return None if i is None else DocMeta(doc_id, self.paths[i], self.shas[i], self.n_passages[i])

    def _entry(self, i: int) -> _Binary | _Parsed:
        """Article number i's record, not cached (a reindex converting a whole generation)."""
        seg, a, b = self.where[i]
        if seg == "":
            return _Parsed(a, b)
        if seg.endswith(JSON_SUFFIX):
            return _Parsed.from_json(self._map(seg)[a : a + b])
        return _Binary(self._map(seg), a)

    def _parsed(self, i: int) -> _Binary | _Parsed:
        """Article number i's record, through the cache (several threads serve questions)."""
        with self._lock:
            got = self._cache.get(i)
            if got is not None:
                self._cache.move_to_end(i)
                return got
        got = self._entry(i)
        with self._lock:
            self._cache[i] = got
            if len(self._cache) > CACHE_RECORDS:
                self._cache.popitem(last=False)
        return got

    def record(self, i: int):
        return self._parsed(i).doc()

    def __getitem__(self, doc_id: str):
        i = self._number.get(doc_id)
        if i is None:
            raise KeyError(doc_id)
        return self._parsed(i).doc()

    def passage(self, i: int, pos: int) -> Passage:
        return self._parsed(i).passage(pos)

    def sentence_text(self, i: int, pos: int, j: int) -> str:
        """Sentence j of passage `pos` of article i, decoded from its own bytes (no DocRecord made)."""
        return self._parsed(i).sentence_text(pos, j)

    # --- the next generation ---
    def moved(self, folder: Path) -> None:
        """The generation folder was renamed (written as a temporary folder, then published)."""
        self.segments = {s: Path(folder) / s for s in self.segments if (Path(folder) / s).exists()}
        self._maps = {}

    @classmethod
    def from_records(cls, docs: dict, passages_of: dict[str, list[Passage]]) -> "DocTable":
        ids = sorted(docs)
        return cls(ids, [docs[d].path for d in ids], [docs[d].sha256 for d in ids],
                   [len(passages_of.get(d, ())) for d in ids],
                   [("", docs[d], passages_of.get(d, [])) for d in ids], {})

    def derive(self, kept: list[str], new: dict, passages_of: dict[str, list[Passage]]) -> "DocTable":
        """The kept articles (still where they are) and the new ones (in memory), in doc_id order."""
        rows = [(d, self._number[d]) for d in kept] + [(d, None) for d in new]
        rows.sort()
        ids, paths, shas, counts, where = [], [], [], [], []
        for d, i in rows:
            ids.append(d)
            if i is None:
                r = new[d]
                paths.append(r.path), shas.append(r.sha256), counts.append(len(passages_of.get(d, ())))
                where.append(("", r, passages_of.get(d, [])))
            else:
                paths.append(self.paths[i]), shas.append(self.shas[i]), counts.append(self.n_passages[i])
                where.append(self.where[i])
        return DocTable(ids, paths, shas, counts, where, dict(self.segments))

    def save(self, folder: Path, stamp: str) -> None:
        """Link the segments still used, write the in-memory articles as a new one (or, once
        replaced articles fill half the segments' bytes, every article into one), then the table.
        Articles in format-4 segments are written again, as binary records, into the new one."""
        folder = Path(folder)
        used = {w[0] for w in self.where if w[0]}
        live = sum(w[2] for w in self.where if w[0])
        total = sum(self.segments[s].stat().st_size for s in used)
        rewrite = bool(used) and (total - live) > REWRITE_DEAD_SHARE * max(total, 1)
        name = f"{SEGMENT_PREFIX}{stamp}{SEGMENT_SUFFIX}"
        todo = [i for i, w in enumerate(self.where) if rewrite or not w[0] or w[0].endswith(JSON_SUFFIX)]
        if todo:
            off = 0
            with open(folder / name, "wb") as fh:
                for i in todo:
                    seg, a, n = self.where[i]
                    if seg and not seg.endswith(JSON_SUFFIX):
                        rec = bytes(self._map(seg)[a : a + n])  # copied as bytes: offsets are relative
                    else:
                        e = self._entry(i)
                        rec = encode_record(e.doc(), e.passages())
                    fh.write(rec)
                    self.where[i] = (name, off, len(rec))
                    off += len(rec)
            self.segments[name] = folder / name
        for s in sorted({w[0] for w in self.where} - {name}):
            src = self.segments[s]
            try:
                os.link(src, folder / s)
            except OSError:
                shutil.copyfile(src, folder / s)
            self.segments[s] = folder / s
        self._cache.clear()
        self._maps = {}
        segs = sorted({w[0] for w in self.where})
        at = {s: i for i, s in enumerate(segs)}
        (folder / TABLE).write_text(json.dumps({
            "segments": segs, "ids": self.ids, "path": self.paths, "sha256": self.shas, "n_passages": self.n_passages,
            "segment": [at[w[0]] for w in self.where], "offset": [w[1] for w in self.where],
            "length": [w[2] for w in self.where]}, ensure_ascii=False), encoding="utf-8")


class PassageTable(Sequence):
    """Passage rows of a generation (row -> article number and position in its article), each
    Passage made when read. Iterating reads every article: only a full build does that."""

    def __init__(self, docs: DocTable, doc_of: np.ndarray, pos: np.ndarray, sentence_heading: np.ndarray) -> None:
        self.docs, self.doc_of, self.pos = docs, doc_of, pos
        self.sentence_heading = sentence_heading
        # the Passages read lately, by row: a question reads the same few passages many times
        # (every sentence's text goes through its passage)
        self._made: OrderedDict[int, Passage] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, gen: Path, docs: DocTable) -> "PassageTable":
        gen = Path(gen)
        def mapped(name: str) -> np.ndarray:  # a plain view: indexing an np.memmap costs ~4 us in bookkeeping
            return np.load(gen / name, mmap_mode="r", allow_pickle=False).view(np.ndarray)

        return cls(docs, mapped(PASSAGE_DOC), mapped(PASSAGE_POS), mapped(SENTENCE_HEADING))

    def __len__(self) -> int:
        return len(self.doc_of)

    def __getitem__(self, r):
        if isinstance(r, slice):
            return [self[i] for i in range(*r.indices(len(self)))]
        r = int(r)
        if r < 0:
            r += len(self)
        if not 0 <= r < len(self):
            raise IndexError(r)
        with self._lock:
            p = self._made.get(r)
            if p is not None:
                self._made.move_to_end(r)
                return p
        p = self.docs.passage(int(self.doc_of[r]), int(self.pos[r]))
        with self._lock:
            self._made[r] = p
            if len(self._made) > CACHE_PASSAGES:
                self._made.popitem(last=False)
        return p

    def sentence_text(self, r: int, j: int) -> str:
        """Sentence j of passage row r, from the record's bytes: the candidates' sentences a
        question reads (definitions, answer kinds) need no Passage made."""
        return self.docs.sentence_text(int(self.doc_of[r]), int(self.pos[r]), j)

    def rows_of(self, doc_id: str) -> np.ndarray:
        i = self.docs.number(doc_id)
        return np.zeros(0, np.int64) if i is None else np.flatnonzero(np.asarray(self.doc_of) == i)

    def doc_ids(self, rows: np.ndarray) -> list[str]:
        ids = self.docs.ids
        return [ids[i] for i in np.asarray(self.doc_of)[rows].tolist()]

    @classmethod
    def build(cls, docs: DocTable, kept_doc_of: np.ndarray, kept_pos: np.ndarray, kept_heading: np.ndarray,
              new: list[Passage]) -> "PassageTable":
        """Kept rows (article numbers already those of `docs`), then `new` (their articles are
        in memory in `docs`, in the same order)."""
        pos_of: dict[str, int] = {}
        nd = np.fromiter((docs.number(p.doc_id) for p in new), dtype=np.int64, count=len(new))
        npos = np.fromiter(((pos_of.__setitem__(p.doc_id, pos_of.get(p.doc_id, -1) + 1) or pos_of[p.doc_id])
                            for p in new), dtype=np.int64, count=len(new))
        heading = np.fromiter((s.heading for p in new for s in p.sentences), dtype=bool)
        return cls(docs, np.concatenate([np.asarray(kept_doc_of, np.int64), nd]).astype(np.int32),
                   np.concatenate([np.asarray(kept_pos, np.int64), npos]).astype(np.int32),
                   np.concatenate([np.asarray(kept_heading, bool), heading]))

    @classmethod
    def from_list(cls, docs: DocTable, passages: list[Passage]) -> "PassageTable":
        return cls.build(docs, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, bool), passages)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        np.save(folder / PASSAGE_DOC, np.asarray(self.doc_of, dtype=np.int32), allow_pickle=False)
        np.save(folder / PASSAGE_POS, np.asarray(self.pos, dtype=np.int32), allow_pickle=False)
        np.save(folder / SENTENCE_HEADING, np.asarray(self.sentence_heading, dtype=bool), allow_pickle=False)

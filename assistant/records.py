"""Article and passage records of a generation, read as they are needed and carried over by link.

Format 4 (index.py) keeps them as:

    articles-<stamp>.jsonl   segments, one JSON line per article: its record (text included) and
                             its passages' layout [id, start, end, heading, [[start, end, heading], ...]].
                             Written once, never changed: the next generation links the segments
                             it still uses and writes only the new and changed articles' lines.
    articles.json            the generation's table: doc ids (sorted), path, sha256, passage count,
                             and where each record is (segment, byte offset, length).
    passage_doc.npy          passage row -> article number in the table (int32)
    passage_pos.npy          passage row -> its position among its article's passages (int32)
    sentence_heading.npy     sentence row -> is a heading line (bool)

A reindex reads the table (ids, paths, hashes: no text) and the arrays; a one-article change
writes one short segment, the table and the arrays. A record is parsed when a question (or the
reindex, for the few passages it re-examines) reads it; a process holds no Python object per
passage. Once the segments hold as many bytes of replaced articles as of live ones they are
rewritten into one.
"""
from __future__ import annotations

import json
import mmap
import os
import shutil
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
CACHE_RECORDS = 4096  # parsed article records kept per loaded generation
CACHE_PASSAGES = 16384  # Passage objects kept per loaded generation
REWRITE_DEAD_SHARE = 0.5  # segments are rewritten once this share of their bytes is replaced articles


@dataclass
class DocMeta:
    """What a reindex compares a file with, without the article's text."""

    doc_id: str
    path: str
    sha256: str
    n_passages: int


def _record_line(doc, passages: list[Passage]) -> bytes:
    return (json.dumps({"doc": doc.__dict__, "passages": [
        [p.id, p.start, p.end, p.heading, [[s.start, s.end, int(s.heading)] for s in p.sentences]] for p in passages
    ]}, ensure_ascii=False) + "\n").encode("utf-8")


class DocTable(Mapping):
    """doc_id -> DocRecord, in doc_id order; records parsed on access (a small cache of them).

    An entry is either on disk (segment, offset, length) or in memory (a new or changed article:
    its record and passages, written to a new segment by `save`)."""

    def __init__(self, ids: list[str], paths: list[str], shas: list[str], n_passages: list[int],
                 where: list[tuple] , segments: dict[str, Path]) -> None:
        self.ids, self.paths, self.shas, self.n_passages = ids, paths, shas, n_passages
        self.where = where  # per doc: (segment name, offset, length) or ("", record, passages)
        self.segments = segments  # segment name -> file
        self._number = {d: i for i, d in enumerate(ids)}
        self._maps: dict[str, mmap.mmap] = {}
        self._cache: OrderedDict[int, tuple] = OrderedDict()
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

    def _parsed(self, i: int) -> tuple:
        """(DocRecord, passage layouts) of article number i."""
        with self._lock:  # served by several threads
            got = self._cache.get(i)
            if got is not None:
                self._cache.move_to_end(i)
                return got
        seg, a, b = self.where[i]
        if seg == "":
            got = (a, b)
        else:
            d = json.loads(self._map(seg)[a : a + b])
            from .index import DocRecord

            got = (DocRecord(**d["doc"]), d["passages"])
        with self._lock:
            self._cache[i] = got
            if len(self._cache) > CACHE_RECORDS:
                self._cache.popitem(last=False)
        return got

    def record(self, i: int):
        return self._parsed(i)[0]

    def __getitem__(self, doc_id: str):
        i = self._number.get(doc_id)
        if i is None:
            raise KeyError(doc_id)
        return self._parsed(i)[0]

    def passage(self, i: int, pos: int) -> Passage:
        doc, layouts = self._parsed(i)
        x = layouts[pos]
        if isinstance(x, Passage):
            return x
        pid, start, end, heading, sents = x
        return Passage(id=pid, doc_id=doc.doc_id, start=start, end=end, text=doc.text[start:end],
                       sentences=[Sentence(s, e, bool(h)) for s, e, h in sents], heading=heading)

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
        replaced articles fill half the segments' bytes, every article into one), then the table."""
        folder = Path(folder)
        used = {w[0] for w in self.where if w[0]}
        live = sum(w[2] for w in self.where if w[0])
        total = sum(self.segments[s].stat().st_size for s in used)
        rewrite = bool(used) and (total - live) > REWRITE_DEAD_SHARE * max(total, 1)
        name = f"{SEGMENT_PREFIX}{stamp}.jsonl"
        todo = [i for i, w in enumerate(self.where) if rewrite or not w[0]]
        if todo:
            off = 0
            with open(folder / name, "wb") as fh:
                for i in todo:
                    seg, a, b = self.where[i]
                    if seg:
                        doc, layouts = self._parsed(i)
                        line = (json.dumps({"doc": doc.__dict__, "passages": layouts}, ensure_ascii=False)
                                + "\n").encode("utf-8")
                    else:
                        line = _record_line(a, b)
                    fh.write(line)
                    self.where[i] = (name, off, len(line))
                    off += len(line)
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
        return cls(docs, np.load(gen / PASSAGE_DOC, mmap_mode="r", allow_pickle=False),
                   np.load(gen / PASSAGE_POS, mmap_mode="r", allow_pickle=False),
                   np.load(gen / SENTENCE_HEADING, mmap_mode="r", allow_pickle=False))

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

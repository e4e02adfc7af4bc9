"""Benchmark: what a question, a build and memory cost as the library grows (issue 11).

    python tests/bench_scale.py --passages N [--json] [--questions 240] [--workdir DIR]
    python tests/bench_scale.py --plot OUT.png [--workdir DIR]     # ask p50 and memory against N
    python tests/bench_scale.py --same-answers ../shared/eval/xquad   # float16 / HNSW / PQ+IVF vs exact float32

What is real and what stands in:
- Text: real. The 240 XQuAD paragraphs are articles of the library as they are; the rest of the
  library is filler articles made of real sentences (of XQuAD and COVID-QA) resampled in random
  order, so BM25, chunking and the index see real English at every size.
- Questions: real XQuAD questions, whose answering paragraphs are in the library.
- Vectors: the XQuAD articles (and the article added at the end) are embedded by the real model.
  A filler text gets a stand-in that keeps the real geometry: the real MiniLM vector of each of
  its sentences (embedded once, cached in the workdir), summed, perturbed (cosine ~0.95 to the
  unperturbed vector) and renormalised. Build times therefore leave the model out.
- Build rate ratio: the real model, in the same run. On a sample of the library's own texts,
  the model's own batch speed (`SentenceTransformer.encode`, batch 64) against the build path
  (reindex's windowed, length-sorted `_embed`, plus the build's measured non-model time per text).
- Everything else is the project's own code: `Assistant.reindex`, `Assistant.open`, `Assistant.ask`.

Asked in a separate process (so its resident memory is that of a server that loaded the index
and answered): first question after start, ask p50/p99 over the questions (query encode
included), RSS, candidate recall (the share of the exact top-k of each dense search that the
store returns: 50 passages, 100 sentences) and top-1 agreement (the top answer with the stores
searched exactly instead). Then one article is added (`add_one_s`) and one question asked.

A library already built in the workdir (`library.json` names its size) is reused: running the
same command again measures only the serving phases (asking, then adding, changing and removing
one article), in minutes instead of the build's quarter of an hour or more. An index of an older
format is converted by the first reindex, which the add-one figure would then include: convert it
first (add a file, `--reindex-child --workdir DIR/nN`, remove it, again).

Prints figures; with --json the last line is one JSON object. Timings are noisy on a shared
2-core machine: compare figures of one run. Results are kept in the workdir for --plot.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EVAL = REPO.parent / "shared" / "eval"
if not EVAL.is_dir():
    EVAL = Path("/work/shared/eval")

import numpy as np  # noqa: E402

log = logging.getLogger("bench_scale")
NOISE = 0.33  # norm of the perturbation of a unit vector: cosine ~0.95 to the original
WORDS_PER_PASSAGE = 95  # what the chunker makes of filler paragraphs, about (the real count is printed)
GENERATOR = 1
_FILLER_TITLE = re.compile(r"(?:Reading Notes \d+\s*)+")


# --- the text side ---------------------------------------------------------------------------

def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def source_sentences() -> list[str]:
    """Real sentences of XQuAD and COVID-QA that the chunker also reads as one sentence each."""
    from assistant.chunking import split_sentences

    out, seen = [], set()
    for name in ("xquad", "covidqa-dev"):
        for d in _jsonl(EVAL / name / "corpus.jsonl"):
            for para in d["text"].split("\n"):
                for a, b in split_sentences(para):
                    s = para[a:b].strip()
                    n = len(s.split())
                    if not 6 <= n <= 60 or s in seen or not s[0].isupper() or not s.endswith((".", "?", "!")):
                        continue
                    if sum(c.isalpha() for c in s) < 0.7 * len(s) or len(split_sentences(s)) != 1:
                        continue
                    seen.add(s)
                    out.append(s)
    return out


def write_library(corpus: Path, n_passages: int, sentences: list[str], seed: int = 11) -> dict:
    """XQuAD paragraphs as articles, then filler articles until about `n_passages` passages."""
    from assistant.evaluation import write_squad_corpus

    corpus.mkdir(parents=True, exist_ok=True)
    xq = _jsonl(EVAL / "xquad" / "corpus.jsonl")
    write_squad_corpus(EVAL / "xquad", corpus / "xquad")  # as `assistant eval --squad` writes them
    rng = random.Random(seed)
    words = sum(len(d["text"].split()) for d in xq)
    target = n_passages * WORDS_PER_PASSAGE
    i = 0
    while words < target:
        paras, w_art = [], 0
        while w_art < 8 * WORDS_PER_PASSAGE:
            para = [rng.choice(sentences) for _ in range(rng.randint(3, 5))]
            paras.append(" ".join(para))
            w_art += sum(len(s.split()) for s in para)
        sub = corpus / f"filler-{i // 1000:04d}"
        sub.mkdir(exist_ok=True)
        (sub / f"notes-{i}.txt").write_text(f"Reading Notes {i}\n" + "\n".join(paras) + "\n", encoding="utf-8")
        words += w_art
        i += 1
    return {"xquad_articles": len(xq), "filler_articles": i}


def questions(n: int, seed: int = 5) -> list[dict]:
    qs = [q for q in _jsonl(EVAL / "xquad" / "questions.jsonl") if not q.get("is_impossible")]
    random.Random(seed).shuffle(qs)
    return qs[:n]


# --- the vector side -------------------------------------------------------------------------

class StandInEmbedder:
    """The real embedder for real articles; for filler texts, perturbed sums of the real vectors
    of their sentences (see the module docstring). Queries always go to the real model."""

    def __init__(self, real, base: dict[str, np.ndarray]) -> None:
        from assistant.chunking import split_sentences

        self.real, self.base, self.dim, self.name = real, base, real.dim, real.name
        self.encoder, self.vector_space = real.encoder, real.vector_space  # what the manifest records
        self._split = split_sentences
        self.real_texts = 0
        self.standin_texts = 0
        noise = np.random.default_rng(17).standard_normal((1 << 16, self.dim)).astype(np.float32)
        self._noise = noise / np.linalg.norm(noise, axis=1, keepdims=True)
        self._k = 0
        self._base_list = list(base.values())
        self.unmatched = 0
        self.known: dict[str, np.ndarray] = {}  # real vectors of earlier runs (the same XQuAD texts)
        self.real_set: set[str] = set()  # what the XQuAD articles embed: always the real model

    def mark_real(self, corpus: Path) -> None:
        """The embed texts of the real articles (read and chunked by the project's code)."""
        from assistant import index as ix
        from assistant.chunking import chunk
        from assistant.config import Settings
        from assistant.documents import read_document

        st = Settings()
        for f in sorted(corpus.rglob("*.md")):
            doc = read_document(f, corpus)
            for p in chunk(doc, st.passage_target_words, st.passage_max_words):
                self.real_set.add(ix.passage_embed_text(p, doc.title, doc.text))
                self.real_set.update(ix.sentence_embed_text(p, x, doc.text) for x in p.sentences)

    def seed_from_index(self, index_dir: Path) -> int:
        """Real vectors of the same texts from an index built by the model (same-answers run)."""
        from assistant import index as ix

        try:
            index = ix.load(index_dir)
        except Exception:
            return 0
        pv, sv = np.asarray(index.passage_vectors, np.float32), np.asarray(index.sent_vectors, np.float32)
        if index.sentence_store.dtype != "float32":
            return 0
        n = 0
        for r, p in enumerate(index.passages):
            d = index.docs[p.doc_id]
            self.known.setdefault(ix.passage_embed_text(p, d.title, d.text), pv[r])
            a, _ = index.sent_rows[r]
            for j, x in enumerate(p.sentences):
                self.known.setdefault(ix.sentence_embed_text(p, x, d.text), sv[a + j])
            n += 1
        return n

    def load_known(self, path: Path) -> None:
        if path.exists():
            data = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            self.known.update(zip(data, np.load(path)))

    def save_known(self, path: Path) -> None:
        path.with_suffix(".json").write_text(json.dumps(list(self.known)), encoding="utf-8")
        np.save(path, np.array(list(self.known.values()), dtype=np.float32).reshape(-1, self.dim))

    def encode_query(self, text: str) -> np.ndarray:
        return self.real.encode_query(text)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.real.encode_queries(texts)

    def _standin(self, text: str) -> np.ndarray | None:
        if text in self.real_set:
            return None
        # a filler text is its title (and its title as section heading), then source sentences
        m = _FILLER_TITLE.match(text)
        body = text[m.end():] if m else text
        v = self.base.get(body) if body else self._noise[(self._k * 7919) % len(self._noise)]
        if v is None:
            vs = [self.base.get(body[a:b].strip()) for a, b in self._split(body)]
            vs = [v for v in vs if v is not None]
            if not vs:
                if "Velmoria" in text:  # the article added at the end: the real model
                    return None
                self.unmatched += 1  # a filler piece the chunker cut unlike the source (0.3%)
                vs = [self._base_list[hash(text) % len(self._base_list)]]
            v = np.sum(vs, axis=0)
        v = v / np.linalg.norm(v)
        noise = self._noise[self._k % len(self._noise)]  # unit noise vectors drawn once (seeded)
        self._k += 1
        v = v + NOISE * noise
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode_passages(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        real = []
        for i, t in enumerate(texts):
            v = self._standin(t)
            if v is None:
                real.append(i)
            else:
                out[i] = v
        todo = [i for i in real if texts[i] not in self.known]
        if todo:
            vecs = self.real.encode_passages([texts[i] for i in todo], batch_size=batch_size)
            self.known.update(zip((texts[i] for i in todo), vecs))
        for i in real:
            out[i] = self.known[texts[i]]
        self.real_texts += len(real)
        self.standin_texts += len(texts) - len(real)
        return out


def base_vectors(real, sentences: list[str], workdir: Path) -> dict[str, np.ndarray]:
    """Real MiniLM vectors of the source sentences, embedded once and cached in the workdir."""
    key = hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:16]
    path = workdir / f"base-{key}.npy"
    if path.exists():
        vecs = np.load(path)
    else:
        log.info("embedding %d source sentences once (cached in %s)", len(sentences), path)
        t = time.perf_counter()
        vecs = real.encode_passages(sentences, batch_size=64, progress=True)
        log.info("  %.0f s", time.perf_counter() - t)
        np.save(path, vecs)
    return dict(zip(sentences, vecs))


def build_rate_ratio(real, texts: list[str], non_model_s_per_text: float) -> dict:
    """The model's own batch speed against the build's embedding path, same texts, same run."""
    from assistant import reindex as rx

    t = time.perf_counter()
    if getattr(real, "encoder", "torch") == "onnx":  # the ONNX session's own batches of 64
        for i in range(0, len(texts), 64):
            real.model.encode(texts[i : i + 64])
    else:
        real.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    model_s = time.perf_counter() - t
    t = time.perf_counter()
    rx._embed(real, texts, progress=False)
    ours_s = time.perf_counter() - t
    per_text_build = ours_s / len(texts) + non_model_s_per_text
    return {"sample_texts": len(texts), "model_texts_per_s": len(texts) / model_s,
            "embed_texts_per_s": len(texts) / ours_s, "build_texts_per_s": 1.0 / per_text_build,
            "build_rate_ratio": (model_s / len(texts)) / per_text_build}


# --- serving (a separate process) ------------------------------------------------------------

def _rss_mb() -> tuple[float, float]:
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)


def _rss_split_mb() -> dict:
    """The process's own memory (RssAnon: Python objects, the HNSW graph, the model) and the
    file pages it has touched (RssFile: memory-mapped index files, shared page cache)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def reindex_child(args) -> dict:
    """`assistant reindex` in a process of its own: model load, reindex time, peak memory."""
    from assistant import Settings
    from assistant.embedder import get_embedder
    from assistant.reindex import reindex

    t = time.perf_counter()
    emb = get_embedder()
    emb.encode_query("warm up")
    load_s = time.perf_counter() - t
    rss_before, _ = _rss_mb()
    tm: dict = {}
    t = time.perf_counter()
    report = reindex(Settings(corpus_dir=args.workdir / "corpus", index_dir=args.workdir / "index"), emb, timings=tm)
    return {"model_load_s": load_s, "reindex_s": time.perf_counter() - t, "phases": tm,
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
            "rss_before_reindex_mb": rss_before, "peak_rss_mb": _rss_mb()[1],
            "changed": report.changed}


def serve(args) -> dict:
    """Open, ask, measure; then add one article. Runs in its own process."""
    from assistant import Assistant, Settings
    from assistant import index as ix

    settings = Settings(corpus_dir=args.workdir / "corpus", index_dir=args.workdir / "index")
    qs = json.loads((args.workdir / "questions.json").read_text())[: args.serve_questions or None]
    t = time.perf_counter()
    a = Assistant.open(settings=settings)
    open_s = time.perf_counter() - t
    rss_open, _ = _rss_mb()
    t = time.perf_counter()
    a.embedder.encode_query("warm up")  # the model loads on first use: a start-up cost of any size
    model_s = time.perf_counter() - t
    t = time.perf_counter()
    first = a.ask(qs[0]["question"])
    first_ms = (time.perf_counter() - t) * 1000
    times, tops = [], []
    for q in qs:
        t = time.perf_counter()
        res = a.ask(q["question"])
        times.append((time.perf_counter() - t) * 1000)
        tops.append(_top(res))
    rss, hwm = _rss_mb()
    split = _rss_split_mb()
    index = a._current().index
    emb = a.embedder
    # candidate recall of the stores (exact top-k by reading every vector as the reference: one
    # pass over each store for all the questions, see ExactReference)
    vecs = np.stack([np.asarray(emb.encode_query(q["question"]), dtype=np.float32).ravel() for q in qs])
    reference = ExactReference([index.passage_store, index.sentence_store], vecs)
    recalls = []
    for v in vecs:
        for store, k in ((index.passage_store, 50), (index.sentence_store, 100)):
            got = set(store.search(v, k)[0].tolist())
            want = reference.search(store, v, k)[0].tolist()
            recalls.append(len(got & set(want)) / max(1, len(want)))
    # top-1 agreement: the same questions with both stores searched exactly
    kinds = {index.passage_store.kind, index.sentence_store.kind}
    if kinds == {"flat"}:
        agree = 1.0
    else:
        real_search = ix.FaissStore.search
        ix.FaissStore.search = lambda store, query, k: reference.search(store, query, k)
        try:
            exact_tops = [_top(a.ask(q["question"])) for q in qs]
        finally:
            ix.FaissStore.search = real_search
        agree = float(np.mean([x == y for x, y in zip(tops, exact_tops)]))
        log.info("exact reference: %d searches answered from the one pass, %d read every vector",
                 reference.hits, reference.misses)
    found = float(np.mean([_hit(a, q) for q in qs[:200]]))
    # add one article (real model), then the first question on the new generation
    new = args.workdir / "corpus" / "added-article.txt"
    new.write_text("Velmoria Cryo Peel\nThe Velmoria cryo-peel is a cold enzyme peel made with zandrelite crystals. "
                   "A Velmoria cryo-peel session lasts exactly 17 minutes. Clients repeat it every five weeks.\n",
                   encoding="utf-8")
    t = time.perf_counter()
    tm: dict = {}
    from assistant.reindex import reindex

    report = reindex(settings, emb, timings=tm)
    add_s = time.perf_counter() - t
    _, hwm_after_add = _rss_mb()
    # the swap `Assistant.reindex` (the admin page's Reindex) makes before it returns: loading the
    # new generation; a question asked before it would get the generation being served
    t = time.perf_counter()
    a._current(force=True)
    swap_add_s = time.perf_counter() - t
    t = time.perf_counter()
    after = a.ask("How long does a Velmoria cryo-peel session last?")
    first_after_ms = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    noop = reindex(settings, emb)
    noop_s = time.perf_counter() - t
    # change it, as `assistant reindex` does: in a process of its own (its peak memory against
    # this serving process's)
    new.write_text(new.read_text(encoding="utf-8").replace("17 minutes", "19 minutes"), encoding="utf-8")
    child = subprocess.run([sys.executable, __file__, "--reindex-child", "--workdir", str(args.workdir)],
                           capture_output=True, text=True)
    if child.returncode != 0:
        sys.stderr.write(child.stderr[-4000:])
        raise SystemExit(f"the reindex process failed ({child.returncode})")
    change = json.loads(child.stdout.strip().splitlines()[-1])
    # a server swaps to another process's generation on its own, in the background, while it
    # answers with the one it has: wait for that swap, then ask
    swap_change_s = _await_swap(a, settings.index_dir)
    changed = a.ask("How long does a Velmoria cryo-peel session last?")
    # remove it (in this process, like the admin page's Reindex)
    new.unlink()
    t = time.perf_counter()
    tm_rm: dict = {}
    removed = reindex(settings, emb, timings=tm_rm)
    remove_s = time.perf_counter() - t
    t = time.perf_counter()
    a._current(force=True)
    swap_remove_s = time.perf_counter() - t
    t = time.perf_counter()
    gone = a.ask("How long does a Velmoria cryo-peel session last?")
    first_after_remove_ms = (time.perf_counter() - t) * 1000
    final = a._current().index
    return {
        "change_one_child": change, "change_answered": "19 minutes" in (changed.answers[0].text if changed.answers else ""),
        "remove_one_s": remove_s, "remove_one_phases": tm_rm, "remove_one_removed": removed.removed,
        "first_ask_after_remove_ms": first_after_remove_ms,
        "swap_add_s": swap_add_s, "swap_change_s": swap_change_s, "swap_remove_s": swap_remove_s,
        "removed_gone": not any("Velmoria" in x.text for x in gone.answers),
        "stores_after": final.manifest.get("vector_search"),

        "open_s": open_s, "model_load_s": model_s, "rss_after_open_mb": rss_open, "first_ask_ms": first_ms,
        "ask_p50_ms": float(np.percentile(times, 50)), "ask_p99_ms": float(np.percentile(times, 99)),
        "rss_mb": rss, "hwm_mb": hwm, "rss_split_mb": split, "candidate_recall": float(np.mean(recalls)), "top1_agreement": agree,
        "answer_paragraph_top1": found, "stores": index.manifest.get("vector_search"),
        "add_one_s": add_s, "add_one_phases": tm, "add_one_added": report.added, "hwm_after_add_mb": hwm_after_add,
        "first_ask_after_reindex_ms": first_after_ms, "added_answered": "17 minutes" in (after.answers[0].text if after.answers else ""),
        "noop_reindex_s": noop_s, "noop_touched": noop.touched, "first_answer_abstained": first.abstained,
    }


class ExactReference:
    """Exact top-k of many queries from one pass over each store (a million passages' 4M sentence
    vectors read once, not once per question): each block's scores for every query, the best
    `depth` per query kept. A search for another vector, or deeper, reads every vector itself."""

    def __init__(self, stores: list, vecs: np.ndarray, depth: int = 1000, block: int = 65_536) -> None:
        from assistant import index as ix

        self.ix, self.hits, self.misses = ix, 0, 0
        self.keys = {v.tobytes(): i for i, v in enumerate(vecs)}
        self.best: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for store in stores:
            m = store.matrix()
            n, q = len(m), len(vecs)
            d = min(depth, n)
            rows = np.zeros((q, 0), dtype=np.int64)
            scores = np.zeros((q, 0), dtype=np.float32)
            for i in range(0, n, block):
                sc = (np.asarray(m[i : i + block], dtype=np.float32) @ vecs.T).T  # queries x block
                rows = np.concatenate([rows, np.broadcast_to(np.arange(i, i + sc.shape[1]), sc.shape)], axis=1)
                scores = np.concatenate([scores, sc], axis=1)
                if scores.shape[1] > d:
                    keep = np.argpartition(-scores, d - 1, axis=1)[:, :d]
                    rows, scores = np.take_along_axis(rows, keep, 1), np.take_along_axis(scores, keep, 1)
            order = np.lexsort((rows, -scores), axis=1)  # best first, ties to the lower row (as ix.topk)
            self.best[id(store)] = (np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1))

    def search(self, store, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        i = self.keys.get(np.asarray(query, dtype=np.float32).ravel().tobytes())
        best = self.best.get(id(store))
        if i is None or best is None or k > best[0].shape[1]:
            self.misses += 1
            return self.ix.exact_topk(store.matrix(), query, k)
        self.hits += 1
        return best[0][i, :k].astype(np.int64), best[1][i, :k]


def _await_swap(a, index_dir: Path, timeout: float = 900.0) -> float:
    """Seconds until the assistant serves the generation CURRENT names (its background swap)."""
    from assistant import index as ix

    want = ix.current_generation(index_dir).name
    t = time.perf_counter()
    while a._current().generation != want:
        if time.perf_counter() - t > timeout:
            raise SystemExit(f"the serving process did not swap to {want} in {timeout:.0f} s")
        time.sleep(0.05)
    return time.perf_counter() - t


def _top(res) -> tuple | None:
    return (res.answers[0].source.doc_id, res.answers[0].source.start) if res.answers else None


def _hit(a, q) -> bool:
    res = a.ask(q["question"])
    return bool(res.answers) and res.answers[0].source.doc_id == f"xquad/{q['doc_id']}"


# --- same answers: the storage and search choices against exact float32 search ---------------

def same_answers(src: Path, workdir: Path) -> dict:
    """Build the eval corpus once with float32 vectors on both levels and exact search (the
    reference, what the index stored before), then ask every question again with float16
    sentences (float32 passages, as before issue 11's float16 passages), with float16 on both
    levels, with both levels on HNSW, and with the approximate kinds chosen from ANN_MIN_VECTORS
    up (passages PQ, sentences IVF), the PQ level's vectors float32 and float16, the IVF level's
    float16 and int8 (the default).
    Eval figures and top-1 agreement (with the reference) for each."""
    from dataclasses import replace

    from assistant import Assistant, Settings
    from assistant import index as ix
    from assistant.evaluation import _jsonl as eval_jsonl
    from assistant.evaluation import write_squad_corpus

    corpus, idx = workdir / "corpus", workdir / "index"
    if not (idx / "CURRENT").exists():
        shutil.rmtree(corpus, ignore_errors=True)
        write_squad_corpus(src, corpus)
        ix.SENTENCE_DTYPE = ix.PASSAGE_DTYPE = "float32"
        a = Assistant(Settings(corpus_dir=corpus, index_dir=idx))
        a.reindex(progress=True)
    a = Assistant(replace(Settings(corpus_dir=corpus, index_dir=idx), abstain_threshold=0.0))
    index = a._current().index
    assert index.sentence_store.dtype == index.passage_store.dtype == "float32" and index.passage_store.kind == "flat"
    qs = [q for q in eval_jsonl(src / "questions.jsonl", ("question",)) if q.get("answers")]
    p32 = np.asarray(index.passage_vectors, dtype=np.float32).copy()
    s32 = np.asarray(index.sent_vectors, dtype=np.float32).copy()
    variants = {
        "exact float32 (reference)": (ix.FaissStore.build(p32, "flat", "float32"), ix.FaissStore.build(s32, "flat", "float32")),
        "float32 passages, float16 sentences": (ix.FaissStore.build(p32, "flat", "float32"),
                                                ix.FaissStore.build(s32, "flat", "float16")),
        "float16 both levels": (ix.FaissStore.build(p32, "flat", "float16"), ix.FaissStore.build(s32, "flat", "float16")),
        "HNSW both levels, float16 sentences": (ix.FaissStore.build(p32, "hnsw", "float32"),
                                                ix.FaissStore.build(s32, "hnsw", "float16")),
        "HNSW both levels, float16 both": (ix.FaissStore.build(p32, "hnsw", "float16"),
                                           ix.FaissStore.build(s32, "hnsw", "float16")),
        "PQ passages, IVF float16 sentences": (ix.FaissStore.build(p32, "pq", "float32"),
                                               ix.FaissStore.build(s32, "ivf", "float16")),
        "PQ float16 passages, IVF float16 sentences": (ix.FaissStore.build(p32, "pq", "float16"),
                                                       ix.FaissStore.build(s32, "ivf", "float16")),
        "PQ float16 passages, IVF int8 sentences (default)": (ix.FaissStore.build(p32, "pq", "float16"),
                                                              ix.FaissStore.build(s32, "ivf", "int8")),
    }
    out, ref = {}, None
    for name, (ps, ss) in variants.items():
        index.passage_store, index.sentence_store = ps, ss
        a._current().retriever._heads.clear()
        tops, ranks = [], []
        for q in qs:
            res = a.ask(q["question"][:1000], top_k=10)
            tops.append(_top(res))
            answers = [x["text"] for x in q["answers"]]
            ranks.append(next((r for r, x in enumerate(res.answers, 1) if any(t in x.text for t in answers)), None))
        ref = ref or tops
        n = len(ranks)
        out[name] = {"questions": n, "top1": sum(1 for r in ranks if r == 1) / n,
                     "top3": sum(1 for r in ranks if r and r <= 3) / n, "top5": sum(1 for r in ranks if r and r <= 5) / n,
                     "mrr": sum(1 / r for r in ranks if r) / n,
                     "top1_agreement": float(np.mean([x == y for x, y in zip(tops, ref)]))}
        print(f"{name:44s} " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in out[name].items()),
              flush=True)
    return out


# --- driver ----------------------------------------------------------------------------------

def run(args) -> dict:
    from assistant import Settings
    from assistant.embedder import get_embedder

    work = args.workdir
    corpus, index = work / "corpus", work / "index"
    stamp = work / "library.json"
    want = {"passages": args.passages, "generator": GENERATOR}
    if not (stamp.exists() and json.loads(stamp.read_text()).get("want") == want and (index / "CURRENT").exists()):
        shutil.rmtree(corpus, ignore_errors=True)
        shutil.rmtree(index, ignore_errors=True)
        sents = source_sentences()
        info = write_library(corpus, args.passages, sents)
        real = get_embedder()
        stand_in = StandInEmbedder(real, base_vectors(real, sents, work.parent))
        known = work.parent / "real-vectors.npy"  # the model's vectors of real texts, kept across sizes
        stand_in.load_known(known)
        stand_in.mark_real(corpus)
        seeded = stand_in.seed_from_index(work.parent / "same-xquad" / "index")
        log.info("real texts: %d (%d vectors known from earlier runs; %d passages seeded)", len(stand_in.real_set),
                 len(stand_in.known), seeded)
        tm: dict = {}
        from assistant.reindex import reindex

        from assistant import reindex as rx

        # stand-ins cost no model time: hand them over 512 at a time, not in the model's batches of 8
        defaults = rx._embed.__defaults__
        rx._embed.__defaults__ = (512,) + defaults[1:]
        t = time.perf_counter()
        try:
            report = reindex(Settings(corpus_dir=corpus, index_dir=index), stand_in, progress=True, timings=tm)
        finally:
            rx._embed.__defaults__ = defaults
        build_s = time.perf_counter() - t
        stand_in.save_known(known)
        texts = stand_in.real_texts + stand_in.standin_texts
        info.update(build_s=build_s, build_phases=tm, passages=report.passages, articles=report.articles,
                    unmatched_filler_texts=stand_in.unmatched,
                    texts=texts, real_texts=stand_in.real_texts, standin_texts=stand_in.standin_texts,
                    non_model_s_per_text=(build_s - tm.get("embed", 0.0)) / max(1, texts))
        # the build rate ratio, on a sample of this library's own texts
        from assistant import index as ix

        loaded = ix.load(index)
        rng = random.Random(3)
        rows = rng.sample(range(len(loaded.passages)), min(args.rate_sample, len(loaded.passages)))
        sample = []
        for r in rows:
            p = loaded.passages[r]
            d = loaded.docs[p.doc_id]
            sample.append(ix.passage_embed_text(p, d.title, d.text))
            sample += [ix.sentence_embed_text(p, s, d.text) for s in p.sentences]
        del loaded
        info.update(build_rate_ratio(real, sample, info["non_model_s_per_text"]))
        (work / "questions.json").write_text(json.dumps(questions(args.questions)))
        stamp.write_text(json.dumps({"want": want, "info": info}))
    info = json.loads(stamp.read_text())["info"]
    out = subprocess.run([sys.executable, __file__, "--serve", "--workdir", str(work)]
                         + (["--serve-questions", str(args.serve_questions)] if args.serve_questions else []),
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"the serving process failed ({out.returncode})")
    served = json.loads(out.stdout.strip().splitlines()[-1])
    return {"passages": info["passages"], "build_rate_ratio": info["build_rate_ratio"],
            "ask_p50_ms": served["ask_p50_ms"], "ask_p99_ms": served["ask_p99_ms"],
            "first_ask_ms": served["first_ask_ms"], "add_one_s": served["add_one_s"], "rss_mb": served["rss_mb"],
            "candidate_recall": served["candidate_recall"], "top1_agreement": served["top1_agreement"],
            "build": info, "serve": served}


def plot(work: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((json.loads(p.read_text()) for p in work.glob("result-*.json")), key=lambda r: r["passages"])
    if not rows:
        raise SystemExit(f"no results in {work} (run with --passages N first)")
    n = [r["passages"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    ax.plot(n, [r["ask_p50_ms"] for r in rows], "o-", color="tab:blue", label="ask p50 (ms, query encode included)")
    ax.plot(n, [r["ask_p99_ms"] for r in rows], "o--", color="tab:blue", alpha=0.5, label="ask p99 (ms)")
    ax.set_xscale("log")
    ax.set_xlabel("passages in the library")
    ax.set_ylabel("ms")
    ax2 = ax.twinx()
    ax2.plot(n, [r["rss_mb"] / 1024 for r in rows], "s-", color="tab:red", label="serving RSS (GB)")
    ax2.set_ylabel("GB")
    ax2.set_ylim(bottom=0)
    ax.set_ylim(bottom=0)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [x.get_label() for x in lines], loc="upper left", fontsize=8)
    ax.set_title("Ask latency and memory against library size (2-core machine)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--passages", type=int, default=10_000)
    ap.add_argument("--questions", type=int, default=240)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rate-sample", type=int, default=60, help="passages (with their sentences) timed with the real model")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--same-answers", type=Path, default=None, metavar="EVAL_FOLDER")
    ap.add_argument("--serve-questions", type=int, default=0,
                    help="ask only the first N of the library's questions (a quicker serving run)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reindex-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    from assistant.embedder import _limit_threads

    _limit_threads()
    root = Path(os.environ.get("ASSISTANT_BENCH_DIR", Path(tempfile.gettempdir()) / "assistant-bench-scale"))
    if args.plot:
        plot(args.workdir or root, args.plot)
        return
    if args.serve:
        print(json.dumps(serve(args)))
        return
    if args.reindex_child:
        print(json.dumps(reindex_child(args)))
        return
    if args.same_answers:
        work = args.workdir or root / f"same-{args.same_answers.resolve().name}"
        work.mkdir(parents=True, exist_ok=True)
        r = same_answers(args.same_answers, work)
        if args.json:
            print(json.dumps(r))
        return
    args.workdir = args.workdir or root / f"n{args.passages}"
    args.workdir.mkdir(parents=True, exist_ok=True)
    r = run(args)
    (args.workdir.parent / f"result-{args.passages}.json").write_text(json.dumps(r))
    b, s = r["build"], r["serve"]
    print(f"library: {r['passages']:,} passages ({b['xquad_articles']} XQuAD articles, {b['filler_articles']:,} filler "
          f"articles of real sentences); texts embedded {b['texts']:,} ({b['real_texts']:,} by the model, "
          f"{b['standin_texts']:,} stand-ins)")
    print(f"stores: {json.dumps(s['stores'])}")
    print(f"build without the model: {b['build_s']:.1f} s ({json.dumps(b['build_phases'])})")
    print(f"build rate: model alone {b['model_texts_per_s']:.0f} texts/s, build path {b['build_texts_per_s']:.0f} texts/s "
          f"(embedding {b['embed_texts_per_s']:.0f}/s) -> ratio {r['build_rate_ratio']:.2f}")
    print(f"open {s['open_s']:.2f} s (model load {s.get('model_load_s', 0):.1f} s, not in the first question); first question {r['first_ask_ms']:.0f} ms; ask p50 {r['ask_p50_ms']:.1f} ms, "
          f"p99 {r['ask_p99_ms']:.1f} ms (query encode included, {args.serve_questions or len(json.loads((args.workdir / 'questions.json').read_text()))} questions)")
    print(f"serving RSS {r['rss_mb']:.0f} MB (own {s['rss_split_mb'].get('RssAnon', 0):.0f} MB, "
          f"index file pages {s['rss_split_mb'].get('RssFile', 0):.0f} MB; peak {s['hwm_mb']:.0f} MB); candidate recall {r['candidate_recall']:.4f}; "
          f"top-1 agreement with exact search {r['top1_agreement']:.4f}; answer paragraph at top-1 {s['answer_paragraph_top1']:.3f}")
    print(f"add one article {r['add_one_s']:.2f} s ({json.dumps(s['add_one_phases'])}); swap to it "
          f"{s['swap_add_s']:.2f} s; first question after it "
          f"{s['first_ask_after_reindex_ms']:.0f} ms (answered: {s['added_answered']}); peak RSS with the reindex "
          f"{s['hwm_after_add_mb']:.0f} MB; no-op reindex {s['noop_reindex_s']:.2f} s")
    c = s["change_one_child"]
    print(f"change one article with `assistant reindex` (its own process): {c['reindex_s']:.2f} s after a "
          f"{c['model_load_s']:.1f} s model load ({json.dumps(c['phases'])}); its peak RSS {c['peak_rss_mb']:.0f} MB "
          f"against {r['rss_mb']:.0f} MB for the serving process; the server swapped to it in "
          f"{s['swap_change_s']:.2f} s (background load); answered: {s['change_answered']}")
    print(f"remove one article {s['remove_one_s']:.2f} s ({json.dumps(s['remove_one_phases'])}); swap "
          f"{s['swap_remove_s']:.2f} s; first question after it "
          f"{s['first_ask_after_remove_ms']:.0f} ms; stores after: {json.dumps(s['stores_after'])}")
    if args.json:
        out = {k: r[k] for k in ("passages", "build_rate_ratio", "ask_p50_ms", "ask_p99_ms", "first_ask_ms",
                                 "add_one_s", "rss_mb", "candidate_recall", "top1_agreement")}
        out.update(remove_one_s=s["remove_one_s"], reindex_peak_rss_mb=c["peak_rss_mb"],
                   first_ask_after_reindex_ms=s["first_ask_after_reindex_ms"], swap_add_s=s["swap_add_s"])
        print(json.dumps(out))


if __name__ == "__main__":
    main()

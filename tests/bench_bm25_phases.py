"""BM25's part of a one-article reindex, measured alone on one library generation: load the
levels, remove one article's rows (keep), add them back (extend), the old code's rescoring pass
or the new code's merge check, save both levels into a folder and fsync; twice each.

    PYTHONPATH=<code tree> python tests/bench_bm25_phases.py GEN OUTDIR old|new

`old`: a tree before segments (index.Postings, bm25s arrays; run it with PYTHONPATH at that
tree on a format-5 generation); `new`: this tree (BM25Level) on a format-6 generation."""
import os, sys, time, json, shutil
from pathlib import Path
import numpy as np
sys.path.insert(0, os.environ.get("PYTHONPATH", "").split(":")[0] or str(Path(__file__).resolve().parent.parent))
from assistant import index as ix  # noqa: E402

gen, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
index = ix.load(gen.parent, path=gen)
table = index.passages
doc_of = np.asarray(table.doc_of)
victim = int(doc_of[len(doc_of) // 2])  # an article in the middle
rows = np.flatnonzero(doc_of != victim)
gone = np.flatnonzero(doc_of == victim)
sent_rows = np.concatenate([np.arange(*index.sent_rows[r]) for r in rows])
# the victim's own texts as the "new article"
p_texts = [ix.passage_bm25_text(table[int(r)], index.docs[table[int(r)].doc_id].title, index.docs[table[int(r)].doc_id].text) for r in gone]
s_texts = [ix.sentence_bm25_text(table[int(r)], x, index.docs[table[int(r)].doc_id].text, index.docs[table[int(r)].doc_id].title) for r in gone for x in table[int(r)].sentences]
p_tok, s_tok = ix.tokenize(p_texts), ix.tokenize(s_texts)
res = {}

def fsync_tree(d):
    for f in Path(d).iterdir():
        fd = os.open(f, os.O_RDONLY); os.fsync(fd); os.close(fd)

def run(name, remove: bool, add: bool):
    t = {}
    t0 = time.perf_counter()
    lv = ix.load_level_postings(gen)  # old: Postings; new: BM25Level
    t["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    p, s = lv
    if remove:
        p, s = p.keep(rows), s.keep(sent_rows)
    t["keep (assemble)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if add:
        p, s = p.extend(p_tok), s.extend(s_tok)
    t["tokenize (extend)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if mode == "old":
        bp, bs = p.retriever(), s.retriever()
    else:
        bp, bs = p.settled(), s.settled()
    t["bm25"] = time.perf_counter() - t0
    d = out / name
    shutil.rmtree(d, ignore_errors=True); d.mkdir(parents=True)
    t0 = time.perf_counter()
    for lvname, b in (("bm25-passages", bp), ("bm25-sentences", bs)):
        if mode == "old":
            b.save(d / lvname, show_progress=False); b.postings.save(d / lvname)
        else:
            b.save(d / lvname)
        fsync_tree(d / lvname)
    t["write (bm25 files, fsynced)"] = time.perf_counter() - t0
    t["written MB"] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and f.stat().st_nlink == 1) / 1e6
    res[name] = {k: round(v, 4) for k, v in t.items()}
    shutil.rmtree(d)

for rep in range(2):
    run("add one", False, True)
    run("remove one", True, False)
    run("change one", True, True)
print(json.dumps({"mode": mode, "passages": len(doc_of), "victim_passages": len(gone), "victim_sentences": len(s_tok), **res}, indent=1))

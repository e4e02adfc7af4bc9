"""Check that a change to subject discovery finds the same subjects (not a test; issue 11).

    python tests/subjects_equal.py index [--work DIR]                 # build the libraries once
    python tests/subjects_equal.py dump OUT [--code TREE] [--work DIR] [--libs a,b] [--extra GEN...]
    python tests/subjects_equal.py diff OUT_A OUT_B

`index` builds the libraries the tests and evals use -- the seed corpus (with and without its
example glossary), xquad, covidqa-dev and mtrag-dev -- into DIR (default /tmp/subjects-eq) with
placeholder vectors: discovery reads only the text, and chunking does not depend on the model.
`dump` runs a full discovery (`subjects.build`) on each with the `assistant` package of TREE
(default: this checkout; e.g. a `git archive` of the commit before the change) and writes its
`to_json` form and its time to OUT; `--extra` adds generation folders (the bench libraries,
read only). `diff` compares two dumps and exits 1 on any difference.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "eval"
if not EVAL.is_dir():
    EVAL = Path("/work/shared/eval")
SETS = {"xquad": EVAL / "xquad", "covid": EVAL / "covidqa-dev", "mtrag": EVAL / "mtrag-dev"}
LIBS = ["seed", "seed-glossary", "xquad", "covid", "mtrag"]


def _corpus(lib: str, work: Path) -> Path:
    from assistant import evaluation as ev

    corpus = work / f"{lib}-corpus"
    if corpus.exists():
        return corpus
    if lib.startswith("seed"):
        shutil.copytree(ROOT / "corpus", corpus)
        if lib == "seed-glossary":
            shutil.copy(corpus / "glossary.example.toml", corpus / "glossary.toml")
    else:
        ev.write_squad_corpus(SETS[lib], corpus)
    return corpus


class _Placeholder:
    """Vectors from a hash of the text: indexing costs no embedding (discovery reads no vector)."""

    def __init__(self, real) -> None:
        self.e = real

    def __getattr__(self, k):
        return getattr(self.e, k)

    def encode_passages(self, texts: list[str], batch_size: int = 64, progress: bool = False):
        import numpy as np

        if not texts:
            return np.zeros((0, self.e.dim), dtype=np.float32)
        out = np.stack([np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).standard_normal(self.e.dim)
                        for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def build_indexes(work: Path) -> None:
    from assistant.assistant import Assistant
    from assistant.config import Settings
    from assistant.embedder import get_embedder

    emb = _Placeholder(get_embedder())
    for lib in LIBS:
        if (work / f"{lib}-index" / "CURRENT").exists():
            continue
        a = Assistant(Settings(corpus_dir=_corpus(lib, work), index_dir=work / f"{lib}-index"), embedder=emb)
        a.reindex(progress=False)
        print(f"{lib}: indexed", flush=True)


def dump(out: Path, work: Path, libs: list[str], extra: list[Path]) -> None:
    from assistant import index as ix
    from assistant import subjects as sj

    out.mkdir(parents=True, exist_ok=True)
    todo = [(lib, work / f"{lib}-index", work / f"{lib}-corpus") for lib in libs]
    todo += [("-".join(g.parts[-2:]), g, None) for g in extra]
    for name, where, corpus in todo:
        index = ix.load(where) if (where / "CURRENT").exists() else ix.load(where.parent, path=where)
        gpath = corpus / sj.GLOSSARY_NAME if corpus is not None else None
        glossary = sj.load_glossary(gpath) if gpath is not None else None
        t, cpu = time.perf_counter(), time.process_time()
        found = sj.build(index, glossary)
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu
        (out / f"{name}.json").write_text(json.dumps(sj.to_json(found, None), sort_keys=True), encoding="utf-8")
        print(f"{name}: {len(index.passages)} passages, {len(found)} subjects, discovery {secs:.2f} s "
              f"(CPU {cpu:.2f} s)", flush=True)
        (out / f"{name}.time").write_text(f"{len(index.passages)} {secs:.3f} {cpu:.3f}\n")


def diff(a: Path, b: Path) -> int:
    bad = 0
    for fa in sorted(a.glob("*.json")):
        fb = b / fa.name
        if not fb.exists():
            print(f"{fa.stem}: missing in {b}")
            bad += 1
            continue
        da, db = json.loads(fa.read_text()), json.loads(fb.read_text())
        if da == db:
            print(f"{fa.stem}: identical ({len(da['subjects'])} subjects, {len(da['body'])} rows named, "
                  f"{len(da['heading'])} rows by heading)")
            continue
        bad += 1
        na, nb = [s["name"] for s in da["subjects"]], [s["name"] for s in db["subjects"]]
        print(f"{fa.stem}: DIFFERENT; only in A: {sorted(set(na) - set(nb))[:20]}; only in B: {sorted(set(nb) - set(na))[:20]}")
        for sa, sb in zip(da["subjects"], db["subjects"]):
            if sa != sb:
                print(f"  first differing subject: {sa['name']!r} vs {sb['name']!r}; "
                      f"{ {k: (sa[k], sb[k]) for k in sa if sa[k] != sb.get(k) and k != 'rows'} }")
                break
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["index", "dump", "diff"])
    ap.add_argument("paths", nargs="*", type=Path)
    ap.add_argument("--code", type=Path, default=ROOT, help="tree whose assistant/ package runs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/subjects-eq"))
    ap.add_argument("--libs", default=",".join(LIBS))
    ap.add_argument("--extra", type=Path, nargs="*", default=[], help="generation folders to discover too")
    args = ap.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    logging.basicConfig(level=logging.WARNING)
    if args.cmd == "index":
        args.work.mkdir(parents=True, exist_ok=True)
        build_indexes(args.work)
    elif args.cmd == "dump":
        if len(args.paths) != 1:
            ap.error("dump OUT")
        dump(args.paths[0], args.work, [x for x in args.libs.split(",") if x], args.extra)
    else:
        if len(args.paths) != 2:
            ap.error("diff OUT_A OUT_B")
        sys.exit(diff(*args.paths))


if __name__ == "__main__":
    main()

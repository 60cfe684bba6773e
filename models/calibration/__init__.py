"""The example models' calibration data, generated from fixed seeds and committed as files.

`python -m models.calibration` writes `images/` (synthetic scenes: a colored gradient sky, a
textured wave pattern, a few shapes, blur and sensor noise, as small JPEGs) and `sentences.txt`
(word sequences of varied length over a fixed vocabulary). Real deployments point the spec's
`calibration.data` at a few hundred samples of real traffic instead.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["HERE", "scene", "sentence", "write"]

HERE = Path(__file__).resolve().parent
_WORDS = [
    "the",
    "a",
    "model",
    "server",
    "request",
    "batch",
    "image",
    "text",
    "vector",
    "queue",
    "fast",
    "slow",
    "small",
    "large",
    "red",
    "green",
    "blue",
    "runs",
    "waits",
    "returns",
    "sends",
    "reads",
    "writes",
    "quickly",
    "rarely",
    "always",
    "never",
    "in",
    "on",
    "with",
    "under",
    "over",
    "after",
    "before",
    "cat",
    "dog",
    "tree",
    "river",
    "city",
    "mountain",
    "night",
    "morning",
    "engine",
    "signal",
    "network",
    "memory",
    "token",
    "score",
]


def scene(rng: np.random.Generator, size: int = 96, height: int | None = None) -> Image.Image:
    """One synthetic RGB scene, `size` pixels wide and `height` (default: `size`) high."""
    width, height = size, height or size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    fade = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = (top * (1 - fade) + bottom * fade) * np.ones((1, width, 1))
    rows, cols = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    angle, frequency = rng.uniform(0, np.pi), rng.uniform(1, 12)
    wave = np.sin(2 * np.pi * frequency * (cols * np.cos(angle) + rows * np.sin(angle)))[..., None]
    pixels = pixels + wave * rng.uniform(0, 60) * rng.uniform(-1, 1, 3)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 6))):
        x, y = (int(v) for v in rng.integers(0, [width, height]))
        w, h = (int(v) for v in rng.integers([width // 10, height // 10], [width // 2, height // 2]))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse([x, y, x + w, y + h], fill=fill)
        elif shape == 1:
            draw.rectangle([x, y, x + w, y + h], fill=fill)
        else:
            draw.polygon([(x, y + h), (x + w // 2, y), (x + w, y + h)], fill=fill)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2))))
    noise = rng.normal(0, rng.uniform(0, 12), (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def jpeg(rng: np.random.Generator, size: int = 96, height: int | None = None, quality: int = 90) -> bytes:
    """One `scene`, encoded as a JPEG."""
    buffer = io.BytesIO()
    scene(rng, size, height).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def sentence(rng: np.random.Generator) -> str:
    """One line of 3 to 60 words."""
    words = rng.choice(_WORDS, size=int(rng.integers(3, 61)))
    return " ".join(words).capitalize() + "."


def write(directory: Path = HERE, images: int = 192, sentences: int = 192, seed: int = 0) -> None:
    """(Re)generate the example calibration set."""
    rng = np.random.default_rng(seed)
    image_dir = directory / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for old in image_dir.glob("*.jpg"):
        old.unlink()
    for index in range(images):
        (image_dir / f"scene_{index:04d}.jpg").write_bytes(jpeg(rng))
    (directory / "sentences.txt").write_text("\n".join(sentence(rng) for _ in range(sentences)) + "\n")

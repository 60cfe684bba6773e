"""Pre- and post-processing of the image_classification pipeline, served as Triton Python models.

Each class is built once per model instance (`Class(**options, **files)`) and called with a whole
batch: `instance({input name: array}) -> {output name: array}`. A ValueError marks one item as
bad input; the server then answers that request with INVALID_ARGUMENT and the others normally.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

__all__ = ["ClassifierPostprocess", "GpuClassifierPostprocess", "GpuImagePreprocess", "ImagePreprocess"]

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
        with self.opened(data) as image:
            rgb = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        pixels = np.asarray(rgb, dtype=np.float32) / 255.0
        return ((pixels - MEAN) / STD).transpose(2, 0, 1)

    @contextmanager
    def opened(self, data: bytes) -> Iterator[Image.Image]:
        """One encoded image, opened and vetted from its header: a JPEG or PNG of at most
        `max_pixels`. What Pillow raises inside the block (a truncated or corrupt file met while
        decoding) becomes the same ValueError as a bad header."""
        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                if image.format not in FORMATS:
                    raise ValueError(f"a {image.format} image; send JPEG or PNG")
                width, height = image.size
                if width * height > self.max_pixels:
                    raise ValueError(self._too_large(f"{width}x{height} = {width * height:,} pixels"))
                yield image
        except UnidentifiedImageError:
            raise ValueError(f"{len(data)} bytes that are not a JPEG or PNG image") from None
        except Image.DecompressionBombError as exc:  # Pillow's own ceiling, met at open() above 2x its limit
            raise ValueError(self._too_large(str(exc))) from None
        except OSError as exc:  # recognised, but truncated or corrupt
            raise ValueError(f"a damaged image ({exc})") from exc

    def _too_large(self, detail: str) -> str:
        return f"an image over {self.max_pixels:,} pixels, this model's limit (option max_pixels): {detail}; send a smaller one"


class GpuImagePreprocess(ImagePreprocess):
    """ImagePreprocess on a torch device, for a whole batch at once: the `gpu` target's.

    JPEGs are decoded together by nvJPEG (`torchvision.io.decode_jpeg` on CUDA), then every image
    is resized and normalized on the device, and the batch goes back as a torch tensor there,
    which Triton hands to the next step of the ensemble without a copy to the host. The same
    header checks and errors as ImagePreprocess come first; what nvJPEG does not decode (PNGs,
    CMYK JPEGs, files without their end marker, or any it refuses) is decoded by Pillow as on the
    CPU, so a damaged file gets the CPU path's error. On a CPU device (tests) Pillow decodes all.

    The resize is bilinear with antialiasing, as Pillow's, and rounded to 8 bits as Pillow's
    output is: the two paths differ by the resize's rounding (at most one level,
    tests/unit/test_image_preprocess_gpu.py) and, on GPUs, by the decoders' chroma upsampling.
    """

    def __init__(self, size: int = 224, max_pixels: int = 40_000_000, device: str = "cuda") -> None:
        super().__init__(size, max_pixels)
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1)
        self.decode_jpegs = _nvjpeg_decoder(self.device) if self.device.type == "cuda" else None

    def __call__(self, inputs: dict[str, NDArray[Any]]) -> dict[str, Any]:
        items = [bytes(item) for item in inputs["image_bytes"].reshape(-1)]
        pixels: list[Any] = [None] * len(items)
        jpegs = []
        for index, data in enumerate(items):
            with self.opened(data) as image:
                on_device = self.decode_jpegs is not None and image.format == "JPEG" and image.mode in ("RGB", "L")
                # nvJPEG decodes a file cut short without a word; Pillow refuses it, as on the CPU.
                if on_device and data.rstrip(b"\0").endswith(b"\xff\xd9"):
                    jpegs.append(index)
                    continue
                pixels[index] = self._decoded_by_pillow(image)
        if jpegs:
            for index, decoded in zip(jpegs, self._decode_on_device([items[i] for i in jpegs]), strict=True):
                pixels[index] = decoded if decoded is not None else self._pillow(items[index])
        batch = self.resize_and_normalize(pixels)
        if self.device.type == "cuda":
            self.torch.cuda.current_stream(self.device).synchronize()  # the next step reads it from another process
        return {"image": batch}

    def _pillow(self, data: bytes) -> Any:
        """One image decoded by Pillow -> uint8 [3, height, width] on the device."""
        with self.opened(data) as image:
            return self._decoded_by_pillow(image)

    def _decoded_by_pillow(self, image: Image.Image) -> Any:
        rgb = np.array(image.convert("RGB"))  # a writable copy: torch refuses to wrap Pillow's read-only buffer
        return self.torch.from_numpy(rgb).permute(2, 0, 1).to(self.device, non_blocking=True)

    def _decode_on_device(self, encoded: list[bytes]) -> list[Any]:
        """uint8 [3, height, width] per image, or None for one nvJPEG refused."""
        assert self.decode_jpegs is not None
        data = [self.torch.frombuffer(bytearray(item), dtype=self.torch.uint8) for item in encoded]
        try:
            return list(self.decode_jpegs(data))
        except RuntimeError:  # one bad file fails the whole call: find it
            decoded = []
            for item in data:
                try:
                    decoded.extend(self.decode_jpegs([item]))
                except RuntimeError:
                    decoded.append(None)
            return decoded

    def resize_and_normalize(self, pixels: list[Any]) -> Any:
        """uint8 [3, h, w] images on the device -> normalized FP32 [N, 3, size, size] there; images
        of one shape are resized in one call."""
        torch = self.torch
        batch = torch.empty((len(pixels), 3, self.size, self.size), dtype=torch.float32, device=self.device)
        shapes: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(pixels):
            shapes.setdefault(tuple(image.shape), []).append(index)
        for indices in shapes.values():
            images = torch.stack([pixels[i] for i in indices]).float()
            resized = torch.nn.functional.interpolate(
                images, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
            resized = resized.round_().clamp_(0, 255).div_(255.0)
            batch[torch.tensor(indices, device=self.device)] = (resized - self.mean) / self.std
        return batch


def _nvjpeg_decoder(device: Any) -> Any:
    """torchvision's batched nvJPEG decode on `device`, or an error that says what to install."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except (ImportError, RuntimeError) as exc:  # RuntimeError: a torchvision built for another torch
        raise RuntimeError(
            f"GPU JPEG decoding needs torchvision built for this torch ({exc}); install the torchvision release "
            "that matches it (requirements-gpu.txt), or serve this model with the cpu target's class"
        ) from exc

    def decode(data: list[Any]) -> list[Any]:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode


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
        top = top_k_stable(probabilities, self.top_k)
        return {
            "labels": self.labels[top],
            "scores": np.take_along_axis(probabilities, top, axis=1).astype(np.float32),
        }


def top_k_stable(values: NDArray[Any], k: int) -> NDArray[np.intp]:
    """Each row's `k` largest values' indices, largest first and ties in index order: the first
    `k` columns of a stable argsort of `-values`, without sorting whole rows (at 1,000 classes
    and batch 16, the full sort was most of the postprocess's time: 0.68 of its 0.76 ms)."""
    rows, columns = values.shape
    if k >= columns or np.isnan(values).any():  # NaN: as the full sort ranks it (last)
        return np.argsort(-values, axis=1, kind="stable")[:, :k]
    kth = np.partition(values, columns - k, axis=1)[:, columns - k : columns - k + 1]  # each row's k-th largest
    chosen = values > kth
    tied = values == kth
    wanted = k - chosen.sum(axis=1, keepdims=True)
    if (tied.sum(axis=1, keepdims=True) > wanted).any():  # ties at the k-th: the lowest indices make up k
        tied &= np.cumsum(tied, axis=1, dtype=np.int32) <= wanted
    chosen |= tied
    candidates = np.nonzero(chosen)[1].reshape(rows, k)  # ascending index within each row
    order = np.argsort(-np.take_along_axis(values, candidates, axis=1), axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


class GpuClassifierPostprocess(ClassifierPostprocess):
    """ClassifierPostprocess on a torch device: the `gpu` target's. The logits arrive as a torch
    tensor where the classifier left them (its GPU), the softmax and the ranking run there, and
    only the top_k indices and scores come back to the host (40 bytes an image, not the logits'
    4 KB). The same float64 softmax and stable ranking as on the CPU, so the same labels."""

    def __init__(self, labels: str, top_k: int = 5, device: str = "cuda") -> None:
        super().__init__(labels, top_k)
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def __call__(self, inputs: dict[str, Any]) -> dict[str, NDArray[Any]]:
        torch = self.torch
        logits = torch.as_tensor(inputs["logits"], device=self.device).double()
        probabilities = torch.softmax(logits, dim=1)
        top = torch.sort(-probabilities, dim=1, stable=True).indices[:, : self.top_k]
        scores = torch.gather(probabilities, 1, top).float()
        return {"labels": self.labels[top.cpu().numpy()], "scores": scores.cpu().numpy()}

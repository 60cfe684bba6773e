"""Accuracy gate: a reduced-precision variant against the FP32 PyTorch model on held-out data.

Classifier outputs (those with labels) are judged by top-1 agreement, the others (embeddings,
regressions) by cosine similarity; both get max/mean absolute error, which the gate checks
when the spec sets a budget for it. The figures are reported whether the gate passes or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from builder.spec import Gate, OnnxModelSpec

__all__ = ["OutputAccuracy", "compare", "gate_failures"]


@dataclass(frozen=True)
class OutputAccuracy:
    """How closely one output of a variant follows the reference, over the held-out samples."""

    samples: int
    max_abs_error: float
    mean_abs_error: float
    cosine_mean: float
    cosine_min: float
    top1_agreement: float | None
    # How many classes the reference predicts over the samples: agreement over few classes
    # says less than agreement over many.
    top1_classes: int | None
    judged_by: str

    def figures(self) -> str:
        """One line of figures, for messages and the build summary."""
        parts = []
        if self.top1_agreement is not None:
            parts.append(f"top-1 agreement {self.top1_agreement:.2%} ({self.top1_classes} classes)")
        parts.append(f"cosine {self.cosine_mean:.5f} (min {self.cosine_min:.5f})")
        parts.append(f"abs error max {self.max_abs_error:.3g} mean {self.mean_abs_error:.3g}")
        return ", ".join(parts) + f" over {self.samples} held-out samples"

    def record(self) -> dict[str, Any]:
        """The figures as the build record keeps them."""
        return asdict(self)


def compare(
    model: OnnxModelSpec, reference: Sequence[dict[str, NDArray[Any]]], candidate: Sequence[dict[str, NDArray[Any]]]
) -> dict[str, OutputAccuracy]:
    """Per-output accuracy of `candidate` batches against `reference` batches of the same inputs."""
    results = {}
    for output in model.outputs:
        expected = np.concatenate([batch[output.name] for batch in reference]).astype(np.float64)
        actual = np.concatenate([batch[output.name] for batch in candidate]).astype(np.float64)
        samples = expected.shape[0]
        flat_expected, flat_actual = expected.reshape(samples, -1), actual.reshape(samples, -1)
        error = np.abs(flat_actual - flat_expected)
        cosine = _cosine(flat_expected, flat_actual)
        classifier = output.labels is not None
        top1 = top1_classes = None
        if flat_expected.shape[1] > 1:
            agree = flat_expected.argmax(axis=1) == flat_actual.argmax(axis=1)
            top1, top1_classes = float(agree.mean()), len(set(flat_expected.argmax(axis=1).tolist()))
        results[output.name] = OutputAccuracy(
            samples=samples,
            max_abs_error=float(error.max()),
            mean_abs_error=float(error.mean()),
            cosine_mean=float(cosine.mean()),
            cosine_min=float(cosine.min()),
            top1_agreement=top1,
            top1_classes=top1_classes,
            judged_by="top1_agreement" if classifier and top1 is not None else "cosine",
        )
    return results


def gate_failures(gate: Gate, accuracy: dict[str, OutputAccuracy]) -> list[str]:
    """One line per budget an output misses, with the figure and the budget."""
    failures = []
    for name, figures in accuracy.items():
        if figures.judged_by == "top1_agreement":
            assert figures.top1_agreement is not None
            if figures.top1_agreement < gate.top1_agreement:
                failures.append(
                    f"output {name!r}: top-1 agreement {figures.top1_agreement:.2%} < gate.top1_agreement {gate.top1_agreement:.2%}"
                )
        elif figures.cosine_mean < gate.cosine:
            failures.append(
                f"output {name!r}: mean cosine similarity {figures.cosine_mean:.5f} < gate.cosine {gate.cosine}"
            )
        if gate.max_abs_error is not None and figures.max_abs_error > gate.max_abs_error:
            failures.append(
                f"output {name!r}: max abs error {figures.max_abs_error:.3g} > gate.max_abs_error {gate.max_abs_error:.3g}"
            )
        if gate.mean_abs_error is not None and figures.mean_abs_error > gate.mean_abs_error:
            failures.append(
                f"output {name!r}: mean abs error {figures.mean_abs_error:.3g} > gate.mean_abs_error {gate.mean_abs_error:.3g}"
            )
    return failures


def _cosine(expected: NDArray[np.float64], actual: NDArray[np.float64]) -> NDArray[np.float64]:
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    dots = (expected * actual).sum(axis=1)
    # Two all-zero vectors agree perfectly; one zero vector against another does not.
    both_zero = norms == 0
    same = np.all(expected == actual, axis=1)
    return np.where(both_zero, np.where(same, 1.0, 0.0), dots / np.where(both_zero, 1.0, norms))

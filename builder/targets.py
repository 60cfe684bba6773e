"""Build targets: the same spec renders for GPU hosts or for CPU-only hosts."""

from __future__ import annotations

import shutil
import subprocess
from typing import Literal

__all__ = ["TARGETS", "Target", "detect_target"]

Target = Literal["cpu", "gpu"]
TARGETS: tuple[Target, ...] = ("cpu", "gpu")


def detect_target() -> tuple[Target, str]:
    """The target that fits this machine, and why: `gpu` where `nvidia-smi` lists a GPU."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return "cpu", "no nvidia-smi on this machine"
    try:
        listed = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "cpu", f"nvidia-smi failed ({exc})"
    gpus = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    if listed.returncode != 0 or not gpus:
        return "cpu", "nvidia-smi lists no GPU"
    return "gpu", f"nvidia-smi lists {len(gpus)} GPU(s)"

"""The build record each version directory the builder writes carries (`build.json`): what the
checker reads back, such as a TensorRT plan's optimization profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["BUILD_RECORD", "read_record"]

BUILD_RECORD = "build.json"


def read_record(version_dir: Path) -> dict[str, Any]:
    """A version directory's build record, or {} when it has none or it cannot be read."""
    try:
        record = json.loads((version_dir / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}

"""A Python model's `auto_complete_config`, run as Triton's Python backend runs it at load.

With auto-complete on (Triton's default, `--strict-model-config=false`) the backend calls the
model class's `auto_complete_config(config)` before the config is validated; what the function
declares joins the config, and a bad declaration stops the load with the message of the
backend's own `pb_utils.ModelConfig`. The check runs that function the same way: the model file
in a fresh interpreter (it may import anything, and must not run inside the checker), beside the
`triton_python_backend_utils` the embedded server's Python backend uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2 as pb

__all__ = ["auto_complete"]

_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}

_TIMEOUT_S = 120

_RUN = """
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
import triton_python_backend_utils as pb_utils
spec = importlib.util.spec_from_file_location("model", sys.argv[2])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
function = getattr(module.TritonPythonModel, "auto_complete_config", None)
if function is None:
    print(json.dumps({"config": None}))
    sys.exit()
try:
    result = function(pb_utils.ModelConfig(sys.argv[3]))
except Exception as error:
    print(json.dumps({"error": str(error)}))
    sys.exit()
if not isinstance(result, pb_utils.ModelConfig):
    print(json.dumps({"error": "must return a valid pb.ModelConfig object"}))
    sys.exit()
print(json.dumps({"config": result.as_dict()}))
"""


def auto_complete(config: pb.ModelConfig, model_file: Path, model: str) -> tuple[pb.ModelConfig | None, str | None]:
    """The config as the model's auto_complete_config leaves it (None if it defines none), or
    the reason the backend would refuse the model, in the backend's words."""
    if "auto_complete_config" not in model_file.read_text(errors="replace"):
        return None, None  # nothing to run (and the model's imports, torch say, stay unloaded)
    from server.errors import ServerError
    from server.installation import find_installation  # the server's own utils module

    model_file = model_file.resolve()
    try:
        utils = find_installation().python_backend
    except ServerError:
        return None, None  # no Python backend here to run it with: nothing is claimed
    as_dict = json_format.MessageToDict(
        config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    given = json.dumps(_numbers(as_dict, config.DESCRIPTOR))
    try:
        run = subprocess.run(
            [sys.executable, "-c", _RUN, str(utils), str(model_file), given],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            cwd=model_file.parent,
        )
    except subprocess.TimeoutExpired:
        return None, f"auto_complete_config of model '{model}' did not return within {_TIMEOUT_S} s"
    answer = run.stdout.strip().splitlines()[-1:] if run.returncode == 0 else []
    if not answer:
        last = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"loading {model_file} for its auto_complete_config failed: {last}"
    result = json.loads(answer[0])
    if "error" in result:
        error = str(result["error"])
        if error == "must return a valid pb.ModelConfig object":
            error = f"auto_complete_config function in model '{model}' must return a valid pb.ModelConfig object."
        return None, error
    if result["config"] is None:
        return None, None
    completed = pb.ModelConfig()
    try:
        json_format.ParseDict(result["config"], completed, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        return None, f"auto_complete_config of model '{model}' declared what is no model config: {exc}"
    return completed, None


def _numbers(value: dict[str, Any], message: Descriptor) -> dict[str, Any]:
    """protobuf writes 64-bit integer fields (dims, shapes, timeouts) as JSON strings; Triton hands
    the backend numbers. Only those fields are converted: a parameter's string "4" stays a string."""
    converted = dict(value)
    for key, item in value.items():
        field = message.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            if entry.message_type is not None:
                converted[key] = {k: _numbers(v, entry.message_type) for k, v in item.items()}
            elif entry.type in _INT64:
                converted[key] = {k: int(v) for k, v in item.items()}
        elif field.message_type is not None:
            converted[key] = (
                [_numbers(v, field.message_type) for v in item]
                if isinstance(item, list)
                else _numbers(item, field.message_type)
            )
        elif field.type in _INT64:
            converted[key] = [int(v) for v in item] if isinstance(item, list) else int(item)
    return converted

"""Open Inference Protocol REST bodies <-> numpy: JSON tensors and Triton's binary extension.

No I/O and no model state, like :mod:`service.codec.v2`, whose checks against the
:class:`ModelSpec` (names, datatypes, shapes, sizes, limits, the input set) this module calls,
so a request gets the same verdict and the same words over HTTP as over gRPC. What is HTTP's own:

- a body is a JSON header, optionally followed by raw tensors (the binary tensor extension):
  the header's length is the ``Inference-Header-Content-Length`` HTTP header; an input with the
  parameter ``binary_data_size`` takes that many bytes of the rest, in the order of ``inputs``;
- JSON ``data`` is flat (Triton's clients) or nested (row-major, as the spec allows), and its
  element count must agree with ``shape``;
- an output goes back binary when its own ``parameters.binary_data`` is true, or when the request's
  ``binary_data_output`` is and the output says nothing; otherwise as JSON ``data``.

Types: every numeric type, BOOL (JSON true/false) and FP16 (JSON numbers; 2 bytes raw). BYTES is
refused like any datatype the model does not declare: no model here has a string tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import orjson
from google.protobuf import descriptor as _descriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from service.codec import v2
from service.dtypes import NUMPY_TO_V2
from service.errors import InvalidInput
from service.model_config import ModelSpec, TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
# Which JSON value kinds (numpy's dtype.kind after np.asarray) each datatype accepts: an integer
# tensor takes no 1.5, a float tensor takes 2, nothing numeric takes true/"a"/{}.
_KINDS_FOR: dict[str, str] = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


@dataclass(frozen=True)
class InferRequest:
    """A decoded REST infer request: the v2 request (inputs, outputs, timeout, priority), its id,
    and which outputs go back as raw bytes after the JSON header."""

    decoded: v2.DecodedRequest
    id: str
    binary_outputs: frozenset[str]


def split_body(body: bytes, header_length: int | None) -> tuple[memoryview, memoryview]:
    """(JSON header, binary part) of a body; the whole body is JSON without the header length."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view):]
    if header_length < 0 or header_length > len(view):
        raise InvalidInput(f"{HEADER_LENGTH} is {header_length}, past the body of {len(view)} bytes")
    return view[:header_length], view[header_length:]


def parse_json(data: bytes | memoryview, what: str = "the request body") -> Any:
    try:
        # orjson, not json: a 28x28 image as a JSON list parses in 25 us instead of 280 us, which
        # is the difference between HTTP/JSON at 73% and ~90% of gRPC's throughput (bench.protocols).
        return orjson.loads(data)
    except (ValueError, RecursionError) as exc:  # orjson.JSONDecodeError and bad UTF-8 are ValueErrors
        raise InvalidInput(f"{what} is not valid JSON: {_short(exc)}") from None


def decode_request(body: bytes, header_length: int | None, spec: ModelSpec, max_tensor_bytes: int) -> InferRequest:
    header, binary = split_body(body, header_length)
    document = parse_json(header)
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object with 'inputs'")
    tensors = document.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InvalidInput("'inputs' must be a non-empty JSON array of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(tensors):
        if not isinstance(tensor, dict):
            raise InvalidInput(f"inputs[{index}] must be a JSON object")
        name = _string(tensor.get("name"), f"inputs[{index}].name")
        expected = v2.expected_input(name, spec, inputs)
        shape = _shape(tensor.get("shape"), name)
        datatype = _string(tensor.get("datatype"), f"input {name!r}: datatype")
        dtype, count = v2.check_header(name, datatype, shape, expected, spec, max_tensor_bytes)
        size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
        if size is not None:
            size = _integer(size, f"input {name!r}: binary_data_size")
            if "data" in tensor:
                raise InvalidInput(f"input {name!r} has both binary_data_size and data; send one")
            if size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size} is past the {len(binary) - offset} bytes "
                    f"left after the JSON header"
                )
            array = v2.from_raw(name, binary[offset:offset + size], shape, expected)
            offset += size
        else:
            array = _from_json(name, tensor.get("data"), expected, dtype, count, shape)
        inputs[name] = v2.check_limits(array, expected, spec)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes after the JSON header belong to no input's binary_data_size")
    v2.check_input_set(inputs, spec)
    parameters = _parameters(document, "the request")
    names, binary_outputs = _outputs(document.get("outputs"), spec, _flag(parameters, "binary_data_output", "the request"))
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    decoded = v2.DecodedRequest(inputs, names, _timeout(parameters), _priority(parameters))
    return InferRequest(decoded, request_id, binary_outputs)


def _from_json(name: str, data: Any, expected: TensorSpec, dtype: np.dtype, count: int, shape: tuple[int, ...]) -> np.ndarray:
    if data is None:
        raise InvalidInput(f"input {name!r} has neither data nor parameters.binary_data_size")
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a JSON array (flat or nested)")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged nesting, mixed kinds
        raise InvalidInput(f"input {name!r}: data is not a regular array of numbers") from None
    if values.size != count:
        raise InvalidInput(f"input {name!r}: {values.size} values in data, expected {count} for shape {list(shape)}")
    if count and values.dtype.kind not in _KINDS_FOR[dtype.kind]:
        raise InvalidInput(f"input {name!r}: data holds {_kind_name(values.dtype)}, not {expected.datatype} values")
    if dtype.kind in "iu" and count:
        info = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            raise InvalidInput(f"input {name!r}: values in [{low}, {high}] do not fit {expected.datatype}")
    return values.astype(dtype, copy=False).reshape(shape)


def _kind_name(dtype: np.dtype) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings"}.get(dtype.kind, "non-numbers")


def _outputs(requested: Any, spec: ModelSpec, binary_default: bool) -> tuple[tuple[str, ...], frozenset[str]]:
    if requested is None:
        names = tuple(o.name for o in spec.outputs)
        return names, frozenset(names if binary_default else ())
    if not isinstance(requested, list):
        raise InvalidInput("'outputs' must be a JSON array")
    names, binary = [], set()
    for index, output in enumerate(requested):
        if not isinstance(output, dict):
            raise InvalidInput(f"outputs[{index}] must be a JSON object")
        name = _string(output.get("name"), f"outputs[{index}].name")
        v2.check_output_name(name, spec)
        parameters = _parameters(output, f"output {name!r}")
        if "classification" in parameters and _integer(parameters["classification"], f"output {name!r}: classification"):
            raise InvalidInput(f"output {name!r}: the classification extension is not supported")
        wanted = parameters.get("binary_data")
        if wanted is None:
            wanted = binary_default
        elif not isinstance(wanted, bool):
            raise InvalidInput(f"output {name!r}: binary_data must be true or false")
        names.append(name)
        if wanted:
            binary.add(name)
    return tuple(dict.fromkeys(names)), frozenset(binary)


def _timeout(parameters: Mapping[str, Any]) -> float | None:
    if "timeout" not in parameters:
        return None
    value = _integer(parameters["timeout"], "parameter 'timeout'")
    if value < 0:
        raise InvalidInput("parameter 'timeout' must be >= 0 microseconds")
    return value / 1e6 if value else None


def _priority(parameters: Mapping[str, Any]) -> int | None:
    if "priority" not in parameters:
        return None
    return _integer(parameters["priority"], "parameter 'priority'") or None


def _parameters(holder: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{what}: parameters must be a JSON object")
    return parameters


def _flag(parameters: Mapping[str, Any], key: str, what: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{what}: parameter {key!r} must be true or false")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{what} must be a non-empty string")
    return value


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer")
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or any(isinstance(d, bool) or not isinstance(d, int) for d in value):
        raise InvalidInput(f"input {name!r}: shape must be a JSON array of integers")
    return tuple(value)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + " ..."


# -- responses ---------------------------------------------------------------------------------
def encode_response(
    model_name: str, version: str, request_id: str, outputs: Mapping[str, np.ndarray],
    names: Sequence[str], binary: frozenset[str],
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is all JSON). A binary output is copied
    once, into the body; a JSON one goes through ``tolist`` (JSON is for small tensors)."""
    described: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for name in names:
        array = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {"name": name, "datatype": NUMPY_TO_V2[array.dtype], "shape": list(array.shape)}
        if name in binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            blobs.append(memoryview(array.reshape(-1)).cast("B"))
        else:
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": described}
    if request_id:
        document["id"] = request_id
    header = dumps(document)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def dumps(document: Any) -> bytes:
    """Compact UTF-8 JSON (orjson: 18x faster than json.dumps on an answer's float lists). A NaN or
    infinity becomes null: JSON has no literal for them (json.dumps would write invalid JSON)."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


# -- protobuf messages as Triton's JSON ----------------------------------------------------------
_INT64_TYPES = frozenset(
    {
        _descriptor.FieldDescriptor.TYPE_INT64, _descriptor.FieldDescriptor.TYPE_UINT64,
        _descriptor.FieldDescriptor.TYPE_SINT64, _descriptor.FieldDescriptor.TYPE_FIXED64,
        _descriptor.FieldDescriptor.TYPE_SFIXED64,
    }
)


def message_dict(message: Message) -> dict[str, Any]:
    """A message as Triton's HTTP endpoints write it: proto field names, and 64-bit integers as
    JSON numbers (protobuf's JSON mapping writes them as strings; Triton turns them back, and
    perf_analyzer and tritonclient read numbers, e.g. ``dims`` and statistics counts)."""
    document = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _numbers(message.DESCRIPTOR, document)
    return document


def _numbers(descriptor: _descriptor.Descriptor, document: dict[str, Any]) -> None:
    for field in descriptor.fields:
        if field.name not in document:
            continue
        value = document[field.name]
        if field.type in _INT64_TYPES:
            document[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None:
            sub = field.message_type
            if sub.GetOptions().map_entry:
                value_field = sub.fields_by_name["value"]
                if value_field.message_type is not None:
                    for item in value.values():
                        _numbers(value_field.message_type, item)
                elif value_field.type in _INT64_TYPES:
                    document[field.name] = {k: int(v) for k, v in value.items()}
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        _numbers(sub, item)
            elif isinstance(value, dict):
                _numbers(sub, value)

"""Protobuf bodies of the Tinker wire protocol, through the SDK's own generated module.

``POST /forward_backward`` arrives as a ``tinker_public.ForwardBackwardRequest`` (zstd
compressed only when the server asks for it), and the results of forward_backward and asample
must go back as protobuf: the SDK refuses JSON for those two types.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import zstandard
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from tinker import types
from tinker.proto import tinker_public_pb2 as pb

PROTOBUF = "application/x-protobuf"

_NUMPY_DTYPES: dict[int, type[np.generic]] = {
    pb.DTYPE_FLOAT32: np.float32,
    pb.DTYPE_INT64: np.int64,
}
_TENSOR_DTYPES: dict[int, types.TensorDtype] = {
    pb.DTYPE_FLOAT32: "float32",
    pb.DTYPE_INT64: "int64",
}


class MalformedBody(ValueError):
    """The request body cannot be decoded; answered with 400 before anything is queued."""


class BadTensor(ValueError):
    """A tensor in a decoded request is inconsistent (dtype, shape, byte length)."""


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    if content_encoding is None or content_encoding == "identity":
        return body
    if content_encoding != "zstd":
        raise MalformedBody(f"unsupported Content-Encoding {content_encoding!r}; use zstd")
    try:
        return zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 30)
    except zstandard.ZstdError as error:
        raise MalformedBody(f"the zstd body cannot be decompressed: {error}") from error


def parse_forward_backward(body: bytes) -> pb.ForwardBackwardRequest:
    message = pb.ForwardBackwardRequest()
    try:
        message.ParseFromString(body)
    except DecodeError as error:
        raise MalformedBody(
            f"the body is not a tinker_public.ForwardBackwardRequest protobuf: {error}"
        ) from error
    if not message.model_id:
        raise MalformedBody("ForwardBackwardRequest has no model_id")
    return message


def loss_fn_config(message: pb.ForwardBackwardRequest) -> dict[str, float | str] | None:
    """The request's ``loss_fn_config``, None when it has none. The SDK writes every entry to
    ``loss_fn_config_v2`` (numbers and text) and the numbers also to the legacy
    ``loss_fn_config`` map for older servers; v2 wins when present."""
    if message.loss_fn_config_v2:
        config: dict[str, float | str] = {}
        for key, value in message.loss_fn_config_v2.items():
            config[key] = value.text if value.WhichOneof("value") == "text" else value.number
        return config
    if message.loss_fn_config:
        return {key: float(value) for key, value in message.loss_fn_config.items()}
    return None


def _tensor(message: pb.Tensor, where: str) -> types.TensorData:
    dtype = _TENSOR_DTYPES.get(message.dtype)
    if dtype is None:
        raise BadTensor(f"{where}: dtype {message.dtype} is not FLOAT32 (1) or INT64 (2)")
    numpy_dtype = _NUMPY_DTYPES[message.dtype]
    shape = list(message.shape)
    if message.HasField("sparse_csr"):
        raise BadTensor(f"{where}: sparse tensors are not supported by this server")
    raw = message.dense
    itemsize = np.dtype(numpy_dtype).itemsize
    if len(raw) % itemsize:
        raise BadTensor(f"{where}: {len(raw)} bytes is not a whole number of {dtype} values")
    data = np.frombuffer(raw, dtype=numpy_dtype).copy()
    if shape and int(np.prod(shape)) != data.size:
        raise BadTensor(f"{where}: shape {shape} does not hold {data.size} values")
    if dtype == "float32" and not np.all(np.isfinite(data)):
        raise BadTensor(f"{where}: contains NaN or infinity")
    return types.TensorData(data=data, dtype=dtype, shape=shape or [data.size])


def datums(message: pb.ForwardBackwardRequest) -> list[types.Datum]:
    """The request's data as SDK Datums (text chunks only; images and audio are refused)."""
    result: list[types.Datum] = []
    for index, datum in enumerate(message.data):
        tokens: list[int] = []
        for chunk in datum.model_input:
            if chunk.WhichOneof("chunk") != "encoded_text":
                raise BadTensor(f"datum {index}: only encoded_text chunks are supported")
            raw = chunk.encoded_text.tokens
            if len(raw) % 4:
                raise BadTensor(f"datum {index}: token bytes are not whole int32 values")
            tokens.extend(np.frombuffer(raw, dtype=np.int32).tolist())
        inputs = {
            name: _tensor(tensor, f"datum {index} loss_fn_inputs[{name!r}]")
            for name, tensor in datum.loss_fn_inputs.items()
        }
        result.append(
            types.Datum(model_input=types.ModelInput.from_ints(tokens), loss_fn_inputs=inputs)
        )
    return result


def encode_forward_backward_output(output: types.ForwardBackwardOutput) -> bytes:
    """One ArrayRecord: each field is every datum's flat values concatenated, with int64 byte
    offsets marking where each datum starts (n + 1 of them)."""
    message = pb.ForwardBackwardOutput(loss_fn_output_type=output.loss_fn_output_type)
    for key, value in output.metrics.items():
        message.metrics[key] = float(value)
    outputs = output.loss_fn_outputs
    if outputs:
        record = message.loss_fn_outputs.add(num_datums=len(outputs))
        for name in outputs[0]:
            arrays = [np.asarray(datum[name].data).reshape(-1) for datum in outputs]
            is_float = outputs[0][name].dtype == "float32"
            numpy_dtype = np.float32 if is_float else np.int64
            flat = [array.astype(numpy_dtype) for array in arrays]
            offsets = np.cumsum([0] + [array.nbytes for array in flat], dtype=np.int64)
            field = record.fields[name]
            field.dtype = pb.DTYPE_FLOAT32 if is_float else pb.DTYPE_INT64
            field.data = b"".join(array.tobytes() for array in flat)
            field.offsets = offsets.tobytes()
    encoded: bytes = message.SerializeToString()
    return encoded


def encode_sample_response(
    response: types.SampleResponse, prompt_logprobs: Sequence[float | None] | None
) -> bytes:
    """Sequences (tokens int32, logprobs float32) and prompt logprobs (NaN for none). Sequence
    ids travel in the asample answer, not here."""
    message = pb.SampleResponse()
    for sequence in response.sequences:
        item = message.sequences.add(
            stop_reason=pb.STOP_REASON_STOP
            if sequence.stop_reason == "stop"
            else pb.STOP_REASON_LENGTH
        )
        item.tokens = np.asarray(sequence.tokens, dtype=np.int32).tobytes()
        if sequence.logprobs is not None:
            item.logprobs = np.asarray(sequence.logprobs, dtype=np.float32).tobytes()
    if prompt_logprobs is not None:
        values = [np.nan if value is None else value for value in prompt_logprobs]
        message.prompt_logprobs = np.asarray(values, dtype=np.float32).tobytes()
    encoded: bytes = message.SerializeToString()
    return encoded


def training_turn(
    body: bytes, content_type: str, content_encoding: str | None
) -> tuple[str, int] | None:
    """``(model_id, seq_id)`` named by a training request's body, if it names them: what a
    refused request used up. None for a body that names no turn (or cannot be read at all)."""
    if content_type.startswith(PROTOBUF):
        try:
            message = pb.ForwardBackwardRequest()
            message.ParseFromString(decode_body(body, content_encoding))
        except (MalformedBody, DecodeError):
            return None
        return (message.model_id, message.seq_id) if message.model_id and message.seq_id else None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    model_id, seq_id = parsed.get("model_id"), parsed.get("seq_id")
    if isinstance(model_id, str) and isinstance(seq_id, int) and not isinstance(seq_id, bool):
        return model_id, seq_id
    return None

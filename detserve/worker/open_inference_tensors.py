"""The Open Inference Protocol's infer exchange, worker side: a request body in, tensors out.

A request is a JSON object, or (the binary tensor data extension, which
tritonclient uses by default) that JSON followed by raw tensor bytes, the
JSON's length given by the Inference-Header-Content-Length header, which the
front end passes on as an int. The one input is IMAGE, BYTES, shape [N]: N
encoded images. In binary form each element is a 4-byte little-endian length
and the bytes; in JSON form it is base64 text (KServe's convention, since
JSON strings cannot hold arbitrary bytes).

Every size a client declares (header length, binary_data_size, an element's
length, the shape) is checked against the body actually received before it
is used, and nothing is allocated from a declared size: a request can only
make the worker slice the bytes it already holds. Every malformed request is
a Refusal naming what is wrong.

The answer carries the detections as the signature's outputs, JSON unless the
request asked for binary (per output, or binary_data_output for all).
"""

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

from ..open_inference_signature import (BINARY_MEDIA_TYPE, HEADER_LENGTH_FIELD, IMAGE_INPUT, MODEL_VERSION,
                                        OUTPUT_NAMES, OUTPUTS)
from ..protocol import JSON_MEDIA_TYPE, MAX_IMAGE_ID_CHARS
from ..refusals import bad_request, too_large

OPTION_PARAMETERS = ("confidence", "nms", "classes", "max_detections")  # validated as the native options
BINARY_OUTPUT_PARAMETER = "binary_data_output"
REQUEST_PARAMETERS = (*OPTION_PARAMETERS, BINARY_OUTPUT_PARAMETER)
INPUT_PARAMETERS = ("binary_data_size",)
OUTPUT_PARAMETERS = ("binary_data",)
# '{', '[' and ',' a well-formed request can hold: the objects, shape and parameters take
# about 40, "classes" listing all 80 labels about 80, and the JSON form's data one comma
# per image. Counting them first (in C) keeps a body of `[[[[...` or `{},{},...` from
# costing json.loads hundreds of megabytes.
JSON_STRUCTURE_ALLOWANCE = 256
ELEMENT_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix
WHITESPACE = re.compile(rb"\s+")
OUTPUT_SPECS = {output.name: output for output in OUTPUTS}


@dataclass(frozen=True)
class RequestedOutput:
    name: str  # one of OUTPUT_NAMES
    binary: bool  # after the JSON header as raw bytes, rather than as JSON data


@dataclass(frozen=True)
class InferenceRequest:
    request_id: Optional[str]  # the request's "id", echoed in the answer
    images: Tuple[bytes, ...]  # the IMAGE elements, encoded JPEG or PNG, in order
    option_fields: dict  # the detection options among the parameters, unvalidated
    outputs: Tuple[RequestedOutput, ...]  # what the answer holds, in this order


@dataclass(frozen=True)
class InferenceAnswer:
    body: bytes
    content_type: str
    header_length: Optional[int]  # the JSON's length when binary tensors follow it, else None

    def headers(self):
        """The headers the answer needs beside Content-Type and Content-Length."""
        if self.header_length is None:
            return ()
        return ((HEADER_LENGTH_FIELD, str(self.header_length)),)


# -- the request ------------------------------------------------------------------------------------
def parse_infer_request(body, header_length, max_images):
    """The InferenceRequest a body carries, or raise Refusal.

    header_length: the Inference-Header-Content-Length value as an int, None when absent.
    """
    header_bytes, tensor_bytes = split_body(body, header_length)
    request = load_header(header_bytes, max_images)
    image_input = the_image_input(request)
    count = image_count(image_input, max_images)
    images = read_images(image_input, count, tensor_bytes)
    option_fields, binary_by_default = request_parameters(request)
    outputs = requested_outputs(request.get("outputs"), binary_by_default)
    return InferenceRequest(request_id(request), images, option_fields, outputs)


def split_body(body, header_length):
    """(the JSON header's bytes, a view of the tensor bytes after it, or None when unframed)."""
    if header_length is None:
        return body, None
    if isinstance(header_length, bool) or not isinstance(header_length, int) or header_length < 1:
        raise bad_request(f"{HEADER_LENGTH_FIELD} must be a positive number of bytes, not {header_length!r}")
    if header_length > len(body):
        raise bad_request(f"{HEADER_LENGTH_FIELD} is {header_length:,} bytes, past the end of the "
                           f"{len(body):,}-byte body")
    view = memoryview(body)
    return bytes(view[:header_length]), view[header_length:]


def load_header(header_bytes, max_images):
    """The request's JSON object, refusing any other shape before json.loads sees it."""
    allowance = JSON_STRUCTURE_ALLOWANCE + max_images
    structure = sum(header_bytes.count(mark) for mark in (b"{", b"[", b","))
    if structure > allowance:
        raise bad_request(f"the JSON has {structure:,} objects, arrays or commas, more than the {allowance:,} "
                           "an inference request with one IMAGE input needs")
    # A JSON object with bytes after it is most likely binary tensors sent without the header.
    hint = f"; is {HEADER_LENGTH_FIELD} missing or wrong?" if header_bytes[:1] == b"{" else ""
    try:
        request = json.loads(header_bytes)
    except UnicodeDecodeError:
        raise bad_request(f"the inference request is not valid UTF-8 JSON{hint}") from None
    except ValueError as exc:
        raise bad_request(f"the inference request is not valid JSON ({exc}){hint}") from None
    except RecursionError:
        raise bad_request("the inference request's JSON is nested too deeply") from None
    if not isinstance(request, dict):
        raise bad_request('the inference request must be a JSON object {"inputs": [...]}')
    return request


def the_image_input(request):
    """The request's one input, checked to be IMAGE of datatype BYTES."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        got = f"{len(inputs)} inputs" if isinstance(inputs, list) else f'"inputs" of {type(inputs).__name__}'
        raise bad_request(f'"inputs" must list the model\'s one input, {IMAGE_INPUT.name} '
                           f"({IMAGE_INPUT.datatype}, shape [N]); the request has {got}")
    image_input = inputs[0]
    if image_input.get("name") != IMAGE_INPUT.name:
        raise bad_request(f"unknown input {shorten(image_input.get('name'))}; the model's one input is "
                           f"{IMAGE_INPUT.name} ({IMAGE_INPUT.datatype}, shape [N])")
    if image_input.get("datatype") != IMAGE_INPUT.datatype:
        raise bad_request(f"{IMAGE_INPUT.name} has datatype {shorten(image_input.get('datatype'))}; it must be "
                           f"{IMAGE_INPUT.datatype} (one encoded JPEG or PNG per element)")
    return image_input


def image_count(image_input, max_images):
    """N, from IMAGE's shape [N], within 1..max_images."""
    shape = image_input.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1 and is_integer(shape[0])):
        raise bad_request(f"{IMAGE_INPUT.name}'s shape must be [N], N the number of images, not {shorten(shape)}")
    count = shape[0]
    if count < 1:
        raise bad_request(f"{IMAGE_INPUT.name}'s shape is [{count}]; send at least one image")
    if count > max_images:
        raise too_large(f"{IMAGE_INPUT.name}'s shape is [{count:,}], more than the {max_images} images "
                           "allowed in one request (--max-images); split the request")
    return count


def read_images(image_input, count, tensor_bytes):
    """The count images of IMAGE, from the binary data after the header or from its JSON data."""
    parameters = checked_parameters(image_input.get("parameters"), INPUT_PARAMETERS,
                                    f"parameter of input {IMAGE_INPUT.name}")
    if "binary_data_size" in parameters:
        if "data" in image_input:
            raise bad_request(f'{IMAGE_INPUT.name} has both "data" and binary_data_size; send one')
        if tensor_bytes is None:
            raise bad_request(f"{IMAGE_INPUT.name} declares binary_data_size but the request has no "
                               f"{HEADER_LENGTH_FIELD} header to say where its JSON ends")
        size = parameters["binary_data_size"]
        if not is_integer(size) or size != len(tensor_bytes):
            raise bad_request(f"{IMAGE_INPUT.name}'s binary_data_size is {shorten(size)} but "
                               f"{len(tensor_bytes):,} bytes follow the JSON header")
        return split_elements(tensor_bytes, count)
    if tensor_bytes:
        raise bad_request(f"{len(tensor_bytes):,} bytes follow the JSON header but no input declares "
                           "binary_data_size")
    if "data" not in image_input:
        raise bad_request(f'{IMAGE_INPUT.name} has neither "data" nor binary_data_size')
    return decode_data(image_input["data"], count)


def split_elements(view, count):
    """The count BYTES elements in view (a 4-byte little-endian length, then the bytes, each)."""
    images, offset, end = [], 0, len(view)
    for index in range(count):
        if end - offset < ELEMENT_LENGTH.size:
            raise bad_request(f"{IMAGE_INPUT.name}'s binary data holds {index} elements; its shape says {count}")
        (length,) = ELEMENT_LENGTH.unpack_from(view, offset)
        offset += ELEMENT_LENGTH.size
        if length > end - offset:
            raise bad_request(f"{IMAGE_INPUT.name} element {index} claims {length:,} bytes but only "
                               f"{end - offset:,} remain in the body")
        if length == 0:
            raise bad_request(f"{IMAGE_INPUT.name} element {index} is empty; send the JPEG or PNG bytes")
        images.append(bytes(view[offset:offset + length]))
        offset += length
    if offset != end:
        raise bad_request(f"{IMAGE_INPUT.name}'s binary data has {end - offset:,} bytes after the {count} "
                           "elements its shape declares")
    return tuple(images)


def decode_data(data, count):
    """The count images of a JSON-form IMAGE: one base64 string per element."""
    if not isinstance(data, list):
        raise bad_request(f'{IMAGE_INPUT.name}\'s "data" must be a list of base64 strings')
    if len(data) != count:
        raise bad_request(f"{IMAGE_INPUT.name}'s shape is [{count}] but its data has {len(data)} elements")
    return tuple(decode_base64_element(index, element) for index, element in enumerate(data))


def decode_base64_element(index, element):
    what = f"{IMAGE_INPUT.name} element {index}"
    if not isinstance(element, str):
        raise bad_request(f"{what} must be base64 text of the image, not {type(element).__name__}")
    try:
        raw = element.encode("ascii")
    except UnicodeEncodeError:
        raise bad_request(f"{what} is not base64 (it has non-ASCII characters); with binary_data=False "
                           "send base64 of the image bytes") from None
    try:
        decoded = base64.b64decode(raw, validate=True)
    except binascii.Error:
        # The strict pass failed: allow MIME line breaks and missing padding, nothing else.
        cleaned = WHITESPACE.sub(b"", raw)
        try:
            decoded = base64.b64decode(cleaned + b"=" * (-len(cleaned) % 4), validate=True)
        except binascii.Error:
            raise bad_request(f"{what} is not valid base64") from None
    if not decoded:
        raise bad_request(f"{what} is empty; send the JPEG or PNG bytes")
    return decoded


def request_parameters(request):
    """(the detection option fields, binary_data_output) of the request's parameters."""
    parameters = checked_parameters(request.get("parameters"), REQUEST_PARAMETERS, "request parameter")
    binary_by_default = parameters.pop(BINARY_OUTPUT_PARAMETER, False)
    if not isinstance(binary_by_default, bool):
        raise bad_request(f"the {BINARY_OUTPUT_PARAMETER} parameter must be true or false, "
                           f"not {shorten(binary_by_default)}")
    return parameters, binary_by_default


def requested_outputs(outputs, binary_by_default):
    """The outputs the request names, each binary or not; all of them when it names none."""
    if outputs is None or outputs == []:
        return tuple(RequestedOutput(name, binary_by_default) for name in OUTPUT_NAMES)
    if not isinstance(outputs, list) or not all(isinstance(output, dict) for output in outputs):
        raise bad_request('"outputs" must be a list of {"name": ...} objects')
    chosen = []
    for output in outputs:
        name = output.get("name")
        if name not in OUTPUT_NAMES:
            raise bad_request(f"unknown output {shorten(name)}; the outputs are {', '.join(OUTPUT_NAMES)}")
        if any(name == earlier.name for earlier in chosen):
            raise bad_request(f"output {name} is requested twice")
        parameters = checked_parameters(output.get("parameters"), OUTPUT_PARAMETERS, f"parameter of output {name}")
        binary = parameters.get("binary_data", binary_by_default)
        if not isinstance(binary, bool):
            raise bad_request(f"output {name}'s binary_data must be true or false, not {shorten(binary)}")
        chosen.append(RequestedOutput(name, binary))
    return tuple(chosen)


def request_id(request):
    if "id" not in request:
        return None
    value = request["id"]
    if not isinstance(value, str) or len(value) > MAX_IMAGE_ID_CHARS:
        raise bad_request(f'the request\'s "id" must be a string of at most {MAX_IMAGE_ID_CHARS} characters')
    return value


def checked_parameters(parameters, accepted, what):
    """A copy of a parameters object, refusing it whole if it names one not in accepted."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise bad_request(f'"parameters" must be an object, not {type(parameters).__name__}')
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        shown = ", ".join(shorten(name) for name in unknown[:5])
        raise bad_request(f"unknown {what}{'s' if len(unknown) > 1 else ''} {shown}; "
                           f"accepted: {', '.join(accepted)}")
    return dict(parameters)


def is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def shorten(value):
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


# -- the answer -------------------------------------------------------------------------------------
def build_answer(detections_per_image, labels, outputs, model_name, request_id=None, model_version=MODEL_VERSION):
    """The InferenceAnswer for one request: each image's detections as the requested outputs.

    detections_per_image: one list per image of objects with .label, .confidence and
    .bbox = (x, y, w, h) in the image's pixels; labels: the model's labels, in class order.
    """
    tensors = detection_tensors(detections_per_image, labels)
    entries, blobs = [], []
    for output in outputs:
        datatype = OUTPUT_SPECS[output.name].datatype
        shape, values = tensors[output.name]
        entry = {"name": output.name, "datatype": datatype, "shape": shape}
        if output.binary:
            blob = pack_tensor(datatype, values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = values
        entries.append(entry)
    head = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        head["id"] = request_id
    head["outputs"] = entries
    header = json.dumps(head).encode()
    if not any(output.binary for output in outputs):
        return InferenceAnswer(header, JSON_MEDIA_TYPE, None)
    return InferenceAnswer(header + b"".join(blobs), BINARY_MEDIA_TYPE, len(header))


def detection_tensors(detections_per_image, labels):
    """{output name: (shape, row-major values)}, K the largest count, rows past a count zeroed."""
    class_index = {label: index for index, label in enumerate(labels)}
    counts = [len(detections) for detections in detections_per_image]
    n, k = len(counts), max(counts, default=0)
    boxes, scores, classes, names = [], [], [], []
    for detections in detections_per_image:
        for detection in detections:
            x, y, w, h = detection.bbox
            boxes.extend((x, y, x + w, y + h))
            scores.append(detection.confidence)
            classes.append(class_index[detection.label])
            names.append(detection.label)
        padding = k - len(detections)
        boxes.extend([0] * (4 * padding))
        scores.extend([0] * padding)
        classes.extend([0] * padding)
        names.extend([""] * padding)
    return {"num_detections": ([n], counts), "detection_boxes": ([n, k, 4], as_float32(boxes)),
            "detection_scores": ([n, k], as_float32(scores)), "detection_classes": ([n, k], classes),
            "detection_labels": ([n, k], names)}


def as_float32(values):
    """values rounded to float32, so a JSON answer holds exactly what a binary one does."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def pack_tensor(datatype, values):
    """The binary form of a flat tensor: little-endian, row-major, BYTES length-prefixed."""
    if datatype == "FP32":
        return struct.pack(f"<{len(values)}f", *values)
    if datatype == "INT32":
        return struct.pack(f"<{len(values)}i", *values)
    encoded = [value.encode() for value in values]
    return b"".join(ELEMENT_LENGTH.pack(len(element)) + element for element in encoded)

"""The Open Inference Protocol's infer exchange in the worker, without a server: requests built by
tritonclient itself parse into the exact image bytes, answers parse back with tritonclient's own
InferResult into the detections they were built from, and every hostile body is a 4xx Refusal.
"""

import base64
import functools
import json
import random
import struct
import tracemalloc

import cv2
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from detserve.model_files import DEFAULT_MODEL_DIR, DEFAULT_MODELS, parse_model_choice
from detserve.refusals import Refusal
from detserve.worker.detection_options import DetectionOptions, resolve
from detserve.worker.detector import Detection, Detector, PostProcessing
from detserve.worker.open_inference_tensors import (OUTPUT_NAMES, InferenceRequest, RequestedOutput, build_answer,
                                            parse_infer_request)
from support import image_bytes

MAX_IMAGES = 8
THREE_IMAGES = ("camera.jpg", "chelsea.jpg", "astronaut.jpg")
MUTATION_SEED = 20261205
MUTATIONS = 20_000  # about 2 s here; a fixed count, so every run tries the same bodies


# -- requests as tritonclient builds them ------------------------------------------------------------
def triton_request(images, binary=True, outputs=None, request_id="", parameters=None):
    """(body, Inference-Header-Content-Length or None): tritonclient's own bytes for this request."""
    image_input = triton.InferInput("IMAGE", [len(images)], "BYTES")
    data = images if binary else [base64.b64encode(image) for image in images]
    image_input.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
    return triton.InferenceServerClient.generate_request_body(
        [image_input], outputs=outputs, request_id=request_id, parameters=parameters)


def framed(header, tensor_bytes=b""):
    """A body of the header object's JSON then tensor_bytes, and its header length (None if unframed)."""
    head = json.dumps(header).encode()
    return head + tensor_bytes, (len(head) if tensor_bytes else None)


def elements(*items):
    """BYTES elements in binary form: each a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def binary_header(shape, size, **input_fields):
    image_input = {"name": "IMAGE", "shape": shape, "datatype": "BYTES", "parameters": {"binary_data_size": size}}
    image_input.update(input_fields)
    return {"inputs": [image_input]}


def json_header(data, shape=None, **request_fields):
    header = {"inputs": [{"name": "IMAGE", "shape": shape or [len(data)], "datatype": "BYTES", "data": data}]}
    header.update(request_fields)
    return header


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "base64"])
@pytest.mark.parametrize("names", [THREE_IMAGES[:1], THREE_IMAGES], ids=["N=1", "N=3"])
def test_a_tritonclient_request_gives_back_the_exact_image_bytes(binary, names):
    images = [image_bytes(name) for name in names]
    body, header_length = triton_request(images, binary=binary, request_id="req-42")
    assert (header_length is not None) == binary
    request = parse_infer_request(body, header_length, MAX_IMAGES)
    assert request.images == tuple(images)
    assert request.request_id == "req-42"
    # tritonclient asks for every output in binary when it names none.
    assert request.outputs == tuple(RequestedOutput(name, True) for name in OUTPUT_NAMES)


def test_the_detection_options_travel_as_parameters_and_are_validated_as_the_native_ones():
    parameters = {"confidence": 0.5, "nms": 0.4, "classes": "person,cat", "max_detections": 3}
    body, header_length = triton_request([image_bytes("camera.jpg")], parameters=parameters)
    request = parse_infer_request(body, header_length, MAX_IMAGES)
    assert request.option_fields == parameters
    labels_by_model = {"tiny": ("person", "cat", "dog")}
    base = DetectionOptions(model="tiny", confidence=0.3, nms=0.1)
    options = resolve(base, request.option_fields, labels_by_model)
    assert options == DetectionOptions("tiny", 0.5, 0.4, classes=frozenset({"person", "cat"}), max_detections=3)
    for bad in ({"confidence": 2}, {"classes": "unicorn"}, {"max_detections": 0}):
        body, header_length = triton_request([image_bytes("camera.jpg")], parameters=bad)
        fields = parse_infer_request(body, header_length, MAX_IMAGES).option_fields
        with pytest.raises(Refusal) as refused:
            resolve(base, fields, labels_by_model)
        assert refused.value.status == 400


def test_only_the_named_outputs_are_asked_for_each_binary_or_not_in_the_request_order():
    outputs = [triton.InferRequestedOutput("detection_labels", binary_data=False),
               triton.InferRequestedOutput("num_detections")]
    body, header_length = triton_request([image_bytes("camera.jpg")], outputs=outputs)
    request = parse_infer_request(body, header_length, MAX_IMAGES)
    assert request.outputs == (RequestedOutput("detection_labels", False), RequestedOutput("num_detections", True))
    assert request.request_id is None


def test_binary_data_output_is_the_default_an_output_own_binary_data_overrides():
    header = json_header([base64.b64encode(b"img").decode()], parameters={"binary_data_output": True},
                         outputs=[{"name": "detection_scores", "parameters": {"binary_data": False}},
                                  {"name": "detection_boxes"}])
    request = parse_infer_request(*framed(header), MAX_IMAGES)
    assert request.outputs == (RequestedOutput("detection_scores", False), RequestedOutput("detection_boxes", True))
    plain = parse_infer_request(*framed(json_header([base64.b64encode(b"img").decode()])), MAX_IMAGES)
    assert plain.outputs == tuple(RequestedOutput(name, False) for name in OUTPUT_NAMES)


# -- answers, read back with tritonclient's InferResult --------------------------------------------
@functools.lru_cache(maxsize=1)
def detector():
    return Detector(DEFAULT_MODEL_DIR, parse_model_choice(DEFAULT_MODELS))


def real_detections(names):
    """The model's detections on inputfolder images, and on a blank image (none) after them."""
    pictures = [cv2.imdecode(np.frombuffer(image_bytes(name), np.uint8), cv2.IMREAD_COLOR) for name in names]
    pictures.append(np.full((300, 400, 3), 127, np.uint8))
    return detector().detect_batch(pictures, None, [PostProcessing(0.3, 0.1)] * len(pictures))


def expected_tensors(detections_per_image, labels):
    """The outputs the detections should give, computed with numpy from the Detection objects."""
    n, k = len(detections_per_image), max(len(d) for d in detections_per_image)
    tensors = {"num_detections": np.array([len(d) for d in detections_per_image], np.int32),
               "detection_boxes": np.zeros((n, k, 4), np.float32), "detection_scores": np.zeros((n, k), np.float32),
               "detection_classes": np.zeros((n, k), np.int32), "detection_labels": np.full((n, k), "", object)}
    for i, detections in enumerate(detections_per_image):
        for j, detection in enumerate(detections):
            x, y, w, h = detection.bbox
            tensors["detection_boxes"][i, j] = (x, y, x + w, y + h)
            tensors["detection_scores"][i, j] = detection.confidence
            tensors["detection_classes"][i, j] = labels.index(detection.label)
            tensors["detection_labels"][i, j] = detection.label
    return tensors


def read_back(answer):
    """tritonclient's InferResult for an answer, given the header length the front end would send."""
    return triton.InferenceServerClient.parse_response_body(answer.body, header_length=answer.header_length)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_the_answer_reads_back_in_tritonclient_as_the_detections_it_was_built_from(binary):
    detections = real_detections(THREE_IMAGES)
    assert detections[0] and not detections[-1]  # the cameraman is found; the blank image has nothing
    labels = detector().labels
    outputs = tuple(RequestedOutput(name, binary) for name in OUTPUT_NAMES)
    answer = build_answer(detections, labels, outputs, "yolov3-tiny", request_id="req-7")
    assert (answer.header_length is not None) == binary
    assert answer.content_type == ("application/octet-stream" if binary else "application/json")
    result = read_back(answer)
    expected = expected_tensors(detections, labels)
    for name in OUTPUT_NAMES:
        got = result.as_numpy(name)
        if name == "detection_labels" and binary:
            got = np.vectorize(bytes.decode, otypes=[object])(got)
        assert got.dtype == expected[name].dtype and got.shape == expected[name].shape, name
        assert (got == expected[name]).all(), name
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("yolov3-tiny", "1", "req-7")


def test_binary_and_json_answers_hold_the_same_values():
    detections, labels = real_detections(THREE_IMAGES[:1]), detector().labels
    answers = [read_back(build_answer(detections, labels, tuple(RequestedOutput(name, binary) for name in OUTPUT_NAMES),
                                      "m")) for binary in (True, False)]
    for name in ("num_detections", "detection_boxes", "detection_scores", "detection_classes"):
        assert np.array_equal(answers[0].as_numpy(name), answers[1].as_numpy(name)), name


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_no_detections_anywhere_gives_k_zero_tensors_tritonclient_reads(binary):
    outputs = tuple(RequestedOutput(name, binary) for name in OUTPUT_NAMES)
    result = read_back(build_answer([[], []], ("person",), outputs, "m"))
    assert result.as_numpy("num_detections").tolist() == [0, 0]
    assert result.as_numpy("detection_boxes").shape == (2, 0, 4)
    for name in ("detection_scores", "detection_classes", "detection_labels"):
        assert result.as_numpy(name).shape == (2, 0), name


def test_only_the_requested_outputs_are_in_the_answer_mixed_binary_and_json():
    detections = [[Detection("cat", 0.75, (10, 20, 30, 40))]]
    outputs = (RequestedOutput("detection_labels", False), RequestedOutput("detection_boxes", True))
    answer = build_answer(detections, ("person", "cat"), outputs, "m")
    result = read_back(answer)
    assert [output["name"] for output in result.get_response()["outputs"]] == ["detection_labels", "detection_boxes"]
    assert result.as_numpy("detection_labels").tolist() == [["cat"]]
    assert result.as_numpy("detection_boxes").tolist() == [[[10, 20, 40, 60]]]
    assert result.as_numpy("num_detections") is None
    assert "id" not in result.get_response()  # none was sent, so none is echoed


# -- hostile bodies: each a 4xx Refusal, nothing allocated from a declared size ------------------------
ONE = elements(b"\xff\xd8jpeg")
HOSTILE = {
    "header length past the body": (framed(binary_header([1], len(ONE)), ONE)[0], 10_000, 400, "past the end"),
    "header length claims 2 GB": (framed(binary_header([1], len(ONE)), ONE)[0], 2**31, 400, "past the end"),
    "header length zero": (framed(binary_header([1], len(ONE)), ONE)[0], 0, 400, "positive"),
    "header length cuts the JSON": (framed(binary_header([1], len(ONE)), ONE)[0], 20, 400, "not valid JSON"),
    "binary_data_size one short": (*framed(binary_header([1], len(ONE) - 1), ONE), 400, "follow the JSON"),
    "binary_data_size claims 2 GB": (*framed(binary_header([1], 2**31), ONE), 400, "follow the JSON"),
    "binary_data_size not a number": (*framed(binary_header([1], "7"), ONE), 400, "binary_data_size"),
    "binary_data_size without framing": (framed(binary_header([1], 10))[0], None, 400, "Inference-Header"),
    "bytes no input claims": (*framed(json_header(["aGk="]), ONE), 400, "no input declares"),
    "shape says more than the data": (*framed(binary_header([3], len(ONE)), ONE), 400, "holds 1 elements"),
    "shape says fewer than the data": (*framed(binary_header([1], 2 * len(ONE)), ONE * 2), 400, "after the 1"),
    "json data longer than the shape": (framed(json_header(["aGk=", "aGk="], shape=[1]))[0], None, 400,
                                        "has 2 elements"),
    "element length overflows": (*framed(binary_header([1], 8), struct.pack("<I", 2**32 - 1) + b"abcd"), 400,
                                 "claims 4,294,967,295 bytes"),
    "element length one past": (*framed(binary_header([1], 8), struct.pack("<I", 5) + b"abcd"), 400, "claims 5"),
    "element length cut": (*framed(binary_header([1], 7), struct.pack("<I", 6) + b"abc"), 400, "only 3 remain"),
    "empty element": (*framed(binary_header([1], 4), elements(b"")), 400, "empty"),
    "N past the limit": (*framed(binary_header([MAX_IMAGES + 1], len(ONE)), ONE), 413, "--max-images"),
    "N of 2**31": (*framed(binary_header([2**31], len(ONE)), ONE), 413, "--max-images"),
    "N zero": (*framed(binary_header([0], len(ONE)), ONE), 400, "at least one"),
    "N negative": (*framed(binary_header([-1], len(ONE)), ONE), 400, "at least one"),
    "two dimensions": (*framed(binary_header([1, 1], len(ONE)), ONE), 400, "shape must be [N]"),
    "shape of text": (*framed(binary_header(["1"], len(ONE)), ONE), 400, "shape must be [N]"),
    "shape of a boolean": (*framed(binary_header([True], len(ONE)), ONE), 400, "shape must be [N]"),
    "wrong datatype": (*framed(binary_header([1], len(ONE), datatype="UINT8"), ONE), 400, "datatype 'UINT8'"),
    "wrong input name": (*framed(binary_header([1], len(ONE), name="INPUT0"), ONE), 400, "unknown input 'INPUT0'"),
    "two inputs": (framed({"inputs": [json_header(["aGk="])["inputs"][0]] * 2})[0], None, 400, "2 inputs"),
    "no inputs": (b'{"id": "x"}', None, 400, '"inputs"'),
    "data and binary_data_size": (*framed(binary_header([1], len(ONE), data=["aGk="]), ONE), 400, "both"),
    "neither data nor size": (b'{"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES"}]}', None, 400,
                              "neither"),
    "shared memory": (*framed(binary_header([1], len(ONE), parameters={"shared_memory_region": "r"}), ONE),
                      400, "'shared_memory_region'"),
    "unknown parameters named": (framed(json_header(["aGk="], parameters={"priority": 1, "zoom": 2}))[0], None,
                                 400, "'priority', 'zoom'"),
    "binary_data_output not a boolean": (framed(json_header(["aGk="], parameters={"binary_data_output": 1}))[0],
                                         None, 400, "true or false"),
    "unknown output": (framed(json_header(["aGk="], outputs=[{"name": "masks"}]))[0], None, 400, "'masks'"),
    "output twice": (framed(json_header(["aGk="], outputs=[{"name": "num_detections"}] * 2))[0], None, 400,
                     "twice"),
    "classification output": (framed(json_header(["aGk="], outputs=[{"name": "num_detections", "parameters":
                                                                     {"classification": 3}}]))[0], None, 400,
                              "'classification'"),
    "element not text": (framed(json_header([12]))[0], None, 400, "base64 text"),
    "element not base64": (framed(json_header(["not base64!"]))[0], None, 400, "not valid base64"),
    "element not ascii": (framed(json_header(["ü"]))[0], None, 400, "non-ASCII"),
    "element empty": (framed(json_header([""]))[0], None, 400, "empty"),
    "id not text": (framed(json_header(["aGk="], id=7))[0], None, 400, '"id"'),
    "not JSON": (b"\xff\xd8\xff\xe0 a raw JPEG", None, 400, "not valid UTF-8"),
    "binary body without the header": (framed(binary_header([1], len(ONE)), ONE)[0], None, 400,
                                       "Inference-Header-Content-Length missing"),
    "not an object": (b"[1, 2]", None, 400, "JSON object"),
    "nested deep": (b"[" * 100_000 + b"]" * 100_000, None, 400, "objects, arrays or commas"),
    "objects flood": (b'{"inputs": [' + b"{}," * 100_000 + b"{}]}", None, 400, "objects, arrays or commas"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_body_is_refused_naming_what_is_wrong(case):
    body, header_length, status, words = HOSTILE[case]
    tracemalloc.start()
    try:
        with pytest.raises(Refusal) as refused:
            parse_infer_request(body, header_length, MAX_IMAGES)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (refused.value.status, words in refused.value.message) == (status, True), refused.value.message
    assert peak_bytes < 4 * len(body) + 1_000_000  # never the 2 GB or 4 GB a declared size claims


def test_the_parser_only_returns_or_refuses_whatever_the_bytes():
    """A fixed-seed loop of damaged tritonclient bodies: a result or a 4xx Refusal, nothing else."""
    rng = random.Random(MUTATION_SEED)
    seeds = [triton_request([b"\xff\xd8one", b"\x89PNGtwo"], binary=binary, request_id="r",
                            outputs=[triton.InferRequestedOutput("num_detections")],
                            parameters={"confidence": 0.5}) for binary in (True, False)]
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(MUTATIONS):
        body, header_length = rng.choice(seeds)
        damage = rng.choice((damage_bytes, damage_json))
        body, header_length = damage(rng, bytearray(body), header_length)
        try:
            request = parse_infer_request(bytes(body), header_length, MAX_IMAGES)
        except Refusal as refusal:
            assert 400 <= refusal.status < 500 and refusal.message
            outcomes["refused"] += 1
            continue
        assert isinstance(request, InferenceRequest)
        assert 1 <= len(request.images) <= MAX_IMAGES and all(request.images)
        outcomes["parsed"] += 1
    assert min(outcomes.values()) > MUTATIONS // 50  # the loop reaches both ends, not only the first check


def damage_bytes(rng, body, header_length):
    """Bytes changed, inserted or cut, an element's length rewritten, or the header length moved."""
    choice = rng.randrange(6)
    if choice == 0:
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    elif choice == 1:
        at = rng.randrange(len(body) + 1)
        body[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif choice == 2:
        del body[rng.randrange(len(body)):]
    elif choice == 3 and header_length is not None:
        header_length += rng.choice((-1, 1, -10, 10, 2**31, -header_length))
    elif choice == 4:
        at = rng.randrange(header_length or 0, len(body))
        body[at:at + 4] = struct.pack("<I", rng.choice((0, 1, 5, 2**16, 2**32 - 1)))
    # choice 5 (or 3 on an unframed body): unchanged, so valid bodies stay in the mix
    return body, header_length


HOSTILE_VALUES = (None, True, 0, -1, 1, 3, MAX_IMAGES + 1, 2**31, 2**64, 1.5, "", "x" * 300, "IMAGE", "BYTES",
                  "num_detections", "aGk=", [], [1], [2**31], ["aGk="], {}, {"binary_data": True},
                  {"binary_data_size": 2**31}, {"shared_memory_region": "r"})


def damage_json(rng, body, header_length):
    """One value anywhere in the request's JSON replaced by a hostile one, or its key dropped."""
    split = header_length if header_length is not None else len(body)
    header, tensors = json.loads(bytes(body[:split])), bytes(body[split:])
    containers = [header]
    for container in containers:  # every object and list in the request, breadth first
        children = container.values() if isinstance(container, dict) else container
        containers.extend(child for child in children if isinstance(child, (dict, list)))
    target = rng.choice([container for container in containers if container])
    key = rng.choice(list(target)) if isinstance(target, dict) else rng.randrange(len(target))
    if isinstance(target, dict) and rng.random() < 0.2:
        del target[key]
    else:
        target[key] = rng.choice(HOSTILE_VALUES)
    head = json.dumps(header).encode()
    return bytearray(head + tensors), (len(head) if header_length is not None else None)


def test_a_refusal_surfaces_in_tritonclient_as_its_exception_with_our_message():
    """What the front end sends for a Refusal, read by tritonclient's own error path."""
    from detserve.front.open_inference_metadata import error_body
    from tritonclient.http._utils import _get_error

    with pytest.raises(Refusal) as refused:
        parse_infer_request(*HOSTILE["wrong input name"][:2], MAX_IMAGES)

    class Response:  # the two things tritonclient reads of an HTTP response
        status_code = refused.value.status

        def read(self):
            return error_body(refused.value)

    error = _get_error(Response())
    assert isinstance(error, InferenceServerException)
    assert (error.message(), error.status()) == (refused.value.message, "400")

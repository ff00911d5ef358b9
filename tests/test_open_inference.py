"""The Open Inference Protocol against a live server with the real model, called by tritonclient itself:
health and metadata calls, infer in binary and base64 with binary and JSON answers equal to the native
API's answer for the same images, errors as tritonclient's exception with the server's message, and
hostile framing sent raw: a 4xx in {"error"} form, and no worker restarted.
"""

import base64
import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from detserve import __version__
from support import b64, image_bytes, metric_value, raw_exchange

MODEL = "yolov3-tiny"
INFER_PATH = f"/v2/models/{MODEL}/infer"
THREE_IMAGES = ("camera.jpg", "chelsea.jpg", "astronaut.jpg")
MAX_IMAGES = 16  # the server's --max-images default
OUTPUT_NAMES = ("num_detections", "detection_boxes", "detection_scores", "detection_classes", "detection_labels")


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as connected:
        yield connected


@pytest.fixture(scope="module")
def labels(server):
    return server.request("/api/labels")[2]


@pytest.fixture(scope="module", autouse=True)
def before(server):
    """The worker pids and restarts when the module starts, to compare with at its end."""
    return sorted(server.worker_pids()), metric_value(server, "detserve_worker_restarts_total")


def image_input(images, binary):
    """IMAGE as tritonclient builds it: raw bytes (binary_data=True) or base64 text (binary_data=False)."""
    tensor = triton.InferInput("IMAGE", [len(images)], "BYTES")
    data = images if binary else [base64.b64encode(image) for image in images]
    tensor.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
    return tensor


def native_answers(server, names, **options):
    """The native API's detections for the same images, as one multi-image request."""
    body = {"images": [{"id": name, "image": b64(image_bytes(name))} for name in names], **options}
    status, _, payload = server.request("/api/", body)
    assert status == 200, payload
    return [entry["detections"] for entry in payload["results"]]


def assert_equal_to_native(result, native, labels):
    """Every output tensor of an InferResult against the native detections, rows past a count zeroed."""
    n, k = len(native), max(len(detections) for detections in native)
    counts = result.as_numpy("num_detections")
    boxes, scores = result.as_numpy("detection_boxes"), result.as_numpy("detection_scores")
    classes, names = result.as_numpy("detection_classes"), result.as_numpy("detection_labels")
    assert counts.tolist() == [len(detections) for detections in native]
    assert boxes.shape == (n, k, 4) and scores.shape == classes.shape == names.shape == (n, k)
    assert (boxes.dtype, scores.dtype, classes.dtype) == (np.float32, np.float32, np.int32)
    for i, detections in enumerate(native):
        for j, detection in enumerate(detections):
            x, y, w, h = detection["bbox"]
            assert boxes[i, j].tolist() == [x, y, x + w, y + h]
            assert scores[i, j] == np.float32(detection["confidence"])
            assert classes[i, j] == labels.index(detection["label"])
            assert as_text(names[i, j]) == detection["label"]
        rest = slice(len(detections), None)
        assert not boxes[i, rest].any() and not scores[i, rest].any() and not classes[i, rest].any()
        assert all(as_text(name) == "" for name in names[i, rest])


def as_text(value):
    return value.decode() if isinstance(value, bytes) else value


# -- health and metadata -------------------------------------------------------------------------------
def test_tritonclient_health_calls(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("resnet50") and not client.is_model_ready(MODEL, "2")


def test_health_answers_carry_the_bodies_kserve_reads(server):
    assert server.request("/v2/health/live")[::2] == (200, {"live": True})
    assert server.request("/v2/health/ready")[::2] == (200, {"ready": True})
    for path in (f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/versions/1/ready"):
        assert server.request(path)[::2] == (200, {"name": MODEL, "ready": True}), path
    status, headers, payload = server.request("/v2/models/resnet50/ready")
    assert (status, headers["Content-Type"]) == (404, "application/json")
    assert payload == {"error": "unknown model 'resnet50'; this server serves yolov3-tiny"}


def test_tritonclient_metadata_calls(client):
    assert client.get_server_metadata() == {"name": "detserve", "version": __version__,
                                            "extensions": ["binary_tensor_data"]}
    metadata = client.get_model_metadata(MODEL)
    assert client.get_model_metadata(MODEL, "1") == metadata
    assert (metadata["name"], metadata["versions"]) == (MODEL, ["1"])
    assert metadata["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
    assert [output["name"] for output in metadata["outputs"]] == list(OUTPUT_NAMES)
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata(MODEL, "7")
    assert (unknown.value.status(), unknown.value.message()) == (
        "404", "model 'yolov3-tiny' has no version '7'; its one version is 1")


def test_the_metadata_states_the_tensors_a_live_answer_holds(client):
    stated = {output["name"]: output for output in client.get_model_metadata(MODEL)["outputs"]}
    result = client.infer(MODEL, [image_input([image_bytes(name) for name in THREE_IMAGES], True)])
    answered = result.get_response()["outputs"]
    assert [output["name"] for output in answered] == list(stated)
    for output in answered:
        want = stated[output["name"]]
        assert output["datatype"] == want["datatype"]
        assert len(output["shape"]) == len(want["shape"])
        assert all(dim in (-1, got) for dim, got in zip(want["shape"], output["shape"])), output


# -- infer -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-in", "base64-in"])
@pytest.mark.parametrize("names", [THREE_IMAGES[:1], THREE_IMAGES], ids=["N=1", "N=3"])
def test_infer_answers_what_the_native_api_answers(client, server, labels, names, binary_input, binary_output):
    outputs = [triton.InferRequestedOutput(name, binary_data=binary_output) for name in OUTPUT_NAMES]
    result = client.infer(MODEL, [image_input([image_bytes(name) for name in names], binary_input)],
                          outputs=outputs, request_id="req-1")
    native = native_answers(server, names)
    assert any(native)  # the cameraman, at least, is found
    assert_equal_to_native(result, native, labels)
    assert result.get_response()["id"] == "req-1"
    assert (result.get_response()["model_name"], result.get_response()["model_version"]) == (MODEL, "1")


def test_the_detection_options_act_as_the_native_ones(client, server, labels):
    options = {"confidence": 0.5, "classes": "person,cat", "max_detections": 1}
    names = THREE_IMAGES
    result = client.infer(MODEL, [image_input([image_bytes(name) for name in names], True)], parameters=options)
    native = native_answers(server, names, **options)
    assert native != native_answers(server, names)  # the options changed the answer
    assert_equal_to_native(result, native, labels)


def test_only_the_named_outputs_come_back(client):
    outputs = [triton.InferRequestedOutput("detection_labels", binary_data=False),
               triton.InferRequestedOutput("num_detections")]
    result = client.infer(MODEL, [image_input([image_bytes("camera.jpg")], True)], outputs=outputs)
    assert [output["name"] for output in result.get_response()["outputs"]] == ["detection_labels", "num_detections"]
    assert result.as_numpy("detection_boxes") is None


def test_a_json_request_gets_a_json_answer_and_binary_only_when_asked(server):
    image = b64(image_bytes("camera.jpg"))
    request = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [image]}]}
    status, headers, payload = server.request(INFER_PATH, request)
    assert (status, headers["Content-Type"], headers["Inference-Header-Content-Length"]) == (
        200, "application/json", None)
    assert payload["model_name"] == MODEL and "id" not in payload
    response = raw_post(server, json.dumps({**request, "parameters": {"binary_data_output": True}}).encode(),
                        {"Content-Type": "application/json"})
    assert response.status == 200 and response.header("Content-Type") == "application/octet-stream"
    result = triton.InferenceServerClient.parse_response_body(
        response.body, header_length=int(response.header("Inference-Header-Content-Length")))
    assert result.as_numpy("detection_labels")[0, 0] == b"person"


# -- errors, as tritonclient reports them --------------------------------------------------------------
def error_of(call):
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value.status(), raised.value.message()


def test_an_unknown_model_and_a_malformed_input_surface_with_the_servers_message(client):
    one = [image_input([image_bytes("camera.jpg")], True)]
    assert error_of(lambda: client.infer("resnet50", one)) == (
        "404", "unknown model 'resnet50'; this server serves yolov3-tiny")
    assert error_of(lambda: client.infer(MODEL, one, model_version="3"))[0] == "404"
    wrong_type = triton.InferInput("IMAGE", [4], "UINT8")
    wrong_type.set_data_from_numpy(np.zeros(4, np.uint8))
    status, message = error_of(lambda: client.infer(MODEL, [wrong_type]))
    assert status == "400" and "IMAGE has datatype 'UINT8'" in message
    wrong_name = triton.InferInput("INPUT0", [1], "BYTES")
    wrong_name.set_data_from_numpy(np.array([image_bytes("camera.jpg")], dtype=np.object_))
    assert error_of(lambda: client.infer(MODEL, [wrong_name]))[1].startswith("unknown input 'INPUT0'")


def test_an_element_that_is_no_image_fails_the_request_naming_it(client):
    images = image_input([image_bytes("camera.jpg"), b"not an image", image_bytes("chelsea.jpg")], True)
    status, message = error_of(lambda: client.infer(MODEL, [images]))
    assert status == "400" and message.startswith("IMAGE element 1: ")


def test_parameters_are_strict_and_options_validated(client):
    one = [image_input([image_bytes("camera.jpg")], True)]
    status, message = error_of(lambda: client.infer(MODEL, one, priority=2))  # tritonclient's own parameter
    assert status == "400" and "unknown request parameter 'priority'" in message
    status, message = error_of(lambda: client.infer(MODEL, one, parameters={"confidence": 3}))
    assert status == "400" and "confidence" in message
    status, message = error_of(lambda: client.infer(MODEL, one, parameters={"classes": "unicorn"}))
    assert status == "400" and "unicorn" in message


def test_more_images_than_max_images_is_a_413(client):
    images = image_input([image_bytes("camera.jpg")] * (MAX_IMAGES + 1), True)
    status, message = error_of(lambda: client.infer(MODEL, [images]))
    assert status == "413" and "--max-images" in message


# -- hostile framing, sent raw ----------------------------------------------------------------------------
def raw_post(server, body, headers, path=INFER_PATH, send_body=True):
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    return raw_exchange(server.port, head.encode(), body=body if send_body else b"")


def element(data):
    return len(data).to_bytes(4, "little") + data


def framed(shape, tensor_bytes, size=None, **header_fields):
    """(body, headers) of a binary request: its JSON header, then tensor_bytes."""
    request = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": shape,
                           "parameters": {"binary_data_size": len(tensor_bytes) if size is None else size}}]}
    head = json.dumps(request).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    headers.update(header_fields)
    return head + tensor_bytes, headers


CAMERA = element(image_bytes("camera.jpg"))
HOSTILE = {
    "header length past the body": (*framed([1], CAMERA, **{"Inference-Header-Content-Length": "999999"}),
                                    400, "the body is"),
    "header length claims 2 GB": (*framed([1], CAMERA, **{"Inference-Header-Content-Length": str(2**31)}), 400,
                                  "2,147,483,648 bytes"),
    "header length not a number": (*framed([1], CAMERA, **{"Inference-Header-Content-Length": "12a"}), 400,
                                   "not a number of bytes"),
    "header length cuts the JSON": (*framed([1], CAMERA, **{"Inference-Header-Content-Length": "30"}), 400,
                                    "not valid JSON"),
    "sizes that do not add up": (*framed([1], CAMERA, size=len(CAMERA) + 1), 400, "binary_data_size"),
    "shape and data disagree": (*framed([2], CAMERA), 400, "holds 1 elements"),
    "element length overflows": (*framed([1], (2**32 - 1).to_bytes(4, "little") + b"\xff\xd8"), 400,
                                 "claims 4,294,967,295 bytes"),
    "elements past the shape": (*framed([1], CAMERA + CAMERA), 400, "after the 1 elements"),
    "N past the limit": (*framed([MAX_IMAGES + 1], CAMERA * (MAX_IMAGES + 1)), 413, "--max-images"),
    "N of 2**31": (*framed([2**31], CAMERA), 413, "--max-images"),
    "a gzip body": (*framed([1], CAMERA, **{"Content-Encoding": "gzip"}), 415, "Content-Encoding 'gzip'"),
    "a deflate body": (*framed([1], CAMERA, **{"Content-Encoding": "deflate"}), 415, "Content-Encoding"),
    "a media type it does not read": (*framed([1], CAMERA, **{"Content-Type": "image/jpeg"}), 415, "image/jpeg"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_framing_is_a_4xx_in_the_protocols_error_form(server, before, case):
    body, headers, status, words = HOSTILE[case]
    response = raw_post(server, body, headers)
    assert response.status == status, response.body[:300]
    assert response.header("Content-Type") == "application/json"
    assert set(response.json()) == {"error"} and words in response.json()["error"], response.json()


def test_an_unknown_model_is_a_404_before_the_body_is_read(server):
    body, headers = framed([1], CAMERA)
    response = raw_post(server, body, headers, path="/v2/models/resnet50/versions/1/infer", send_body=False)
    assert response.status == 404 and response.header("Connection") == "close"
    assert response.json() == {"error": "unknown model 'resnet50'; this server serves yolov3-tiny"}


def test_a_body_past_the_limit_is_a_413_and_a_query_a_400_before_the_body(server):
    response = raw_exchange(server.port, f"POST {INFER_PATH} HTTP/1.1\r\nHost: x\r\n"
                                         f"Content-Length: {2**31}\r\n\r\n".encode())
    assert response.status == 413 and set(response.json()) == {"error"}
    body, headers = framed([1], CAMERA)
    response = raw_post(server, body, headers, path=INFER_PATH + "?confidence=0.5", send_body=False)
    assert response.status == 400 and "no query parameters ('confidence')" in response.json()["error"]


def test_any_other_v2_path_is_a_404_and_a_wrong_method_a_405_in_the_same_form(server):
    for path in ("/v2/models", f"/v2/models/{MODEL}/config", f"/v2/models/{MODEL}/stats", "/v2/repository/index"):
        status, headers, payload = server.request(path)
        assert (status, headers["Content-Type"], list(payload)) == (404, "application/json", ["error"]), path
    for method, path in (("POST", "/v2"), ("DELETE", f"/v2/models/{MODEL}"), ("GET", INFER_PATH)):
        status, headers, payload = server.request(path, method=method)
        assert (status, list(payload)) == (405, ["error"]), (method, path)
        assert headers["Allow"] == ("POST" if path == INFER_PATH else "GET, HEAD")


def test_no_worker_restarted_and_the_server_still_answers(server, client, before):
    """Last in the module: after every hostile request above, the same workers serve."""
    assert sorted(server.worker_pids()) == before[0]
    assert metric_value(server, "detserve_worker_restarts_total") == before[1]
    result = client.infer(MODEL, [image_input([image_bytes("camera.jpg")], True)])
    assert result.as_numpy("num_detections")[0] > 0

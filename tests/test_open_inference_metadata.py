"""The Open Inference Protocol's front-end answers: metadata that states what the worker's answer
really holds, the /v2/models/... path reader, model and version checks, health bodies, the
Inference-Header-Content-Length header and the error body tritonclient reads.
"""

import json
from urllib.parse import quote

import pytest

from detserve import __version__
from detserve.front import open_inference_metadata as oip
from detserve.refusals import Refusal
from detserve.worker.detector import Detection
from detserve.worker.open_inference_tensors import OUTPUT_NAMES, RequestedOutput, build_answer

SERVED = ("yolov3-tiny",)


def test_server_metadata_names_the_server_its_version_and_the_binary_extension():
    metadata = json.loads(json.dumps(oip.server_metadata(__version__)))
    assert metadata == {"name": "detserve", "version": __version__, "extensions": ["binary_tensor_data"]}


def test_model_metadata_states_exactly_the_tensors_an_answer_holds():
    """Each output's datatype and shape in the metadata against a real answer (N=2, K=3)."""
    metadata = oip.model_metadata("yolov3-tiny")
    assert (metadata["name"], metadata["versions"]) == ("yolov3-tiny", ["1"])
    assert metadata["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
    detections = [[Detection("person", 0.9, (1, 2, 3, 4))] * 3, [Detection("dog", 0.5, (0, 0, 5, 5))]]
    answer = build_answer(detections, ("person", "dog"), tuple(RequestedOutput(name, False) for name in OUTPUT_NAMES),
                          "yolov3-tiny")
    built = {output["name"]: output for output in json.loads(answer.body)["outputs"]}
    assert [output["name"] for output in metadata["outputs"]] == list(built)
    for stated in metadata["outputs"]:
        real = built[stated["name"]]
        assert real["datatype"] == stated["datatype"]
        assert len(real["shape"]) == len(stated["shape"])
        assert all(want in (-1, got) for want, got in zip(stated["shape"], real["shape"])), stated


PATHS = {
    "/v2/models/yolov3-tiny": ("yolov3-tiny", None, "metadata"),
    "/v2/models/yolov3-tiny/versions/1": ("yolov3-tiny", "1", "metadata"),
    "/v2/models/yolov3-tiny/ready": ("yolov3-tiny", None, "ready"),
    "/v2/models/yolov3-tiny/versions/1/ready": ("yolov3-tiny", "1", "ready"),
    "/v2/models/yolov3-tiny/infer": ("yolov3-tiny", None, "infer"),
    "/v2/models/yolov3-tiny/versions/7/infer": ("yolov3-tiny", "7", "infer"),
    "/v2/models/" + quote("my model"): ("my model", None, "metadata"),  # tritonclient quotes the name
    "/v2/models/versions/ready": ("versions", None, "ready"),
    "/v2/models/yolov3-tiny/versions/ready": ("yolov3-tiny", "ready", "metadata"),
}
NOT_MODEL_PATHS = ("/v2", "/v2/models", "/v2/models/", "/v2/models//infer", "/v2/models/m/", "/v2/models/m/config",
                   "/v2/models/m/stats", "/v2/models/m/versions//infer", "/v2/models/m/versions/1/infer/x",
                   "/v2/models/m/infer/x", "/v2/models/m/versions", "/api/", "/v2/models/" + "m" * 300)


@pytest.mark.parametrize("path", list(PATHS))
def test_a_model_path_reads_as_model_version_and_action(path):
    assert oip.match_model_path(path) == PATHS[path]


@pytest.mark.parametrize("path", NOT_MODEL_PATHS)
def test_any_other_path_is_not_a_model_path(path):
    assert oip.match_model_path(path) is None


def test_an_unknown_model_or_version_is_a_404_naming_what_is_served():
    oip.check_model("yolov3-tiny", None, SERVED)
    oip.check_model("yolov3-tiny", "1", SERVED)
    with pytest.raises(Refusal) as unknown_model:
        oip.check_model("resnet50", None, SERVED)
    assert unknown_model.value.status == 404 and "'resnet50'" in unknown_model.value.message
    assert "yolov3-tiny" in unknown_model.value.message
    with pytest.raises(Refusal) as unknown_version:
        oip.check_model("yolov3-tiny", "2", SERVED)
    assert unknown_version.value.status == 404 and "version '2'" in unknown_version.value.message


def test_the_health_bodies_and_statuses():
    assert oip.server_live() == {"live": True}
    assert oip.server_ready(True) == {"ready": True} and oip.server_ready(False) == {"ready": False}
    assert oip.model_ready("yolov3-tiny", True) == {"name": "yolov3-tiny", "ready": True}
    assert (oip.health_status(True), oip.health_status(False)) == (200, 503)


@pytest.mark.parametrize("value, expected", [(None, None), ("165", 165), (" 12 ", 12), ("1000", 1000)])
def test_the_header_length_header_is_read_as_a_number_of_bytes(value, expected):
    assert oip.inference_header_length(value, body_length=1000) == expected


@pytest.mark.parametrize("value", ["", "abc", "-5", "0", "1001", "2147483648", "²", "1e3", "12 34", "9" * 40])
def test_a_header_length_that_is_not_a_length_within_the_body_is_a_400(value):
    with pytest.raises(Refusal) as refused:
        oip.inference_header_length(value, body_length=1000)
    assert refused.value.status == 400 and "Inference-Header-Content-Length" in refused.value.message
    assert refused.value.close  # refused before the body is read


def test_the_error_body_is_the_protocols_error_object():
    assert json.loads(oip.error_body(Refusal(404, "unknown model 'x'"))) == {"error": "unknown model 'x'"}

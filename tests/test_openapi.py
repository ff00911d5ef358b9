"""GET /openapi.json is the contract: it validates, it lists exactly the routes the server answers,
and a live server fuzzed against it by schemathesis never answers 5xx or off-schema."""

import base64
import http.client
import json
import re
import subprocess
import sys
from importlib import resources

import pytest
from openapi_spec_validator import validate

from support import (ServerProcess, assert_still_serving, camera_jpeg, form_content_type, form_part, metric_value,
                     multipart_body, scrape_metrics)
from detserve.front import formats, handler, page

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Per operation: enough to reach every documented form and option, bounded so the
# whole module stays near a minute on a shared 2-core machine.
FUZZ_EXAMPLES = 25  # per operation: with some 25 operations, several hundred cases in all
FUZZ_SEED = 11
FUZZ_TIMEOUT_S = 300  # a bound for a hang, far above the ~40 s a run takes
FUZZ_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
               "response_headers_conformance", "response_schema_conformance")


SERVED_MODELS = ("yolov3-tiny", "yolov4-tiny@320")  # two, so that fuzzing picks models too


@pytest.fixture(scope="module")
def api_server():
    """A server of its own: two models, so that the document's model names and the fuzzing cover a choice."""
    with ServerProcess("--workers", "1", "--models", ",".join(SERVED_MODELS)) as srv:
        yield srv


@pytest.fixture(scope="module")
def document():
    return json.loads(resources.files("detserve.front").joinpath("openapi.json").read_bytes())


def documented_operations(document):
    return {(path, method) for path, item in document["paths"].items() for method in item if method in HTTP_METHODS}


def handler_routes():
    """(path, method) of every route in the handler's route table, as OpenAPI spells them.

    Every GET route also answers HEAD (HTTP's rule), which the document says once in
    its description rather than as an operation per path.
    """
    routes = {(path, "post") for wire_format in formats.FORMATS for path in wire_format.OPENAPI_PATHS}
    routes |= {(path, "get") for wire_format in formats.FORMATS for path in wire_format.OPENAPI_FIXED_PATHS}
    routes |= {(path, "get") for path in handler.GET_ROUTES}
    routes.add((page.ASSET_PREFIX + "{asset}", "get"))
    return routes


def status_only(srv, method, path):
    connection = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        connection.request(method, path)
        return connection.getresponse().status
    finally:
        connection.close()


def server_errors_and_restarts(srv):
    """(5xx answers, worker restarts) the server counted so far."""
    scrape = scrape_metrics(srv)
    answers = scrape.series("detserve_http_requests_total")
    server_errors = sum(count for labels, count in answers.items() if dict(labels)["code"].startswith("5"))
    return server_errors, scrape.value("detserve_worker_restarts_total")


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_the_documented_routes_are_exactly_the_handlers_routes(document):
    assert documented_operations(document) == handler_routes()


OIP_REQUEST = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                           "data": [base64.b64encode(camera_jpeg()).decode()]}]}
PROBES = {  # one real request per documented operation, and the status it must get
    ("/", "get"): ("GET", "/", None, 200),
    ("/healthz", "get"): ("GET", "/healthz", None, 200),
    ("/readyz", "get"): ("GET", "/readyz", None, 200),
    ("/metrics", "get"): ("GET", "/metrics", None, 200),
    ("/api/labels", "get"): ("GET", "/api/labels", None, 200),
    ("/api/models", "get"): ("GET", "/api/models", None, 200),
    ("/openapi.json", "get"): ("GET", "/openapi.json", None, 200),
    ("/page/{asset}", "get"): ("GET", "/page/samples/camera.jpg", None, 200),
    ("/api/", "post"): ("POST", "/api/?id=probe", camera_jpeg(), 200),
    ("/v2", "get"): ("GET", "/v2", None, 200),
    ("/v2/health/live", "get"): ("GET", "/v2/health/live", None, 200),
    ("/v2/health/ready", "get"): ("GET", "/v2/health/ready", None, 200),
    ("/v2/models/{model}", "get"): ("GET", "/v2/models/yolov3-tiny", None, 200),
    ("/v2/models/{model}/versions/{version}", "get"): ("GET", "/v2/models/yolov3-tiny/versions/1", None, 200),
    ("/v2/models/{model}/ready", "get"): ("GET", "/v2/models/yolov3-tiny/ready", None, 200),
    ("/v2/models/{model}/versions/{version}/ready", "get"): ("GET", "/v2/models/yolov3-tiny/versions/1/ready", None,
                                                             200),
    ("/v2/models/{model}/infer", "post"): ("POST", "/v2/models/yolov3-tiny/infer", OIP_REQUEST, 200),
    ("/v2/models/{model}/versions/{version}/infer", "post"): ("POST", "/v2/models/yolov3-tiny/versions/1/infer",
                                                              OIP_REQUEST, 200),
    ("/v1/vision/detection", "post"): ("POST", "/v1/vision/detection", form_content_type(), 200),
    ("/v1/vision/custom/{model}", "post"): ("POST", "/v1/vision/custom/yolov3-tiny", form_content_type(), 200),
    ("/v1/vision/custom/list", "get"): ("GET", "/v1/vision/custom/list", None, 200),
    ("/v1/vision/custom/list", "post"): ("POST", "/v1/vision/custom/list", None, 200),
    ("/v1/status/ping", "get"): ("GET", "/v1/status/ping", None, 200),
    ("/v1/status/updateavailable", "get"): ("GET", "/v1/status/updateavailable", None, 200),
}
FORM_BODY = multipart_body(form_part("image", camera_jpeg(), "camera.jpg"))


def test_every_documented_operation_answers_and_nothing_else_does(api_server, document):
    """A probe's body is the camera image raw, a JSON object, or the camera image in a form (a probe
    naming a form's Content-Type)."""
    operations = documented_operations(document)
    assert set(PROBES) == operations
    for (documented_path, _), (method, path, body, expected) in PROBES.items():
        headers = {}
        if isinstance(body, bytes):
            headers = {"Content-Type": "image/jpeg"}
        elif isinstance(body, str):
            headers, body = {"Content-Type": body}, FORM_BODY
        status, _, payload = api_server.request(path, body=body, method=method, headers=headers)
        assert status == expected, (method, path, payload)
        other = "HEAD" if method == "GET" else "GET"
        answers_other = method == "GET" or (documented_path, "get") in operations
        assert status_only(api_server, other, path) == (200 if answers_other else 405), (other, path)
    for path in ("/api/v2", "/openapi.yaml", "/labels", "/docs", "/v2/models/yolov3-tiny/config", "/v2/models"):
        assert api_server.request(path)[0] == 404, path


def test_the_served_document_is_the_package_file_and_its_labels_are_the_models(api_server, document):
    status, headers, served = api_server.request("/openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert served["components"]["schemas"].pop("ModelName")["enum"] == list(SERVED_MODELS)
    document["components"]["schemas"].pop("ModelName")
    assert served == document  # the package file, but for the served models
    _, _, labels = api_server.request("/api/labels")
    assert document["components"]["schemas"]["Label"]["enum"] == labels
    assert len(labels) == 80
    renamed = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
               "diningtable": "dining table", "tvmonitor": "tv"}
    assert document["components"]["schemas"]["DeepStackLabel"]["enum"] == [renamed.get(l, l) for l in labels]


def test_the_documented_model_names_and_versions_are_the_ones_served(api_server, document):
    """What the path parameters allow is what answers: every name and version ready, and no other."""
    _, _, served = api_server.request("/openapi.json")
    names = served["components"]["schemas"]["ModelName"]["enum"]
    versions = document["components"]["parameters"]["version"]["schema"]["enum"]
    assert names == list(SERVED_MODELS)
    _, _, listed = api_server.request("/api/models")
    assert [model["name"] for model in listed] == names and [model["default"] for model in listed] == [True, False]
    for name in names:
        _, _, metadata = api_server.request(f"/v2/models/{name}")
        assert metadata["versions"] == versions, name
        for version in versions:
            assert api_server.request(f"/v2/models/{name}/versions/{version}/ready")[0] == 200, (name, version)
    assert api_server.request("/v2/models/" + "-".join(names) + "-other/ready")[0] == 404


def test_the_live_server_keeps_its_contract_under_fuzzing(api_server, tmp_path):
    """schemathesis against the live server, every phase (examples, coverage, fuzzing), bounded and
    seeded: no 5xx, and every answer's status, content type, headers and body as documented; then,
    counted by the server itself, no 5xx and no worker restart, and a detection still served.

    Its CLI in a subprocess: the installed version's pytest plugin does not run under this pytest.
    """
    counted_before = server_errors_and_restarts(api_server)
    command = [sys.executable, "-m", "schemathesis.cli", "run", api_server.url + "/openapi.json",
               "--checks", ",".join(FUZZ_CHECKS), "--max-examples", str(FUZZ_EXAMPLES), "--seed", str(FUZZ_SEED),
               "--workers", "1", "--generation-database", "none", "--request-timeout", "30",
               "--no-color"]
    # In tmp_path: schemathesis keeps a cache in its working directory.
    run = subprocess.run(command, capture_output=True, text=True, timeout=FUZZ_TIMEOUT_S, cwd=tmp_path)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    generated = re.search(r"(\d+) generated", report)
    assert generated and int(generated.group(1)) >= 100, report[-3000:]
    print(f"schemathesis: {generated.group(0)}")
    assert server_errors_and_restarts(api_server) == counted_before
    assert_still_serving(api_server)


@pytest.mark.parametrize("method", ["TRACE", "QUERY", "PROPFIND"])
def test_an_unknown_method_is_405_on_a_known_path_and_404_elsewhere(api_server, method):
    """schemathesis' first finding: any method http.server has no do_ for was a 501 (a server error)."""
    for path in ("/", "/api/", "/metrics", "/page/page.js"):
        assert status_only(api_server, method, path) == 405, (method, path)
    assert status_only(api_server, method, "/no-such-path") == 404

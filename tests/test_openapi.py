"""GET /openapi.json is the contract: it validates, it lists exactly the routes the server answers,
and a live server fuzzed against it by schemathesis never answers 5xx or off-schema."""

import http.client
import json
import re
import subprocess
import sys
from importlib import resources

import pytest
from openapi_spec_validator import validate

from support import assert_still_serving, camera_jpeg, scrape_metrics
from detserve.front import handler, page

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Per operation: enough to reach every documented form and option, bounded so the
# whole module stays near a minute on a shared 2-core machine.
FUZZ_EXAMPLES = 100
FUZZ_SEED = 11
FUZZ_TIMEOUT_S = 300  # a bound for a hang, far above the ~10 s a run takes
FUZZ_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
               "response_headers_conformance", "response_schema_conformance")


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
    routes = {(handler.API_PATHS[0], "post")}
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


PROBES = {  # one real request per documented operation, and the status it must get
    ("/", "get"): ("GET", "/", None, 200),
    ("/healthz", "get"): ("GET", "/healthz", None, 200),
    ("/readyz", "get"): ("GET", "/readyz", None, 200),
    ("/metrics", "get"): ("GET", "/metrics", None, 200),
    ("/api/labels", "get"): ("GET", "/api/labels", None, 200),
    ("/openapi.json", "get"): ("GET", "/openapi.json", None, 200),
    ("/page/{asset}", "get"): ("GET", "/page/samples/camera.jpg", None, 200),
    ("/api/", "post"): ("POST", "/api/?id=probe", camera_jpeg(), 200),
}


def test_every_documented_operation_answers_and_nothing_else_does(server, document):
    assert set(PROBES) == documented_operations(document)
    for method, path, body, expected in PROBES.values():
        headers = {"Content-Type": "image/jpeg"} if body else {}
        status, _, payload = server.request(path, body=body, method=method, headers=headers)
        assert status == expected, (method, path, payload)
        other = "HEAD" if method == "GET" else "GET"
        assert status_only(server, other, path) == (200 if method == "GET" else 405), (other, path)
    for path in ("/api/v2", "/openapi.yaml", "/labels", "/docs"):
        assert server.request(path)[0] == 404, path


def test_the_served_document_is_the_package_file_and_its_labels_are_the_models(server, document):
    status, headers, served = server.request("/openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert served == document
    _, _, labels = server.request("/api/labels")
    assert document["components"]["schemas"]["Label"]["enum"] == labels
    assert len(labels) == 80


def test_the_live_server_keeps_its_contract_under_fuzzing(server, tmp_path):
    """schemathesis against the live server, every phase (examples, coverage, fuzzing), bounded and
    seeded: no 5xx, and every answer's status, content type, headers and body as documented; then,
    counted by the server itself, no 5xx and no worker restart, and a detection still served.

    Its CLI in a subprocess: the installed version's pytest plugin does not run under this pytest.
    """
    counted_before = server_errors_and_restarts(server)
    command = [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json",
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
    assert server_errors_and_restarts(server) == counted_before
    assert_still_serving(server)


@pytest.mark.parametrize("method", ["TRACE", "QUERY", "PROPFIND"])
def test_an_unknown_method_is_405_on_a_known_path_and_404_elsewhere(server, method):
    """schemathesis' first finding: any method http.server has no do_ for was a 501 (a server error)."""
    for path in ("/", "/api/", "/metrics", "/page/page.js"):
        assert status_only(server, method, path) == 405, (method, path)
    assert status_only(server, method, "/no-such-path") == 404

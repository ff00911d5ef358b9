"""Upload forms (multipart/form-data) against a live server with the real model: on POST /api/ a form
is answered exactly as the same image sent raw, its fields win over the query, and the docs' curl -F
examples answer what the page shows; hostile forms, on /api/ and on the DeepStack route alike, get a
4xx in their route's words that names the problem, and no worker is restarted."""

import pytest
import requests

from support import (PDF, assert_doc_examples_answer_as_shown, camera_jpeg, form_content_type, form_part, image_bytes,
                     metric_value, multipart_body, raw_exchange, sample_images)

DEEPSTACK_ROUTE = "/v1/vision/detection"
RESTARTS = "detserve_worker_restarts_total"


def raw_answer(server, data, query):
    status, headers, payload = server.request(f"/api/?{query}", data, headers={"Content-Type": "image/jpeg"})
    assert status == 200, payload
    return headers, payload


def form_answer(server, query="", files=None, data=None, headers=None):
    response = requests.post(f"{server.url}/api/?{query}", files=files, data=data, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response


@pytest.fixture(scope="module")
def before(server):
    """The shared server's workers and restart count before this module's requests."""
    return sorted(server.worker_pids()), metric_value(server, RESTARTS)


# -- a form is the same request as a raw body -------------------------------------------------------------
@pytest.mark.parametrize("path", sample_images(), ids=lambda path: path.name)
def test_a_form_is_answered_exactly_as_the_same_image_sent_raw(server, before, path):
    data = image_bytes(path.name)
    _, raw = raw_answer(server, data, f"id={path.name}&confidence=0.1")
    by_query = form_answer(server, f"id={path.name}&confidence=0.1", files={"image": data}).json()
    by_fields = form_answer(server, files={"image": (path.name, data, "image/jpeg")},
                            data={"id": path.name, "confidence": "0.1"}).json()
    assert by_query == by_fields == raw


def test_a_form_field_wins_over_the_query_parameter_of_the_same_name(server):
    data = image_bytes("motorcycle.jpg")
    _, raw = raw_answer(server, data, "id=bike&confidence=0.05&classes=motorbike,person&max_detections=2")
    answer = form_answer(server, "id=query&confidence=0.9&classes=cat&max_detections=1", files={"image": data},
                         data={"id": "bike", "confidence": "0.05", "classes": "motorbike,person",
                               "max_detections": "2"}).json()
    assert answer == raw and answer["detections"]


def test_a_part_named_file_or_any_part_with_a_filename_is_the_image(server):
    data = camera_jpeg()
    _, raw = raw_answer(server, data, "id=cam")
    for files in ({"file": data}, {"upload": ("camera.jpg", data)}):
        assert form_answer(server, "id=cam", files=files, data={"note": "ignored"}).json() == raw, files


def test_the_annotated_image_of_a_form_is_the_raw_images(server):
    data = camera_jpeg()
    raw_headers, _ = raw_answer(server, data, "id=cam&format=jpeg")
    raw_jpeg = requests.post(f"{server.url}/api/?id=cam&format=jpeg", data=data,
                             headers={"Content-Type": "image/jpeg"}, timeout=60)
    answer = form_answer(server, files={"image": data}, data={"id": "cam"}, headers={"Accept": "image/jpeg"})
    assert answer.headers["Content-Type"] == "image/jpeg"
    assert answer.content == raw_jpeg.content
    assert answer.headers["X-Detections"] == raw_headers["X-Detections"]


def test_the_docs_curl_examples_answer_what_the_page_shows(server, tmp_path):
    assert_doc_examples_answer_as_shown("api.md", server.port, tmp_path, at_least=5)
    assert (tmp_path / "annotated.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_a_boundary_of_70_characters_is_accepted(server):
    boundary = "b" * 70
    body = multipart_body(form_part("image", camera_jpeg(), "camera.jpg"), boundary=boundary)
    response = raw_exchange(server.port, post_head("/api/?id=cam", form_content_type(boundary), len(body)),
                            body=body)
    assert response.status == 200, response.body
    assert response.json() == raw_answer(server, camera_jpeg(), "id=cam")[1]


# -- hostile forms ----------------------------------------------------------------------------------------
def post_head(path, content_type, length):
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def image_part(content=None, filename="photo.jpg", extra_headers=()):
    return form_part("image", camera_jpeg() if content is None else content, filename, extra_headers)


HOSTILE = [  # (name, Content-Type, body builder, status, words the error must hold)
    ("boundary of 71 characters", form_content_type("b" * 71),
     lambda: multipart_body(image_part(), boundary="b" * 71), 400, "not 1 to 70"),
    ("no boundary", "multipart/form-data", lambda: multipart_body(image_part()), 400, "no boundary"),
    ("the boundary never appears", form_content_type(), camera_jpeg, 400, "never contains the boundary"),
    ("a part without a name", form_content_type(),
     lambda: multipart_body(b"Content-Disposition: form-data\r\n\r\n" + camera_jpeg()), 400, "has no name"),
    ("a part without Content-Disposition", form_content_type(),
     lambda: multipart_body(b"Content-Type: image/jpeg\r\n\r\n" + camera_jpeg()), 400, "no Content-Disposition"),
    ("10,000 empty parts", form_content_type(), lambda: multipart_body(*[b"\r\n"] * 10_000), 400,
     "more than 32 parts"),
    ("10,000 empty named parts", form_content_type(),
     lambda: multipart_body(*[form_part(f"f{i}", b"") for i in range(10_000)]), 400, "more than 32 parts"),
    ("a PDF claiming to be the image", form_content_type(),
     lambda: multipart_body(image_part(PDF, "photo.jpg", ["Content-Type: image/jpeg"])), 400,
     "neither a JPEG nor a PNG"),
    ("no closing boundary", form_content_type(), lambda: multipart_body(image_part(), close=False), 400,
     "closing boundary"),
    ("two image parts", form_content_type(), lambda: multipart_body(image_part(), image_part()), 400,
     "two parts named 'image'"),
    ("an empty image part", form_content_type(), lambda: multipart_body(image_part(b"")), 400, "is empty"),
    ("no image part", form_content_type(), lambda: multipart_body(form_part("id", b"x")), 400, "has no image"),
    ("nested multipart", form_content_type(),
     lambda: multipart_body(image_part(extra_headers=["Content-Type: multipart/mixed; boundary=x"])), 400,
     "nested multipart"),
    ("bare line feeds", form_content_type(), lambda: multipart_body(image_part()).replace(b"\r\n", b"\n"), 400,
     "boundary"),
    ("a field over 4 KiB", form_content_type(),
     lambda: multipart_body(image_part(), form_part("classes", b"person," * 1000)), 400, "over 4 KiB"),
]


@pytest.mark.parametrize("path", ["/api/", DEEPSTACK_ROUTE])
@pytest.mark.parametrize("name, content_type, body, status, words", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_a_hostile_form_is_refused_in_its_routes_words(server, before, path, name, content_type, body, status,
                                                       words):
    data = body()
    response = raw_exchange(server.port, post_head(path, content_type, len(data)), timeout_s=30, body=data)
    assert response.status == status, (name, response.body[:300])
    assert response.header("Content-Type") == "application/json"
    assert response.header("Content-Length") == str(len(response.body))
    payload = response.json()
    assert words in payload["error"], payload
    if path == DEEPSTACK_ROUTE:
        assert payload == {"success": False, "error": payload["error"], "predictions": []}
    else:
        assert set(payload) == {"error", "id"}


def test_no_worker_was_restarted_by_any_of_it(server, before):
    """Runs after the module's requests (pytest keeps file order): the same workers, no restart."""
    pids, restarts = before
    assert sorted(server.worker_pids()) == pids
    assert metric_value(server, RESTARTS) == restarts
    status, _, payload = server.request("/api/?id=after", camera_jpeg(), headers={"Content-Type": "image/jpeg"})
    assert status == 200 and payload["detections"]

"""The worker's multipart/form-data parser, on the bytes real clients send and on hostile bodies.

What `requests` (and so deepstack-python) and curl send is captured by a tiny
stdlib HTTP server on port 0, then parsed: the fields and the exact image
bytes must come out. Every hostile body is a Refusal with a message naming
the problem; a bounded fuzz loop checks that nothing else ever escapes.
The parser's speed on 20 MB bodies is measured by studies.multipart_parsers,
not asserted here.
"""

import http.server
import json
import random
import subprocess
import threading

import pytest
import requests
from deepstack.core import DeepstackObject

from detserve.refusals import Refusal
from detserve.worker.image_header import ImageHeaderError, read_header
from detserve.worker.multipart import (MAX_FIELD_BYTES, MAX_PART_HEADER_BYTES, MAX_PARTS, MultipartForm,
                                       parse_form)
from support import (FORM_BOUNDARY, INPUT_FOLDER, PDF, camera_jpeg, form_content_type, form_part, image_bytes,
                     multipart_body)

BOUNDARY = FORM_BOUNDARY
CONTENT_TYPE = form_content_type()
FUZZ_SEED, FUZZ_ROUNDS = 20261201, 40_000
part, form = form_part, multipart_body


def refusal_of(body, content_type=CONTENT_TYPE, image=False):
    """The Refusal parsing body gives (and choosing its image, with image=True)."""
    with pytest.raises(Refusal) as caught:
        parsed = parse_form(body, content_type)
        if image:
            parsed.image()
    return caught.value


# -- what real clients send --------------------------------------------------------------------------------
class CaptureHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.captured.append((self.headers["Content-Type"], body))
        answer = json.dumps({"success": True, "predictions": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def capture():
    """A stdlib server on 127.0.0.1, port 0, that keeps each POST's (Content-Type, body)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CaptureHandler)
    server.captured = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_what_deepstack_python_sends_parses_to_its_fields_and_the_exact_image(capture):
    jpeg = camera_jpeg()
    assert DeepstackObject("127.0.0.1", capture.server_address[1]).detect(jpeg) == []
    (content_type, body), = capture.captured
    parsed = parse_form(body, content_type)
    assert parsed.fields == {"api_key": "", "min_confidence": "0.45"}
    assert parsed.image().content == jpeg
    assert parsed.image().name == "image"


def test_what_requests_sends_for_files_and_data_parses(capture):
    jpeg = image_bytes("motorcycle.jpg")
    url = f"http://127.0.0.1:{capture.server_address[1]}/"
    requests.post(url, files={"image": jpeg}, data={"id": "bike", "confidence": "0.5"}, timeout=10)
    (content_type, body), = capture.captured
    parsed = parse_form(body, content_type)
    assert parsed.fields == {"id": "bike", "confidence": "0.5"}
    assert [(p.name, p.filename, p.content) for p in parsed.files] == [("image", "image", jpeg)]


def test_what_curl_dash_f_sends_parses_to_its_fields_and_the_exact_image(capture):
    url = f"http://127.0.0.1:{capture.server_address[1]}/api/"
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "-F", "image=@inputfolder/chelsea.jpg", "-F", "id=x",
                    "-F", "classes=cat,dog", url], cwd=INPUT_FOLDER.parent, check=True, timeout=30)
    (content_type, body), = capture.captured
    parsed = parse_form(body, content_type)
    assert parsed.fields == {"id": "x", "classes": "cat,dog"}
    image = parsed.image()
    assert (image.name, image.filename, image.content) == ("image", "chelsea.jpg", image_bytes("chelsea.jpg"))


# -- which part is the image -------------------------------------------------------------------------------
@pytest.mark.parametrize("parts, chosen", [
    ((part("file", b"F", "f.jpg"), part("image", b"I", "i.jpg")), b"I"),
    ((part("upload", b"U", "u.jpg"), part("file", b"F")), b"F"),
    ((part("first", b"1", "1.jpg"), part("second", b"2", "2.jpg")), b"1"),
    ((part("image", b"I"),), b"I"),  # named image: a file part even without a filename
])
def test_the_image_is_the_part_named_image_else_file_else_the_first_with_a_filename(parts, chosen):
    assert parse_form(form(*parts), CONTENT_TYPE).image().content == chosen


def test_a_form_without_any_file_part_has_no_image():
    refusal = refusal_of(form(part("id", b"x")), image=True)
    assert refusal.status == 400 and "no image" in refusal.message and 'named "image"' in refusal.message


def test_content_that_holds_the_boundary_without_a_line_break_before_it_is_kept_whole():
    content = b"\xff\xd8--" + BOUNDARY.encode() + b"--\r\n\n\r--" + BOUNDARY.encode() + b"\xff\xd9"
    assert parse_form(form(part("image", content, "x.jpg")), CONTENT_TYPE).image().content == content


def test_a_preamble_an_epilogue_padding_and_case_are_what_rfc_2046_allows():
    dash = b"--" + BOUNDARY.encode()
    body = (b"ignored preamble\r\n" + dash + b" \t\r\n" + part("image", b"IMG", "i.jpg")
            + b"\r\n" + dash + b"--\r\nignored epilogue")
    parsed = parse_form(body, f'Multipart/Form-Data; charset=utf-8; Boundary="{BOUNDARY}"')
    assert parsed.image().content == b"IMG"


def test_a_boundary_of_70_characters_with_every_allowed_kind_is_accepted():
    boundary = ("'()+_,-./:=? " * 6)[:69] + "Z"
    assert len(boundary) == 70
    body = form(part("image", b"IMG", "i.jpg"), boundary=boundary)
    assert parse_form(body, f'multipart/form-data; boundary="{boundary}"').image().content == b"IMG"


def test_a_filename_star_parameter_marks_a_file_part():
    raw = b"Content-Disposition: form-data; name=\"photo\"; filename*=UTF-8''caf%C3%A9.jpg\r\n\r\nIMG"
    parsed = parse_form(form(raw), CONTENT_TYPE)
    assert parsed.image().content == b"IMG" and parsed.fields == {}


# -- hostile bodies: each a 400 (or 415) that names the problem --------------------------------------------
@pytest.mark.parametrize("content_type, words", [
    ("multipart/form-data", "no boundary parameter"),
    ("multipart/form-data; charset=utf-8", "no boundary parameter"),
    ("multipart/form-data; boundary=", "malformed parameter"),
    ('multipart/form-data; boundary=""', "not 1 to 70"),
    ("multipart/form-data; boundary=" + "b" * 71, "not 1 to 70"),
    ('multipart/form-data; boundary="ends with a space "', "not 1 to 70"),
    ("multipart/form-data; boundary=semi[colon]", "not 1 to 70"),
    ("multipart/form-data; boundary=a; boundary=b", "two 'boundary' parameters"),
    ('multipart/form-data; boundary="unterminated', "malformed parameter"),
])
def test_a_missing_or_bad_boundary_is_refused(content_type, words):
    refusal = refusal_of(form(part("image", b"IMG", "i.jpg")), content_type)
    assert refusal.status == 400 and words in refusal.message


def test_a_body_that_is_not_multipart_form_data_is_415():
    refusal = refusal_of(b"{}", "multipart/mixed; boundary=x")
    assert refusal.status == 415 and "multipart/form-data" in refusal.message


@pytest.mark.parametrize("raw, words", [
    (b'Content-Disposition: form-data; filename="x.jpg"\r\n\r\nIMG', "part 1 has no name"),
    (b'Content-Disposition: form-data; name=""\r\n\r\nIMG', "part 1 has no name"),
    (b"Content-Type: image/jpeg\r\n\r\nIMG", "no Content-Disposition"),
    (b"\r\nIMG", "no Content-Disposition"),
    (b'Content-Disposition: attachment; name="image"\r\n\r\nIMG', "not form-data"),
    (b'Content-Disposition: form-data; name="image"\r\nContent-Disposition: form-data; name="x"\r\n\r\nIMG',
     "two Content-Disposition headers"),
    (b'Content-Disposition: form-data;\r\n name="image"\r\n\r\nIMG', "malformed header line"),
    (b'Content-Disposition: form-data; name="image"\r\nno colon here\r\n\r\nIMG', "malformed header line"),
    (b'Content-Disposition: form-data;\n name="image"\r\n\r\nIMG', "malformed header line"),
    (b'Content-Disposition: form-data; name="image"\r\nContent-Transfer-Encoding: base64\r\n\r\nSU1H',
     "Content-Transfer-Encoding 'base64'"),
])
def test_a_part_without_a_usable_name_or_with_headers_this_parser_does_not_take_is_refused(raw, words):
    refusal = refusal_of(form(raw))
    assert refusal.status == 400 and words in refusal.message


def test_ten_thousand_empty_parts_are_refused_at_the_first_past_the_limit():
    refusal = refusal_of(form(*[part(f"f{i}", b"") for i in range(10_000)]))
    assert refusal.status == 400 and f"more than {MAX_PARTS} parts" in refusal.message
    refusal = refusal_of(form(*[b"\r\n"] * 10_000))  # not even headers: the count is checked first
    assert f"more than {MAX_PARTS} parts" in refusal.message


def test_exactly_the_part_limit_is_accepted():
    parts = [part("image", b"IMG", "i.jpg")] + [part(f"f{i}", b"v") for i in range(MAX_PARTS - 1)]
    assert len(parse_form(form(*parts), CONTENT_TYPE).fields) == MAX_PARTS - 1


def test_a_part_claiming_to_be_a_jpeg_that_is_a_pdf_is_parsed_and_refused_by_the_sniffing_after():
    parsed = parse_form(form(part("image", PDF, "photo.jpg", ["Content-Type: image/jpeg"])), CONTENT_TYPE)
    assert parsed.image().content == PDF  # the filename and Content-Type are claims, not checked here
    with pytest.raises(ImageHeaderError, match="neither a JPEG nor a PNG"):
        read_header(parsed.image().content)


def test_nested_multipart_is_refused():
    inner = form(part("image", b"IMG", "i.jpg"), boundary="inner")
    raw = part("image", inner, extra_headers=["Content-Type: multipart/mixed; boundary=inner"])
    refusal = refusal_of(form(raw))
    assert refusal.status == 400 and "nested multipart" in refusal.message


@pytest.mark.parametrize("body, words", [
    (form(part("image", b"IMG", "i.jpg"), close=False)[:-2], "ends inside part 1"),
    (form(part("image", b"IMG", "i.jpg"), close=False), "ends inside part 1"),
    (form(part("image", b"IMG", "i.jpg"), close=False) + b"--" + BOUNDARY.encode(), "no closing boundary"),
    (b"--" + BOUNDARY.encode(), "no closing boundary"),
    (b"", "never contains the boundary"),
])
def test_a_missing_closing_boundary_is_refused(body, words):
    refusal = refusal_of(body)
    assert refusal.status == 400 and words in refusal.message


def test_two_image_parts_are_refused():
    refusal = refusal_of(form(part("image", b"A", "a.jpg"), part("image", b"B", "b.jpg")))
    assert refusal.status == 400 and "two parts named 'image'" in refusal.message


def test_a_field_sent_twice_is_refused():
    refusal = refusal_of(form(part("id", b"a"), part("id", b"b"), part("image", b"I", "i.jpg")))
    assert "two parts named 'id'" in refusal.message


def test_an_empty_image_part_is_refused():
    refusal = refusal_of(form(part("image", b"", "i.jpg"), part("id", b"x")), image=True)
    assert refusal.status == 400 and "image part 'image' is empty" in refusal.message


def test_a_header_block_over_the_limit_is_refused():
    long_name = "n" * MAX_PART_HEADER_BYTES
    refusal = refusal_of(form(part("image", b"IMG", long_name)))
    assert refusal.status == 400 and "part 1's headers are over 8 KiB" in refusal.message


def test_a_header_block_just_under_the_limit_is_accepted():
    header_overhead = len(part("image", b"", "")) - 4  # the block without the filename and the blank line
    filename = "n" * (MAX_PART_HEADER_BYTES - header_overhead)
    assert len(parse_form(form(part("image", b"IMG", filename)), CONTENT_TYPE).image().filename) == len(filename)


def test_a_field_over_its_limit_or_not_utf8_is_refused():
    refusal = refusal_of(form(part("id", b"x" * (MAX_FIELD_BYTES + 1))))
    assert "form field 'id' is over 4 KiB" in refusal.message
    assert "not UTF-8" in refusal_of(form(part("id", b"\xff\xfe"))).message


def test_bare_line_feeds_are_refused():
    body = form(part("image", b"IMG", "i.jpg")).replace(b"\r\n", b"\n")
    refusal = refusal_of(body)
    assert refusal.status == 400 and "CRLF" in refusal.message


def test_20_mb_without_the_boundary_and_20_mb_inside_an_unclosed_part_are_refused():
    image = random.Random(1).randbytes(20 * 1024 * 1024)
    assert "never contains the boundary" in refusal_of(image).message
    unclosed = form(part("image", image, "big.jpg"), close=False)[:-2]
    assert "ends inside part 1" in refusal_of(unclosed).message


# -- fuzz: only a form or a Refusal, ever --------------------------------------------------------------------
def valid_body():
    return form(part("api_key", b""), part("min_confidence", b"0.45"), part("id", b"fuzz"),
                part("image", camera_jpeg()[:2000], "image", ["Content-Type: image/jpeg"]))


def mutated(rng, body):
    """body with one to four random edits: flips, cut ranges, repeated ranges, boundary or CRLF fragments."""
    data = bytearray(body)
    fragments = (b"\r\n", b"\r\n\r\n", b"--", b"--" + BOUNDARY.encode(), b"\r\n--" + BOUNDARY.encode(), b'"',
                 b";", b"Content-Disposition: form-data; name=", b"Content-Type: multipart/mixed", b"\n")
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(data) + 1)
        edit = rng.randrange(5)
        if edit == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif edit == 1:
            del data[pos:pos + rng.randint(1, 200)]
        elif edit == 2:
            data[pos:pos] = data[pos:pos + rng.randint(1, 200)] * rng.randint(1, 40)
        elif edit == 3:
            data[pos:pos] = rng.choice(fragments)
        else:
            data = data[:pos]
    return bytes(data)


def mutated_content_type(rng):
    choices = (CONTENT_TYPE, CONTENT_TYPE.upper(), f'{CONTENT_TYPE}; boundary="{BOUNDARY}"',
               f'multipart/form-data; boundary="{BOUNDARY[:rng.randrange(len(BOUNDARY))]}"',
               CONTENT_TYPE + ";" * rng.randint(0, 3), "multipart/form-data; boundary=" + "\\" * rng.randint(0, 3))
    return rng.choice(choices)


def test_random_mutations_of_a_valid_body_only_ever_parse_or_raise_refusal():
    rng = random.Random(FUZZ_SEED)
    body, outcomes = valid_body(), {"parsed": 0, "refused": 0}
    for _ in range(FUZZ_ROUNDS):
        content_type = CONTENT_TYPE if rng.random() < 0.8 else mutated_content_type(rng)
        try:
            parsed = parse_form(mutated(rng, body), content_type)
            assert isinstance(parsed, MultipartForm)
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.fields.items())
            assert all(isinstance(p.content, bytes) for p in parsed.files)
            parsed.image()
            outcomes["parsed"] += 1
        except Refusal as refusal:
            assert refusal.status in (400, 415) and refusal.message
            outcomes["refused"] += 1
    assert outcomes["parsed"] > FUZZ_ROUNDS // 20 and outcomes["refused"] > FUZZ_ROUNDS // 4, outcomes

"""The web page at `/`: served by detserve itself, driven in a real headless Chromium.

The browser tests run Debian's Chromium through Playwright against a real
server with the real model, and save screenshots of each state to
test-artifacts/page/. Without Chromium or Playwright they are skipped with a
reason that says how to enable them; the HTTP tests above them always run.
"""

import collections
import http.client
import os
import signal
import struct
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

import cv2
import numpy as np

from support import INPUT_FOLDER, REPO_ROOT, b64, metric_value, wait_until
from detserve.front import page as page_assets
from detserve.front.get_routes import WELCOME_TEXT
from detserve.front.request_options import wants_html

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the browser tests say how to get it
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
ENABLE_HINT = "apt-get install -y chromium, and pip install -e '.[test]' for Playwright"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "page"  # docs/page.png is a copy of its readme.png
CAMERA = INPUT_FOLDER / "camera.jpg"
CHROME_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
                 "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")
WAIT_MS = 30_000


# -- HTTP: what / and /page/ answer ------------------------------------------------------------

@pytest.mark.parametrize("accept, html", [
    (CHROME_ACCEPT, True),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # Firefox
    ("TEXT/HTML", True),
    ("*/*", False),  # curl
    (None, False),
    ("", False),
    ("application/json", False),
    ("text/html;q=0, */*", False),
    ("text/html;q=nonsense", False),
    ("text/htmlx, */*", False),
])
def test_wants_html_only_when_accept_names_html(accept, html):
    assert wants_html(accept) is html


def test_root_is_the_page_for_browsers_and_the_welcome_text_for_everyone_else(server):
    status, headers, body = server.request("/", headers={"Accept": CHROME_ACCEPT})
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<script src="/page/page.js"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["Vary"] == "Accept"
    for accept in ("*/*", None, "application/json"):
        status, headers, body = server.request("/", headers={"Accept": accept} if accept else {})
        assert (status, headers["Content-Type"], body) == (200, "text/plain; charset=utf-8", WELCOME_TEXT)


def test_page_assets_come_from_a_fixed_table(server):
    for name, (_, content_type) in page_assets.ASSETS.items():
        status, headers, _ = server.request(page_assets.ASSET_PREFIX + name)
        assert (status, headers["Content-Type"]) == (200, content_type), name
    total_bytes = sum(len(page_assets.find_asset(page_assets.ASSET_PREFIX + name).body)
                      for name in page_assets.ASSETS) + len(page_assets.index().body)
    assert total_bytes < 200_000, "the page and its samples stay small"
    status, _, payload = server.request("/page/nope.js")
    assert status == 404 and "no such page asset" in payload["error"]
    assert server.request("/page/page.js", body=b"x", method="POST",
                          headers={"Content-Type": "text/plain"})[0] == 405


@pytest.mark.parametrize("path", ["/page/../setup.cfg", "/page/..%2f__init__.py", "/page/%2e%2e/handler.py",
                                  "/page//etc/passwd", "/page/samples/../../__init__.py", "/page/__init__.py"])
def test_no_path_reaches_another_file(server, path):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path)  # sent as is: no client-side normalisation of ..
        response = connection.getresponse()
        assert response.status == 404, path
        assert response.getheader("Content-Type") == "application/json"
        response.read()
    finally:
        connection.close()


# -- the browser ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        pytest.skip(f"browser tests need Playwright for Python: {ENABLE_HINT}")
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM}: {ENABLE_HINT}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageSession:
    """One tab on the page, with every request it made and every script error or CSP refusal."""

    def __init__(self, browser, base_url, viewport=None):
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
        self.tab = self.context.new_page()
        self.requests = []
        self.problems = []
        self.tab.on("request", lambda request: self.requests.append(request))
        self.tab.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        # A fetch answered 4xx is logged too; only what points at a broken page counts.
        self.tab.on("console", lambda message: self.problems.append(message.text)
                    if "Refused to" in message.text or "Uncaught" in message.text else None)
        self.tab.goto(base_url + "/")

    def upload(self, path):
        self.tab.set_input_files("#file", str(path))
        return self.wait_for_rows()

    def wait_for_rows(self):
        self.tab.wait_for_selector("#overlay[data-drawn]", state="attached", timeout=WAIT_MS)
        return self.rows()

    def rows(self):
        return self.tab.eval_on_selector_all(
            "#detections tbody tr[data-label]",
            "rows => rows.map(r => [r.dataset.label, Number(r.dataset.confidence)])")

    def wait_for_models(self):
        """Wait until the model selector holds the server's list."""
        self.tab.wait_for_selector("#model[data-loaded]", state="attached", timeout=WAIT_MS)

    def answer_of(self, action):
        """Do action (which makes the page ask POST /api/); return its Response and the rows shown for it."""
        with self.tab.expect_response(lambda response: urlsplit(response.url).path == "/api/",
                                      timeout=WAIT_MS) as answered:
            action()
        response = answered.value
        self.tab.wait_for_selector("#overlay[data-drawn]", state="attached", timeout=WAIT_MS)
        return response, shown_detections(self)

    def drawn_count(self):
        return int(self.tab.get_attribute("#overlay", "data-drawn"))

    def class_counts(self):
        return self.tab.eval_on_selector_all(
            "#classes label[data-label]",
            "labels => Object.fromEntries(labels.map(l => [l.dataset.label, Number(l.dataset.count)]))")

    def box_drawn_at(self, bbox):
        """Whether the overlay has paint at the middle of each side of bbox, as it lands on the
        image as shown (a box scaled wrongly in either direction misses two of them)."""
        return self.tab.evaluate("""([x, y, w, h]) => {
            const img = document.getElementById('image'), canvas = document.getElementById('overlay');
            const sx = img.clientWidth / img.naturalWidth, sy = img.clientHeight / img.naturalHeight;
            const ratio = canvas.width / img.clientWidth, ctx = canvas.getContext('2d');
            const left = x * sx + 2, right = (x + w) * sx - 2, top = y * sy + 2, bottom = (y + h) * sy - 2;
            const painted = ([px, py]) =>
                ctx.getImageData(Math.round(px * ratio), Math.round(py * ratio), 1, 1).data[3] > 0;
            return [[(left + right) / 2, top], [(left + right) / 2, bottom],
                    [left, (top + bottom) / 2], [right, (top + bottom) / 2]].every(painted);
        }""", bbox)

    def shown_size(self):
        return self.tab.evaluate("""() => { const img = document.getElementById('image');
            return {natural: [img.naturalWidth, img.naturalHeight], shown: [img.clientWidth, img.clientHeight],
                    canvas: [parseFloat(overlay.style.width), parseFloat(overlay.style.height)],
                    window: [innerWidth, innerHeight]}; }""")

    def message(self):
        box = self.tab.locator("#message")
        box.wait_for(state="visible", timeout=WAIT_MS)
        return box.inner_text()

    def screenshot(self, name, full_page=False):
        self.tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)

    def close(self):
        self.context.close()
        assert not self.problems, self.problems


@pytest.fixture
def session(browser, server):
    opened = PageSession(browser, server.url)
    yield opened
    opened.close()


def api_detections(server, path, headers=None):
    status, _, payload = server.request("/api/?id=reference", body=path.read_bytes(), method="POST",
                                        headers={"Content-Type": "image/jpeg", **(headers or {})})
    assert status == 200, payload
    return payload["detections"]


def as_multiset(detections):
    return sorted((label, round(confidence, 6)) for label, confidence in detections)


def test_an_uploaded_image_shows_the_detections_the_api_returns(server, session):
    rows = session.upload(CAMERA)
    session.screenshot("upload-camera")
    expected = api_detections(server, CAMERA)
    assert expected, "camera.jpg must have detections for this test to mean anything"
    assert as_multiset(rows) == as_multiset((d["label"], d["confidence"]) for d in expected)
    assert session.drawn_count() == len(expected)
    # The strongest box is drawn where its bbox lands on the image as shown.
    strongest = max(expected, key=lambda d: d["confidence"])
    assert session.box_drawn_at(strongest["bbox"]), "the strongest detection's box is not where its bbox lands"
    assert session.tab.inner_text("#request-id") not in ("", "–")
    for stage in ("#t-queue", "#t-inference", "#t-total", "#t-roundtrip"):
        assert session.tab.inner_text(stage).endswith(" ms"), stage
    assert '"detections"' in session.tab.text_content("#json")


def jpeg_bytes(image, *segments):
    """image as JPEG, with extra APPn segments placed after the JFIF header."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    data = encoded.tobytes()
    jfif_end = 4 + struct.unpack(">H", data[4:6])[0]
    return data[:jfif_end] + b"".join(segments) + data[jfif_end:]


def exif_orientation_segment(orientation):
    """An APP1 Exif segment holding only the Orientation tag (0x0112)."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def upload_bytes(session, server, name, data):
    session.tab.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}])
    rows = session.wait_for_rows()
    status, _, payload = server.request("/api/?id=reference", body=data, method="POST",
                                        headers={"Content-Type": "image/jpeg"})
    assert status == 200, payload
    assert payload["detections"], f"{name} must have detections for this test to mean anything"
    assert as_multiset(rows) == as_multiset((d["label"], d["confidence"]) for d in payload["detections"])
    strongest = max(payload["detections"], key=lambda d: d["confidence"])
    assert session.box_drawn_at(strongest["bbox"]), f"no box at the strongest detection of {name}"
    return payload["detections"]


def test_a_huge_portrait_image_is_scaled_to_fit_and_its_boxes_scaled_with_it(server, session):
    camera = cv2.imread(str(CAMERA))
    person = cv2.resize(camera, (1600, 1600), interpolation=cv2.INTER_CUBIC)
    portrait = np.vstack([person, np.full((1600, 1600, 3), 200, np.uint8)])  # 1600 x 3200 px
    upload_bytes(session, server, "portrait.jpg", jpeg_bytes(portrait))
    size = session.shown_size()
    assert size["natural"] == [1600, 3200]
    assert size["shown"][1] <= 0.8 * size["window"][1] + 1, "a tall image fits the window's height"
    assert size["shown"][0] <= size["window"][0]
    assert size["canvas"] == size["shown"], "the overlay lies exactly over the image"
    session.screenshot("huge-portrait")


def test_exif_orientation_is_applied_by_the_browser_and_the_server_alike(server, session):
    cup = cv2.imread(str(INPUT_FOLDER / "coffee.jpg"))  # landscape
    # Stored turned a quarter left; Orientation 6 says to turn it right to show it.
    stored = cv2.rotate(cup, cv2.ROTATE_90_COUNTERCLOCKWISE)
    data = jpeg_bytes(stored, exif_orientation_segment(6))
    server_view = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert server_view.shape[:2] == cup.shape[:2], "OpenCV applies the EXIF orientation"
    upload_bytes(session, server, "rotated-coffee.jpg", data)
    assert session.shown_size()["natural"] == [cup.shape[1], cup.shape[0]], "the browser applies it too"
    session.screenshot("exif-rotated")


def test_the_slider_hides_a_weaker_detection_and_updates_the_count(session):
    rows = session.upload(CAMERA)
    confidences = sorted(confidence for _, confidence in rows)
    assert len(confidences) >= 2
    # Just above the weakest detection, on the slider's 0.01 steps.
    threshold = (int(confidences[0] * 100) + 1) / 100
    assert confidences[0] < threshold <= confidences[1], "the two weakest are too close for 0.01 steps"
    counts_before = session.class_counts()
    session.tab.fill("#threshold", f"{threshold:.2f}")
    remaining = [row for row in rows if row[1] >= threshold]
    assert as_multiset(session.rows()) == as_multiset(remaining)
    assert session.drawn_count() == len(remaining)
    weakest_label = min(rows, key=lambda row: row[1])[0]
    counts_after = session.class_counts()
    assert counts_after[weakest_label] == counts_before[weakest_label] - 1
    assert session.tab.inner_text("#threshold-value") == f"{threshold:.2f}"
    session.screenshot("slider-above-weakest")


def test_a_class_toggle_hides_that_class(session):
    rows = session.upload(CAMERA)
    hidden_label = rows[0][0]
    session.tab.locator(f'#classes label[data-label="{hidden_label}"] input').uncheck()
    others = [row for row in rows if row[0] != hidden_label]
    assert as_multiset(session.rows()) == as_multiset(others)
    assert session.drawn_count() == len(others)
    session.screenshot("class-hidden")
    session.tab.locator(f'#classes label[data-label="{hidden_label}"] input').check()
    assert as_multiset(session.rows()) == as_multiset(rows)


def test_a_dropped_pdf_is_refused_in_words(session):
    session.upload(CAMERA)
    transfer = session.tab.evaluate_handle("""() => {
        const transfer = new DataTransfer();
        transfer.items.add(new File(['%PDF-1.4\\n1 0 obj << >> endobj\\n%%EOF\\n'], 'report.pdf',
                                    {type: 'application/pdf'}));
        return transfer;
    }""")
    session.tab.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    text = session.message()
    session.screenshot("error-pdf")
    assert "415" in text and "report.pdf" in text
    assert "'application/pdf' is not accepted" in text, text
    assert session.tab.is_hidden("#figure") and session.rows() == [], "the previous image's boxes are gone"


def test_text_named_as_a_jpeg_is_refused_in_words(session):
    session.tab.set_input_files("#file", files=[{"name": "notes.jpg", "mimeType": "image/jpeg",
                                                 "buffer": b"these are notes, not a picture\n"}])
    text = session.message()
    assert "400" in text and "notes.jpg" in text
    assert session.tab.is_hidden("#figure"), "nothing is drawn for a refused image"


def test_with_an_api_key_the_page_asks_for_it_and_then_succeeds(browser, keyed_server):
    api_key = keyed_server.api_key
    session = PageSession(browser, keyed_server.url)
    try:
        session.tab.set_input_files("#file", str(CAMERA))
        assert "401" in session.message()
        session.tab.locator("#api-key").wait_for(state="visible")
        session.screenshot("asks-for-key")
        session.tab.fill("#api-key", "wrong-key")
        session.tab.press("#api-key", "Enter")
        session.tab.wait_for_function("() => document.getElementById('message').innerText.includes('refused')")
        session.tab.fill("#api-key", api_key)
        session.tab.click("#key-form button[type=submit]")
        rows = session.wait_for_rows()
        expected = api_detections(keyed_server, CAMERA, headers={"Authorization": f"Bearer {api_key}"})
        assert as_multiset(rows) == as_multiset((d["label"], d["confidence"]) for d in expected)
        assert session.tab.is_hidden("#key-form") and session.tab.is_hidden("#message")
        sent = [r.headers.get("authorization") for r in session.requests if urlsplit(r.url).path == "/api/"]
        assert sent[-1] == f"Bearer {api_key}"
        stored = session.tab.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)"
                                      " + document.cookie")
        assert api_key not in stored
    finally:
        session.close()


def test_no_request_leaves_for_another_host(server, session):
    session.tab.click("button[data-sample$='camera.jpg']")
    session.wait_for_rows()
    session.upload(CAMERA)
    session.tab.wait_for_function("() => document.getElementById('status').dataset.state === 'ready'")
    own_host = urlsplit(server.url).netloc
    urls = [request.url for request in session.requests]
    elsewhere = [url for url in urls if urlsplit(url).scheme not in ("blob", "data")
                 and urlsplit(url).netloc != own_host]
    assert not elsewhere, elsewhere
    paths = {urlsplit(url).path for url in urls}
    assert {"/", "/page/page.css", "/page/page.js", "/page/samples/camera.jpg", "/api/", "/readyz",
            "/metrics"} <= paths, paths


def test_the_status_strip_shows_workers_ready_and_the_queue(session):
    session.tab.wait_for_function("() => document.getElementById('status').dataset.state === 'ready'",
                                  timeout=WAIT_MS)
    text = session.tab.inner_text("#status-text")
    assert "2/2 workers ready" in text and "queue 0" in text, text


def test_at_phone_width_the_controls_are_visible_and_nothing_scrolls_sideways(browser, server):
    session = PageSession(browser, server.url, viewport={"width": 375, "height": 740})
    try:
        session.upload(CAMERA)
        width_px = 375
        for selector in ("label[for=file]", "button[data-sample$='chelsea.jpg']", "#model", "#nms-per-class", "#threshold",
                         "#classes input", "#detections", "#image"):
            element = session.tab.locator(selector).first
            element.scroll_into_view_if_needed()
            assert element.is_visible(), selector
            box = element.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width_px + 0.5, (selector, box)
        assert session.tab.evaluate("document.documentElement.scrollWidth") <= width_px
        session.screenshot("phone", full_page=True)
    finally:
        session.close()


def test_keyboard_reaches_the_controls_in_order_and_every_control_has_a_name(session):
    order = []
    for _ in range(8):
        session.tab.keyboard.press("Tab")
        order.append(session.tab.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    # The radio group is one stop: its checked radio.
    assert order == ["Skip to the results", "file", "camera", "cat", "coffee", "model", "nms-agnostic", "threshold"]
    unnamed = session.tab.evaluate("""() => [...document.querySelectorAll('input, button, select, textarea')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.outerHTML)""")
    assert not unnamed, unnamed


def test_a_pasted_image_is_detected_like_an_uploaded_one(server, session):
    data = CAMERA.read_bytes()
    session.tab.evaluate("""(encoded) => {
        const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'clipboard.jpg', {type: 'image/jpeg'}));
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: transfer, bubbles: true}));
    }""", b64(data))
    rows = session.wait_for_rows()
    expected = api_detections(server, CAMERA)
    assert as_multiset(rows) == as_multiset((d["label"], d["confidence"]) for d in expected)
    assert session.tab.inner_text("#caption").startswith("pasted image:")
    session.screenshot("pasted")


def shown_detections(session):
    """Every row of the table as (label, confidence, bbox), read from what the page shows."""
    return session.tab.eval_on_selector_all(
        "#detections tbody tr[data-label]",
        "rows => rows.map(r => [r.dataset.label, Number(r.dataset.confidence),"
        " r.cells[2].textContent.split(', ').map(Number)])")


def test_lowering_the_slider_shows_the_weaker_detections_the_server_sent(server, session):
    # The page asks once at confidence=0.05; the camera sample holds a detection under the
    # slider's starting 0.30, hidden until the slider comes down, with no new request.
    sample = "/page/samples/camera.jpg"
    session.tab.click(f"button[data-sample='{sample}']")
    session.wait_for_rows()
    at_start = shown_detections(session)
    counts_at_start = session.class_counts()
    hidden_classes = [label for label, count in counts_at_start.items() if count == 0]
    for label in hidden_classes:
        assert session.tab.inner_text(f'#classes label[data-label="{label}"]').strip() == f"{label} (none above 0.30)"
    requests_before = len([r for r in session.requests if urlsplit(r.url).path == "/api/"])
    session.tab.fill("#threshold", "0.05")
    at_lowest = shown_detections(session)
    session.screenshot("slider-lowest")
    assert len([r for r in session.requests if urlsplit(r.url).path == "/api/"]) == requests_before
    _, _, sample_bytes = http_get_bytes(server, sample)
    status, _, payload = server.request("/api/?id=low&confidence=0.05", body=sample_bytes, method="POST",
                                        headers={"Content-Type": "image/jpeg"})
    assert status == 200, payload
    low_answer = [(d["label"], round(d["confidence"], 6), d["bbox"]) for d in payload["detections"]]
    assert len(at_lowest) >= len(at_start)
    assert any(confidence < 0.3 for _, confidence, _ in at_lowest), \
        "the camera sample must hold a detection under 0.3 for this test to mean anything"
    assert sorted((label, round(confidence, 6), bbox) for label, confidence, bbox in at_lowest) == sorted(low_answer)
    assert session.drawn_count() == len(at_lowest)
    # Every class of the answer is listed from the start, counted at the slider's value.
    assert counts_at_start == {label: sum(1 for shown in at_start if shown[0] == label)
                               for label, _, _ in at_lowest}
    assert session.class_counts() == collections.Counter(label for label, _, _ in at_lowest)


def http_get_bytes(server, path):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


# -- refusals the page must put in words, from the shared server with tight limits --------------

def test_an_image_over_the_body_limit_is_refused_in_words(browser, tight_server):
    # Noise keeps the JPEG big: the body is past the 1 MB limit and past the 1 MB the server
    # drains before it closes, so the answer must survive a connection closed with input unread.
    camera = cv2.resize(cv2.imread(str(CAMERA)), (3000, 3000), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(seed=12).integers(0, 16, camera.shape, dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", cv2.add(camera, noise), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok and len(encoded) > 2 * (1 << 20), f"{len(encoded)} bytes: not past the limit and the drain"
    session = PageSession(browser, tight_server.url)
    try:
        session.tab.set_input_files("#file", files=[{"name": "huge.jpg", "mimeType": "image/jpeg",
                                                     "buffer": encoded.tobytes()}])
        text = session.message()
        session.screenshot("error-too-large")
        assert "413 Too large" in text, text
        assert f"huge.jpg: the body is {len(encoded):,} bytes, more than the 1,048,576-byte limit" in text, text
        assert session.tab.is_hidden("#figure")
    finally:
        session.close()


def test_an_overloaded_server_is_shown_with_its_retry_after(browser, tight_server):
    """The one worker stopped holds two requests (its credit), a third fills the queue of one:
    the page's request waits its second for room, then gets 503 with Retry-After."""
    session = PageSession(browser, tight_server.url)
    (worker_pid,) = tight_server.worker_pids()
    background = []
    os.kill(worker_pid, signal.SIGSTOP)
    try:
        for number in range(3):
            thread = threading.Thread(target=tight_server.request, daemon=True, args=(
                f"/api/?id=filler-{number}",), kwargs={
                "body": CAMERA.read_bytes(), "method": "POST", "headers": {"Content-Type": "image/jpeg"}})
            thread.start()
            background.append(thread)
        wait_until(lambda: metric_value(tight_server, "detserve_queue_depth") == 1
                   and metric_value(tight_server, "detserve_in_flight_requests") == 3,
                   "two requests held by the stopped worker and one in the queue")
        session.tab.set_input_files("#file", str(CAMERA))
        text = session.message()
        session.screenshot("error-overloaded")
        assert session.tab.is_hidden("#figure")
    finally:
        os.kill(worker_pid, signal.SIGCONT)
        for thread in background:
            thread.join(timeout=60)
        session.close()
    assert "503" in text and "overloaded" in text, text
    assert "The server asks to wait 1 s before trying again." in text, text


# -- the model and the NMS mode, chosen on a server with two models -----------------------------------

CHELSEA = INPUT_FOLDER / "chelsea.jpg"  # YOLOv4-tiny: a dog and, overlapping it, a cat; YOLOv3-tiny: nothing at 0.3


@pytest.fixture
def models_page(browser, models_server):
    opened = PageSession(browser, models_server.url)
    opened.wait_for_models()
    yield opened
    opened.close()


def sent_options(response):
    """The query of the page's POST /api/ as {name: value}."""
    return {name: values[-1] for name, values in parse_qs(urlsplit(response.url).query).items()}


def api_answer(server, path, query=""):
    """The API's detections for the image at path, as sorted (label, confidence, bbox) like shown_detections'."""
    status, _, payload = server.request(f"/api/?id=reference&{query}", body=path.read_bytes(), method="POST",
                                        headers={"Content-Type": "image/jpeg"})
    assert status == 200, payload
    return sorted((d["label"], round(d["confidence"], 6), d["bbox"]) for d in payload["detections"])


def as_answer(shown):
    return sorted((label, round(confidence, 6), bbox) for label, confidence, bbox in shown)


def test_the_model_selector_lists_the_served_models_with_the_default_chosen(models_server, models_page):
    _, _, served = models_server.request("/api/models")
    assert [m["name"] for m in served] == ["yolov3-tiny", "yolov4-tiny"]
    options = models_page.tab.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
    assert options == [m["name"] for m in served]
    (default,) = [m["name"] for m in served if m["default"]]
    assert models_page.tab.input_value("#model") == default
    assert models_page.tab.is_checked("#nms-agnostic") and not models_page.tab.is_checked("#nms-per-class")


def test_choosing_yolov4_tiny_sends_it_and_shows_the_apis_answer_for_it(models_server, models_page):
    response, shown = models_page.answer_of(lambda: models_page.tab.set_input_files("#file", str(CHELSEA)))
    assert sent_options(response)["model"] == "yolov3-tiny"
    assert as_answer(shown) == api_answer(models_server, CHELSEA)
    # A new choice asks again for the image shown.
    response, shown = models_page.answer_of(lambda: models_page.tab.select_option("#model", "yolov4-tiny"))
    assert sent_options(response)["model"] == "yolov4-tiny" and sent_options(response)["nms_mode"] == "agnostic"
    expected = api_answer(models_server, CHELSEA, "model=yolov4-tiny")
    assert expected and expected != api_answer(models_server, CHELSEA), \
        "the two models must answer chelsea.jpg differently for this test to mean anything"
    assert as_answer(shown) == expected
    assert models_page.drawn_count() == len(expected)
    assert models_page.tab.inner_text("#answer-model") == response.headers["x-model"] == "yolov4-tiny"
    models_page.screenshot("model-yolov4-tiny")


def test_the_model_choice_survives_a_reload_in_the_same_tab_and_only_there(browser, models_server, models_page):
    models_page.tab.select_option("#model", "yolov4-tiny")
    models_page.tab.reload()
    models_page.wait_for_models()
    assert models_page.tab.input_value("#model") == "yolov4-tiny"
    response, _ = models_page.answer_of(lambda: models_page.tab.set_input_files("#file", str(CHELSEA)))
    assert sent_options(response)["model"] == "yolov4-tiny"
    assert models_page.tab.evaluate("localStorage.length + document.cookie.length") == 0, "kept for the tab only"
    other_tab = PageSession(browser, models_server.url)
    try:
        other_tab.wait_for_models()
        assert other_tab.tab.input_value("#model") == "yolov3-tiny"
    finally:
        other_tab.close()


def test_the_nms_switch_changes_the_answer_to_the_per_class_one(models_server, models_page):
    models_page.tab.select_option("#model", "yolov4-tiny")
    _, agnostic = models_page.answer_of(lambda: models_page.tab.set_input_files("#file", str(CHELSEA)))
    assert as_answer(agnostic) == api_answer(models_server, CHELSEA, "model=yolov4-tiny&nms_mode=agnostic")
    response, per_class = models_page.answer_of(lambda: models_page.tab.check("#nms-per-class"))
    assert sent_options(response)["nms_mode"] == "per_class" and sent_options(response)["model"] == "yolov4-tiny"
    expected = api_answer(models_server, CHELSEA, "model=yolov4-tiny&nms_mode=per_class")
    assert as_answer(per_class) == expected
    assert [label for label, _, _ in agnostic] == ["dog"] and sorted(label for label, _, _ in per_class) == ["cat", "dog"]
    models_page.screenshot("nms-per-class")
    models_page.tab.reload()  # the mode is kept for the tab too
    models_page.wait_for_models()
    assert models_page.tab.is_checked("#nms-per-class")


def test_the_page_names_the_model_that_answered(browser, models_server):
    session = PageSession(browser, models_server.url, viewport={"width": 1000, "height": 620})
    try:
        session.wait_for_models()
        assert session.tab.is_hidden("#answered-by"), "no model is named before an answer"
        response, _ = session.answer_of(lambda: session.tab.set_input_files("#file", str(CAMERA)))
        assert session.tab.is_visible("#answered-by")
        assert session.tab.inner_text("#answer-model") == response.headers["x-model"] == "yolov3-tiny"
        session.tab.wait_for_function("() => document.getElementById('status').dataset.state === 'ready'")
        session.screenshot("readme")
        session.tab.set_input_files("#file", files=[{"name": "notes.jpg", "mimeType": "image/jpeg",
                                                     "buffer": b"not a picture\n"}])
        assert "400" in session.message()
        assert session.tab.is_hidden("#answered-by"), "a refused image has no answering model"
    finally:
        session.close()

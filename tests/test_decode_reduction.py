"""Reduced-scale JPEG decoding (--decode-reduction auto|off) on real servers with the real model.

Below the size margin `auto` answers exactly what the reference detector
answers; above it boxes are in the original image's pixels (and in its EXIF
orientation) and match what a full decode (`off`) finds; PNG and `off` are
never reduced.
"""

import struct

import cv2
import pytest

from support import INPUT_FOLDER, ServerProcess, iou, sample_images
from detserve.worker.image_decoding import MIN_REDUCED_SIDE_PX, decode_image, jpeg_reduction
from detserve.worker.parsed_request import ImageRequest
from reference import assert_same_detections, reference_detections

PHONE_SIZE_PX = (4032, 3024)  # a 12 MP phone photo, landscape
EXIF_ROTATE_90_CW = 6  # EXIF orientation: display the stored picture turned 90 degrees clockwise
MATCH_IOU = 0.5
MAX_PIXELS = 40_000_000


def upscaled(name, size_px, extension=".jpg"):
    """A sample image resized to size_px (width, height), encoded as JPEG q90 or PNG."""
    image = cv2.resize(cv2.imread(str(INPUT_FOLDER / name)), size_px, interpolation=cv2.INTER_LINEAR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if extension == ".jpg" else []
    ok, encoded = cv2.imencode(extension, image, params)
    assert ok
    return encoded.tobytes()


def with_exif_orientation(jpeg, orientation):
    """The JPEG with an APP1 Exif segment holding only an Orientation tag, written by hand."""
    ifd_entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)  # tag, SHORT, count 1, value, pad
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + ifd_entry + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def assert_matches_full_decode(reduced, full):
    """Every detection on either side has one of the same label on the other with IoU >= 0.5."""
    assert len(reduced) == len(full), (reduced, full)
    for one, other in ((reduced, full), (full, reduced)):
        for found in one:
            best = max((iou(found["bbox"], o["bbox"]) for o in other if o["label"] == found["label"]), default=0)
            assert best >= MATCH_IOU, (found, other)


def assert_inside(detections, width_px, height_px):
    for found in detections:
        x, y, w, h = found["bbox"]
        assert 0 <= x and 0 <= y and x + w <= width_px and y + h <= height_px, (found, width_px, height_px)


def post_jpeg(server, data, content_type="image/jpeg"):
    status, _, payload = server.request("/api/?id=img", data, headers={"Content-Type": content_type})
    assert status == 200, payload
    return payload["detections"]


# The shared `server` decodes with the default, auto; this one never reduces.
@pytest.fixture(scope="module")
def server_off():
    with ServerProcess("--workers", "1", env={"DETSERVE_DECODE_REDUCTION": "off"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def phone_photo():
    return upscaled("camera.jpg", PHONE_SIZE_PX)


def test_the_reduction_keeps_both_sides_above_the_margin():
    assert jpeg_reduction(4032, 3024) == 4  # 1008x756; at 1/8 the short side would be 378
    assert jpeg_reduction(7300, 5470) == 8  # 913x684
    assert jpeg_reduction(1920, 1080) == 1  # 1080p: at 1/2 the short side would be 540
    assert jpeg_reduction(1600, 1200) == 1
    assert jpeg_reduction(2 * MIN_REDUCED_SIDE_PX - 1, 5000) == 2  # rounded up: 624
    assert jpeg_reduction(2 * MIN_REDUCED_SIDE_PX - 2, 5000) == 1  # 623
    # A transposed and an upright decode would have the same reduced shape: no reduction.
    assert jpeg_reduction(4032, 4031) == 1
    assert jpeg_reduction(4032, 4032) == 4


def test_a_phone_photo_decodes_reduced_and_remembers_its_original_size(phone_photo):
    decoded = decode_image(ImageRequest("phone", phone_photo), MAX_PIXELS, "auto")
    assert decoded.pixels.shape == (756, 1008, 3)
    assert decoded.original_size_px == PHONE_SIZE_PX
    full = decode_image(ImageRequest("phone", phone_photo), MAX_PIXELS, "off")
    assert full.pixels.shape == (3024, 4032, 3)
    assert full.original_size_px == PHONE_SIZE_PX


def test_below_the_margin_auto_matches_the_reference_exactly(server):
    images = {path.name: path.read_bytes() for path in sample_images()}
    images["camera-1600x1200.jpg"] = upscaled("camera.jpg", (1600, 1200))
    images["camera-1920x1080.jpg"] = upscaled("camera.jpg", (1920, 1080))  # at 1/2 a side would be 540
    found_any = False
    for name, data in images.items():
        detections = post_jpeg(server, data)
        assert_same_detections(detections, reference_detections(data))
        found_any = found_any or bool(detections)
    assert found_any


def test_above_the_margin_boxes_are_in_original_pixels_and_match_a_full_decode(
        server, server_off, phone_photo):
    reduced = post_jpeg(server, phone_photo)
    full = post_jpeg(server_off, phone_photo)
    assert reduced, "the upscaled camera photo should contain a person"
    assert_inside(reduced, *PHONE_SIZE_PX)
    assert_matches_full_decode(reduced, full)
    # In the reduced image's pixels the largest box could not reach past 1008x756.
    assert max(d["bbox"][0] + d["bbox"][2] for d in reduced) > 1008


def test_an_exif_rotated_photo_gets_boxes_in_the_rotated_frame(server, server_off, phone_photo):
    rotated = with_exif_orientation(phone_photo, EXIF_ROTATE_90_CW)
    decoded = decode_image(ImageRequest("rotated", rotated), MAX_PIXELS, "auto")
    assert decoded.pixels.shape == (1008, 756, 3)  # OpenCV applied the orientation to the reduced decode
    assert decoded.original_size_px == (3024, 4032)
    reduced = post_jpeg(server, rotated)
    full = post_jpeg(server_off, rotated)
    assert reduced
    assert_inside(reduced, 3024, 4032)
    assert_matches_full_decode(reduced, full)
    # Not the upright answer: the person found upright is elsewhere once turned.
    upright = post_jpeg(server, phone_photo)
    assert [d["bbox"] for d in reduced] != [d["bbox"] for d in upright]


def test_a_large_png_is_decoded_in_full_as_before(server):
    png = upscaled("camera.jpg", (2000, 1700), extension=".png")  # as a JPEG this would decode at 1/2
    assert jpeg_reduction(2000, 1700) == 2
    detections = post_jpeg(server, png, content_type="image/png")
    assert detections
    assert_same_detections(detections, reference_detections(png))


def test_off_decodes_a_large_jpeg_exactly_as_the_reference(server_off, phone_photo):
    detections = post_jpeg(server_off, phone_photo)
    assert detections
    assert_same_detections(detections, reference_detections(phone_photo))
    rotated = with_exif_orientation(phone_photo, EXIF_ROTATE_90_CW)
    assert_same_detections(post_jpeg(server_off, rotated), reference_detections(rotated))

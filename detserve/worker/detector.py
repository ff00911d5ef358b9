"""YOLOv3-tiny on cv2.dnn: load once, run a batch, turn raw rows into detections.

Post-processing follows the original assignment's detector exactly (class =
argmax of the class scores, confidence = that score, boxes truncated to int,
class-agnostic NMS), but vectorised with numpy: the 2,535 candidate rows of
an image are filtered in one step instead of a Python loop.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .. import model_files

INPUT_SIZE_PX = 416
PIXEL_SCALE = 1 / 255.0


@dataclass(frozen=True)
class Detection:
    label: str
    confidence: float
    bbox: tuple  # (x, y, w, h) in the original image's pixels

    def as_json(self):
        return {"label": self.label, "confidence": self.confidence, "bbox": list(self.bbox)}


class Detector:
    """One loaded network. Not thread-safe: one per worker process."""

    def __init__(self, model_dir, confidence_threshold=0.3, nms_threshold=0.1):
        model_dir = Path(model_dir)
        self.net = cv2.dnn.readNetFromDarknet(
            str(model_dir / model_files.YOLOV3_TINY.config.name), str(model_dir / model_files.YOLOV3_TINY.weights.name))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.output_names = self.net.getUnconnectedOutLayersNames()
        self.labels = model_files.read_labels(model_dir)
        self.confidence_threshold = confidence_threshold
        self.nms_threshold = nms_threshold

    def warm_up(self):
        """Run one forward pass so the first request does not pay for buffer allocation."""
        self.detect_batch([np.zeros((INPUT_SIZE_PX, INPUT_SIZE_PX, 3), np.uint8)])

    def detect_batch(self, images, original_sizes_px=None, thresholds=None):
        """Return one list of Detection per BGR image, in order; one forward pass for all.

        original_sizes_px: (width, height) per image to give boxes in, when an image was
        decoded reduced; by default each image's own size. thresholds: (confidence, nms)
        per image, by default the detector's own; they act after the forward pass only,
        so an image's answer does not depend on what else is in its batch.
        """
        if original_sizes_px is None:
            original_sizes_px = [(image.shape[1], image.shape[0]) for image in images]
        if thresholds is None:
            thresholds = [(self.confidence_threshold, self.nms_threshold)] * len(images)
        if not len(original_sizes_px) == len(thresholds) == len(images):
            raise ValueError(f"{len(images)} images but {len(original_sizes_px)} original sizes "
                             f"and {len(thresholds)} thresholds")
        blob = cv2.dnn.blobFromImages(
            images, PIXEL_SCALE, (INPUT_SIZE_PX, INPUT_SIZE_PX), swapRB=True, crop=False)
        self.net.setInput(blob)
        outputs = self.net.forward(self.output_names)
        # A batch of one comes back 2-D (rows, 85); larger batches are 3-D (batch, rows, 85).
        per_layer = [out.reshape(len(images), -1, out.shape[-1]) for out in outputs]
        return [
            self.postprocess(np.concatenate([layer[i] for layer in per_layer]), size_px, *image_thresholds)
            for i, (size_px, image_thresholds) in enumerate(zip(original_sizes_px, thresholds))
        ]

    def postprocess(self, rows, image_size_px, confidence_threshold=None, nms_threshold=None):
        """Rows of (cx, cy, w, h, objectness, class scores...) -> NMS-filtered detections.

        The rows' coordinates are fractions of the image, so scaling them by the original
        (width, height) gives boxes in the original's pixels even for a reduced decode.
        """
        if confidence_threshold is None:
            confidence_threshold = self.confidence_threshold
        if nms_threshold is None:
            nms_threshold = self.nms_threshold
        width, height = image_size_px
        class_scores = rows[:, 5:]
        class_ids = class_scores.argmax(axis=1)
        confidences = class_scores[np.arange(len(rows)), class_ids]
        keep = confidences > confidence_threshold
        if not keep.any():
            return []
        rows, class_ids, confidences = rows[keep], class_ids[keep], confidences[keep]
        # Same arithmetic as the original: scale, truncate to int, then corner = centre - size/2.
        scaled = (rows[:, :4] * np.array([width, height, width, height])).astype(int)
        centre_x, centre_y, box_w, box_h = scaled.T
        left = (centre_x - box_w / 2).astype(int)
        top = (centre_y - box_h / 2).astype(int)
        boxes = np.stack([left, top, box_w, box_h], axis=1)
        kept = cv2.dnn.NMSBoxes(boxes.tolist(), confidences.tolist(),
                                confidence_threshold, nms_threshold)
        detections = []
        for i in np.asarray(kept).reshape(-1):
            detections.append(Detection(
                label=self.labels[class_ids[i]],
                confidence=float(confidences[i]),
                bbox=clip_box(boxes[i], width, height),
            ))
        return detections


def network_input(image):
    """The image at the network's input size, exactly as blobFromImages would resize it.

    Resizing once right after decoding lets a worker drop a large decoded image
    before the batch runs: several images of one request are never all held at
    full size. blobFromImages then finds the size right and does not resize again.
    """
    if image.shape[:2] == (INPUT_SIZE_PX, INPUT_SIZE_PX):
        return image
    return cv2.resize(image, (INPUT_SIZE_PX, INPUT_SIZE_PX), interpolation=cv2.INTER_LINEAR)


def clip_box(box, width, height):
    """Clip (x, y, w, h) to the image so a box never points outside it."""
    x, y, w, h = (int(v) for v in box)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))

"""A darknet YOLO model on cv2.dnn: load once, run a batch, turn raw rows into detections.

One Detector is one model at one input size (a model_files.ModelChoice); a
worker may hold several. Post-processing is the plain reading of
darknet's rows (class = argmax of the class scores, confidence = that
score, boxes truncated to int), vectorised with numpy: the thousands of
candidate rows of an image are filtered in one step instead of a Python loop.
NMS is class-agnostic by default, as detserve's answers always were; per_class keeps a
box that overlaps only boxes of other classes, as darknet and YOLOv5 do.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from .. import model_files
from ..protocol import NMS_MODES

PIXEL_SCALE = 1 / 255.0


@dataclass(frozen=True)
class Detection:
    label: str
    confidence: float
    bbox: tuple  # (x, y, w, h) in the original image's pixels

    def as_json(self):
        return {"label": self.label, "confidence": self.confidence, "bbox": list(self.bbox)}


class PostProcessing(NamedTuple):
    """What one image asks of the rows the forward pass gave it; a plain (confidence, nms) pair also works."""

    confidence: float  # keep a candidate whose class score is above this
    nms: float  # IoU above which the less confident of two boxes is suppressed
    nms_mode: str = "agnostic"  # which boxes may suppress each other: any two, or two of one class


class Detector:
    """One loaded network at one input size. Not thread-safe: one per model per worker process."""

    def __init__(self, model_dir, choice):
        """choice: a model_files.ModelChoice (its files, found in model_dir, and its input size)."""
        model_dir = Path(model_dir)
        model = choice.model
        self.name = choice.name
        self.input_size_px = choice.input_size_px
        self.weights_sha256 = model.weights.sha256
        self.net = cv2.dnn.readNetFromDarknet(str(model_dir / model.config.name), str(model_dir / model.weights.name))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.output_names = self.net.getUnconnectedOutLayersNames()
        self.labels = model_files.read_labels(model_dir, model)

    def warm_up(self):
        """Run one forward pass so the first request does not pay for building the network."""
        side = self.input_size_px
        self.detect_batch([np.zeros((side, side, 3), np.uint8)], None, [PostProcessing(0.5, 0.5)])

    def network_input(self, image):
        """The image at this model's input size (see network_input)."""
        return network_input(image, self.input_size_px)

    def detect_batch(self, images, original_sizes_px, post_processing):
        """Return one list of Detection per BGR image, in order; one forward pass for all.

        original_sizes_px: (width, height) per image to give boxes in, when an image was
        decoded reduced; None: each image's own size. post_processing: one PostProcessing
        (or (confidence, nms) pair) per image; it acts after the forward pass only, so an
        image's answer does not depend on what else is in its batch.
        """
        if original_sizes_px is None:
            original_sizes_px = [(image.shape[1], image.shape[0]) for image in images]
        settings = [PostProcessing(*each) for each in post_processing]
        if not len(original_sizes_px) == len(settings) == len(images):
            raise ValueError(f"{len(images)} images but {len(original_sizes_px)} original sizes "
                             f"and {len(settings)} post-processing settings")
        for each in settings:
            if each.nms_mode not in NMS_MODES:
                raise ValueError(f"nms_mode must be one of {', '.join(NMS_MODES)}, not {each.nms_mode!r}")
        side = self.input_size_px
        blob = cv2.dnn.blobFromImages(images, PIXEL_SCALE, (side, side), swapRB=True, crop=False)
        self.net.setInput(blob)
        outputs = self.net.forward(self.output_names)
        # A batch of one comes back 2-D (rows, 85); larger batches are 3-D (batch, rows, 85).
        per_layer = [out.reshape(len(images), -1, out.shape[-1]) for out in outputs]
        return [
            self.postprocess(np.concatenate([layer[i] for layer in per_layer]), size_px, image_settings)
            for i, (size_px, image_settings) in enumerate(zip(original_sizes_px, settings))
        ]

    def postprocess(self, rows, image_size_px, settings):
        """Rows of (cx, cy, w, h, objectness, class scores...) -> NMS-filtered detections.

        The rows' coordinates are fractions of the image, so scaling them by the original
        (width, height) gives boxes in the original's pixels even for a reduced decode.
        """
        width, height = image_size_px
        class_scores = rows[:, 5:]
        class_ids = class_scores.argmax(axis=1)
        confidences = class_scores[np.arange(len(rows)), class_ids]
        keep = confidences > settings.confidence
        if not keep.any():
            return []
        rows, class_ids, confidences = rows[keep], class_ids[keep], confidences[keep]
        # The arithmetic every answer has used: scale, truncate to int, then corner = centre - size/2.
        scaled = (rows[:, :4] * np.array([width, height, width, height])).astype(int)
        centre_x, centre_y, box_w, box_h = scaled.T
        left = (centre_x - box_w / 2).astype(int)
        top = (centre_y - box_h / 2).astype(int)
        boxes = np.stack([left, top, box_w, box_h], axis=1)
        if settings.nms_mode == "agnostic":
            kept = cv2.dnn.NMSBoxes(boxes.tolist(), confidences.tolist(), settings.confidence, settings.nms)
        else:
            # One NMS per class (OpenCV shifts each class's boxes apart), most confident first like NMSBoxes.
            kept = cv2.dnn.NMSBoxesBatched(boxes.tolist(), confidences.tolist(), class_ids.tolist(),
                                           settings.confidence, settings.nms)
        detections = []
        for i in np.asarray(kept).reshape(-1):
            detections.append(Detection(
                label=self.labels[class_ids[i]],
                confidence=float(confidences[i]),
                bbox=clip_box(boxes[i], width, height),
            ))
        return detections


def network_input(image, input_size_px=model_files.DEFAULT_MODEL.input_size_px):
    """The image at a network's square input size, exactly as blobFromImages would resize it.

    Resizing once right after decoding lets a worker drop a large decoded image
    before the batch runs: several images of one request are never all held at
    full size. blobFromImages then finds the size right and does not resize again.
    Without a size, the default model's: Detector.network_input is the same for its own model.
    """
    if image.shape[:2] == (input_size_px, input_size_px):
        return image
    return cv2.resize(image, (input_size_px, input_size_px), interpolation=cv2.INTER_LINEAR)


def clip_box(box, width, height):
    """Clip (x, y, w, h) to the image so a box never points outside it."""
    x, y, w, h = (int(v) for v in box)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))

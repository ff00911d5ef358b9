"""The detector's signature in the Open Inference Protocol: its one input, its outputs, its version.

Both sides read it: the front end states it in the model metadata, the
worker checks a request against it and builds the answer in its names. One
home, so the metadata cannot promise a tensor the worker does not build.
"""

from dataclasses import dataclass
from typing import Tuple

MODEL_VERSION = "1"  # every model is served at one version; a path may name it or leave it out
PLATFORM = "opencv_darknet"  # "<project>_<format>", as the protocol's platform names are spelt
# The binary framing's header: the length, in bytes, of the JSON that opens the body.
HEADER_LENGTH_FIELD = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"  # what a body with binary tensors after its JSON is


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: Tuple[int, ...]  # -1 for a dimension that varies from request to request

    def as_metadata(self):
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


# N encoded JPEG or PNG images, run as one batch.
IMAGE_INPUT = TensorSpec("IMAGE", "BYTES", (-1,))
# K is the largest number of detections of any image in the request; rows past
# an image's own count are zeros (empty strings for the labels).
OUTPUTS = (
    TensorSpec("num_detections", "INT32", (-1,)),  # [N]
    TensorSpec("detection_boxes", "FP32", (-1, -1, 4)),  # [N, K, 4]: x_min, y_min, x_max, y_max in pixels
    TensorSpec("detection_scores", "FP32", (-1, -1)),  # [N, K]
    TensorSpec("detection_classes", "INT32", (-1, -1)),  # [N, K]: index into the model's labels
    TensorSpec("detection_labels", "BYTES", (-1, -1)),  # [N, K]
)
OUTPUT_NAMES = tuple(output.name for output in OUTPUTS)

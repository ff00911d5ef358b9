"""detserve: an object-detection HTTP service (YOLOv3-tiny on OpenCV) with a pool of worker processes."""

__version__ = "0.1.0"

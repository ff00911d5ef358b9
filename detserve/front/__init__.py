"""The front end: the HTTP side, in the main process. It parses HTTP, admits or refuses, and
hands raw bodies to the pool; it never decodes JSON, base64 or images, and never imports OpenCV.
"""

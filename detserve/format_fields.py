"""The names in TaskHeader.format_fields: what a wire format's front-end module tells its worker-side twin.

Each value is a str the front end read from the request's head (the worker
sees only the header and the body). One home for the names, so the two
halves of a format cannot spell one differently.
"""

# The body's whole Content-Type header value, sent with a form: the worker needs its boundary.
CONTENT_TYPE = "content_type"
# DeepStack: ?min_confidence= as sent (the form field of the same name wins over it).
MIN_CONFIDENCE = "min_confidence"
# DeepStack: present when an API key is set and the request had no Authorization header,
# so the worker must find the key in the form's api_key field before it decodes anything.
CHECK_FORM_API_KEY = "check_form_api_key"
# Open Inference: Inference-Header-Content-Length, the JSON header's length in a binary body.
INFERENCE_HEADER_LENGTH = "header_length"

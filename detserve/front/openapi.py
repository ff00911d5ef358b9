"""GET /openapi.json: the API's contract, an OpenAPI 3.1 document written by hand beside this module.

It is package data, served as it is: no framework generates it, and a test
checks that its routes are exactly the routes the handler answers.
"""

from functools import lru_cache
from importlib import resources

DOCUMENT_FILE = "openapi.json"


@lru_cache(maxsize=1)
def document():
    """The document's bytes, read once."""
    return resources.files(__package__).joinpath(DOCUMENT_FILE).read_bytes()

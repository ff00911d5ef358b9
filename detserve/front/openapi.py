"""GET /openapi.json: the API's contract, an OpenAPI 3.1 document written by hand beside this module.

It is package data, served as it is but for one thing only the running
server knows: which models it serves (the ModelName schema's enum). No
framework generates it, and a test checks that its routes are exactly the
routes the handler answers.
"""

import json
from functools import lru_cache
from importlib import resources

DOCUMENT_FILE = "openapi.json"


@lru_cache(maxsize=4)
def document(model_names):
    """The document's bytes for a server that serves model_names (a tuple), built once."""
    contract = json.loads(resources.files(__package__).joinpath(DOCUMENT_FILE).read_bytes())
    contract["components"]["schemas"]["ModelName"]["enum"] = list(model_names)
    return json.dumps(contract).encode()

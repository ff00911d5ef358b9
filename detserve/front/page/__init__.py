"""The web page for people: which bytes answer `GET /` from a browser and `GET /page/<asset>`.

The page (index.html, page.css, page.js and a few sample JPEGs) is package
data beside this module. A client's path only ever selects a key of the fixed
ASSETS table; it is never joined to a filesystem path, so `..` and friends
cannot reach any other file. Everything the page needs is served from here:
no CDN, no external font, so it works on an air-gapped cluster.
"""

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Optional

ASSET_PREFIX = "/page/"

# The page talks only to the server that served it; images it shows are object URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; script-src 'self'; "
    "style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# URL path under ASSET_PREFIX -> (file beside this module, Content-Type)
ASSETS = {
    "page.css": ("page.css", "text/css; charset=utf-8"),
    "page.js": ("page.js", "text/javascript; charset=utf-8"),
    "samples/camera.jpg": ("samples/camera.jpg", "image/jpeg"),
    "samples/chelsea.jpg": ("samples/chelsea.jpg", "image/jpeg"),
    "samples/coffee.jpg": ("samples/coffee.jpg", "image/jpeg"),
}
INDEX = ("index.html", "text/html; charset=utf-8")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    headers: dict


def index() -> Asset:
    """The page; `/` also answers plain text to other clients, hence Vary."""
    asset = _load(*INDEX)
    return Asset(asset.body, asset.content_type, {**asset.headers, "Vary": "Accept"})


def find_asset(url_path: str) -> Optional[Asset]:
    """The asset a request path names, or None; url_path is the path without the query."""
    if not url_path.startswith(ASSET_PREFIX):
        return None
    entry = ASSETS.get(url_path[len(ASSET_PREFIX):])
    return _load(*entry) if entry else None


@lru_cache(maxsize=None)
def _load(file_name, content_type) -> Asset:
    body = resources.files(__name__).joinpath(file_name).read_bytes()
    # no-cache: the browser revalidates, so a new version shows after an upgrade.
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Content-Security-Policy": CONTENT_SECURITY_POLICY}
    return Asset(body, content_type, headers)

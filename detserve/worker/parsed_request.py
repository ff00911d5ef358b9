"""What a wire format's parser makes of a body: the images a task brings, with their option fields."""

from dataclasses import dataclass, field
from typing import Tuple, Union

from ..refusals import Refusal


@dataclass(frozen=True)
class ImageRequest:
    image_id: str
    image_bytes: bytes
    option_fields: dict = field(default_factory=dict)  # this image's own option fields, unvalidated


@dataclass(frozen=True)
class ParsedRequest:
    """One task's images, in the body's order; a Refusal stands for an entry that could not be read."""

    entries: Tuple[Union[ImageRequest, Refusal], ...]
    option_fields: dict  # the body's top-level option fields, under each entry's own
    several: bool  # answered per image (a multi-image body), not as the one image's answer
    format_state: dict = field(default_factory=dict)  # what the format's answer needs of its request
    # Option fields sent as text (a form's), merged over the query's raw strings and read as they are.
    text_option_fields: dict = field(default_factory=dict)

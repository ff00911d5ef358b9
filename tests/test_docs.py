"""The docs cannot drift from the server: their examples run, their flag table is the parser's, their links resolve.

The conventions these checks read (docs/development.md, "Examples that are tests"):

- Every ```sh block of README.md and docs/*.md is a list of examples, run one by one
  against one live server (two workers, `--models yolov3-tiny,yolov4-tiny`: the default
  model first, so an example that asks for no model gets the default server's answer).
  An example is one curl command (over several lines if it needs them) followed by its
  expectation, `# -> STATUS ANSWER`: ANSWER is the answer's
  JSON (continued on the next `#` lines until it parses), or the media type of an answer
  that is not JSON (`# -> 200 image/jpeg`). Other `#` lines are comments. Blocks this
  module does not run are fenced ```bash, ```console or ```text (the ```bash curl examples
  of api.md's upload forms and of deepstack.md are run, exactly, by their own tests).
- An answer matches when its status is STATUS and its JSON has ANSWER's shape: the same
  keys with values of the same JSON type, recursively; each element of a list has the
  shape of the example's element at the same position (its last one past the end), and a
  non-empty example list wants a non-empty answer. `...` as the last item of an object
  means the answer may have more keys; as the last item of a list it is only a reminder.
- docs/configuration.md has one table row per flag: flag, environment variable, default
  (compared with the parser's when written in backticks), unit, meaning.
- Every relative link in README.md and docs/*.md names a file that exists, and a
  `#fragment` into a Markdown file names one of its headings.
"""

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from detserve import config as detserve_config
from support import REPO_ROOT

DOCS = REPO_ROOT / "docs"
DOC_PAGES = [REPO_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
DOCUMENTED_ADDRESS = "localhost:5050"
EXAMPLE_TIMEOUT_S = 60
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXPECTATION = re.compile(r"^#\s*->\s*(\d{3})\s+(.*)$")
MEDIA_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+$")
OPEN_OBJECT_KEY = "..."  # what `...` as an object's last item becomes: the object may have more keys
# Printed by curl after each answer: the marker cannot occur in a JSON answer's text.
CURL_RESULT_MARKER = "\n@@doc-example@@ "
# pipefail: an example whose base64 or sed fails must fail, not send curl an empty body.
CURL_WRAPPER = ("set -o pipefail\n"
                "curl() { command curl --write-out '\\n@@doc-example@@ %{http_code} %{content_type}\\n' \"$@\"; }\n")


# -- reading the examples ----------------------------------------------------------------------------
@dataclass
class Example:
    page: str  # relative to the repository, e.g. docs/api.md
    line: int  # of the command's first line
    command: str = ""
    status: Optional[int] = None
    answer: Any = None  # the expected JSON, or the media type (a str) of an answer that is not JSON
    is_json: bool = True
    problem: Optional[str] = None  # why the example cannot be run as written

    def __str__(self):
        return f"{self.page}:{self.line}"


def expected_json(text):
    """The JSON an expectation shows, with `...` as the last item of an object or list read as 'and more'."""
    text = re.sub(r"\{\s*\.\.\.\s*\}", '{"%s": null}' % OPEN_OBJECT_KEY, text)
    text = re.sub(r",\s*\.\.\.\s*\}", ', "%s": null}' % OPEN_OBJECT_KEY, text)
    text = re.sub(r",\s*\.\.\.\s*\]", "]", text)
    return json.loads(text)


def read_expectation(example, status, first_text, following_lines):
    """Fill example's status and answer from `# -> STATUS ANSWER`; return how many following lines it used."""
    example.status = int(status)
    if MEDIA_TYPE.match(first_text):
        example.answer, example.is_json = first_text, False
        return 0
    text, used = first_text, 0
    while True:
        try:
            example.answer = expected_json(text)
            return used
        except ValueError:
            if used == len(following_lines) or not following_lines[used].lstrip().startswith("#") \
                    or EXPECTATION.match(following_lines[used].strip()):
                example.problem = f"the expected answer is neither JSON nor a media type: {text!r}"
                return used
            text += "\n" + following_lines[used].lstrip()[1:]
            used += 1


def examples_in_block(page, first_line, block):
    """The examples of one ```sh block whose first line is line first_line of page."""
    lines = block.splitlines()
    examples, current, index = [], None, 0
    while index < len(lines):
        stripped = lines[index].strip()
        expectation = EXPECTATION.match(stripped)
        if expectation:
            if current is None:
                current = Example(page, first_line + index, problem="an expectation with no command before it")
            index += read_expectation(current, *expectation.groups(), lines[index + 1:])
            examples.append(current)
            current = None
        elif stripped and not stripped.startswith("#"):
            current = current or Example(page, first_line + index)
            current.command += lines[index] + "\n"
        index += 1
    if current is not None:
        current.problem = "a command with no `# -> STATUS ANSWER` line after it"
        examples.append(current)
    return examples


def examples_in(path):
    text = path.read_text()
    page = str(path.relative_to(REPO_ROOT))
    examples = []
    for block in SH_BLOCK.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        examples.extend(examples_in_block(page, first_line, block.group(1)))
    return examples


ALL_EXAMPLES = [example for page in DOC_PAGES for example in examples_in(page)]


# -- comparing answers ----------------------------------------------------------------------------------
def json_type(value):
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                       (list, "list"), (dict, "object")):
        if isinstance(value, kind):
            return name
    raise TypeError(f"not a JSON value: {value!r}")


def shape_mismatch(expected, actual, where="the answer"):
    """None when actual has expected's shape (the module docstring says what that is), else where it differs."""
    if json_type(expected) != json_type(actual):
        return f"{where} is {json_type(actual)} {json.dumps(actual)[:80]}, the example shows {json_type(expected)}"
    if isinstance(expected, dict):
        keys = set(expected) - {OPEN_OBJECT_KEY}
        missing, extra = sorted(keys - set(actual)), sorted(set(actual) - keys)
        if missing or (extra and OPEN_OBJECT_KEY not in expected):
            return f"{where} has keys {sorted(actual)}, the example shows {sorted(keys)}"
        return next(filter(None, (shape_mismatch(expected[key], actual[key], f"{where}[{key!r}]")
                                  for key in sorted(keys))), None)
    if isinstance(expected, list) and expected:
        if not actual:
            return f"{where} is an empty list, the example shows {len(expected)} item(s)"
        return next(filter(None, (shape_mismatch(expected[min(i, len(expected) - 1)], item, f"{where}[{i}]")
                                  for i, item in enumerate(actual))), None)
    return None  # the same scalar type, or a list the example shows empty


# -- running the examples -------------------------------------------------------------------------------
def run_example(example, port, workdir):
    """(status, content type, body text) of the example's one curl command run by bash against port."""
    script = CURL_WRAPPER + example.command.replace(DOCUMENTED_ADDRESS, f"127.0.0.1:{port}")
    proc = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True, timeout=EXAMPLE_TIMEOUT_S)
    output = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, f"{example}: bash exited {proc.returncode}: {proc.stderr.decode()[-500:]}"
    body, *results = output.split(CURL_RESULT_MARKER)
    assert len(results) == 1, f"{example}: an example runs exactly one curl command, this one ran {len(results)}"
    status, _, content_type = results[0].strip().partition(" ")
    return int(status), content_type, body


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Where the examples run: their paths (inputfolder/...) work, and the files they write stay out of the tree."""
    if shutil.which("curl") is None:  # .ci/run installs it where it can
        pytest.skip("the documented examples are curl commands: apt-get install -y curl")
    path = tmp_path_factory.mktemp("doc-examples")
    (path / "inputfolder").symlink_to(REPO_ROOT / "inputfolder")
    return path


def test_the_readme_and_the_api_page_have_examples_for_every_way_to_send_an_image():
    commands = {page: "".join(e.command for e in ALL_EXAMPLES if e.page == page) for page in ("README.md", "docs/api.md")}
    for page, text in commands.items():
        for needle in ("application/json", "image/jpeg", '"images"', "Accept: image/jpeg"):
            assert needle in text, f"{page} has no example request with {needle}"


@pytest.mark.parametrize("example", ALL_EXAMPLES, ids=str)
def test_a_documented_example_gets_the_documented_answer(example, models_server, workdir):
    assert example.problem is None, f"{example}: {example.problem}"
    assert re.search(r"\bcurl\b", example.command), f"{example}: an example is a curl command"
    assert DOCUMENTED_ADDRESS in example.command, f"{example}: an example talks to {DOCUMENTED_ADDRESS}"
    status, content_type, body = run_example(example, models_server.port, workdir)
    assert status == example.status, f"{example}: status {status}, documented {example.status}: {body[:300]}"
    if not example.is_json:
        assert content_type.split(";")[0].strip() == example.answer, f"{example}: answered {content_type}"
        return
    assert content_type.startswith("application/json"), f"{example}: answered {content_type}, not JSON"
    mismatch = shape_mismatch(example.answer, json.loads(body))
    assert mismatch is None, f"{example}: {mismatch}"


def test_the_shape_check_catches_what_a_broken_example_would_show():
    shown = expected_json('{"id": "a", "detections": [{"label": "person", "bbox": [1, 2, 3, 4]}], ...}')
    assert shape_mismatch(shown, {"id": "b", "detections": [{"label": "x", "bbox": [9]}], "more": 1}) is None
    assert shape_mismatch(shown, {"id": "b", "detections": [{"label": "cat", "bbox": [5, 6, 7, 8]}]}) is None
    assert "empty list" in shape_mismatch(shown, {"id": "b", "detections": []})
    assert "integer" in shape_mismatch(shown, {"id": "b", "detections": [{"label": "x", "bbox": [1.5]}]})
    assert "keys" in shape_mismatch(shown, {"detections": [{"label": "x", "bbox": [1]}]})
    closed = expected_json('{"id": null}')
    assert "keys" in shape_mismatch(closed, {"id": None, "error": "x"})
    assert "string" in shape_mismatch(closed, {"id": "x"})


def test_an_example_without_its_expectation_or_with_a_bad_one_is_reported():
    block = ("curl -s localhost:5050/a\n# -> 200 {\"id\":\n#   \"x\"}\n"
             "curl -s localhost:5050/b \\\n  -d 1\n# -> 200 {not json\n"
             "curl -s localhost:5050/c\n")
    first, second, third = examples_in_block("page.md", 10, block)
    assert (first.line, first.status, first.answer, first.problem) == (10, 200, {"id": "x"}, None)
    assert second.line == 13 and second.command.count("\n") == 2 and "neither JSON" in second.problem
    assert third.line == 16 and "no `# -> STATUS ANSWER`" in third.problem


# -- the configuration page against the parser ----------------------------------------------------------
FLAG_ROW = re.compile(r"^\|\s*(`--[a-z0-9-]+`|\(none\))\s*\|\s*`(DETSERVE_[A-Z0-9_]+)`\s*\|\s*([^|]*?)\s*\|")


def documented_settings():
    """[(flag or None, environment variable, default cell)] of docs/configuration.md's table."""
    rows = [FLAG_ROW.match(line) for line in (DOCS / "configuration.md").read_text().splitlines()]
    return [(None if row.group(1) == "(none)" else row.group(1).strip("`"), row.group(2), row.group(3))
            for row in rows if row]


@pytest.fixture
def parser_flags(monkeypatch):
    """{flag: argparse action} of the server's parser, read with no DETSERVE_* variable set."""
    for name in [name for name in os.environ if name.startswith(detserve_config.ENV_PREFIX)]:
        monkeypatch.delenv(name)
    parser = detserve_config.build_parser()
    return {option: action for action in parser._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"}


def test_every_flag_is_documented_with_its_variable_and_no_unknown_flag_is(parser_flags):
    documented = {flag: variable for flag, variable, _ in documented_settings() if flag}
    assert sorted(set(parser_flags) - set(documented)) == [], "flags missing from docs/configuration.md"
    assert sorted(set(documented) - set(parser_flags)) == [], "docs/configuration.md names flags the server lacks"
    for flag, variable in documented.items():
        assert variable == detserve_config.ENV_PREFIX + parser_flags[flag].dest.upper(), flag


def test_every_documented_default_is_the_servers(parser_flags):
    checked = 0
    for flag, _, default in documented_settings():
        if flag is None or not re.fullmatch(r"`[^`]*`", default):
            continue
        actual, shown = parser_flags[flag].default, default.strip("`")
        assert (float(shown) == actual) if isinstance(actual, (int, float)) else (shown == actual), (flag, shown, actual)
        checked += 1
    assert checked >= 15  # the table's defaults are in backticks, so this check sees them


def test_a_documented_variable_without_a_flag_is_one_the_configuration_reads():
    source = (REPO_ROOT / "detserve" / "config.py").read_text()
    for flag, variable, _ in documented_settings():
        if flag is None:
            assert f'"{variable[len(detserve_config.ENV_PREFIX):]}"' in source, variable


# -- links ------------------------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.MULTILINE)


def prose(text):
    """Markdown without its code: a link-like string inside code is not a link."""
    return INLINE_CODE.sub("", FENCED_BLOCK.sub("", text))


def heading_anchors(path):
    """The #fragments GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors, seen = set(), {}
    for heading in HEADING.findall(FENCED_BLOCK.sub("", path.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)  # a repeated heading gets -1, -2, ...
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(path):
    """The relative links of one Markdown page that lead nowhere, with the reason."""
    broken = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not files here
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in heading_anchors(linked):
            broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    return broken


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    assert broken_links(page) == []


def test_the_link_check_sees_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n## A `code` heading, here\n")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#title) [b](other.md#a-code-heading-here) [c](gone.md) [d](other.md#nope)\n"
                    "`[e](inline-code.md)` [f](https://example.com/x)\n")
    assert broken_links(page) == ["gone.md: no such file", "other.md#nope: no heading #nope in other.md"]


# -- the development page lists the tests ---------------------------------------------------------------
def test_the_development_page_names_every_test_module_and_only_those():
    named = set(re.findall(r"\b(test_\w+)\.py\b", (DOCS / "development.md").read_text()))
    on_disk = {path.stem for path in (REPO_ROOT / "tests").glob("test_*.py")}
    assert sorted(on_disk - named) == [], "test modules missing from docs/development.md"
    assert sorted(named - on_disk) == [], "docs/development.md names test modules that do not exist"

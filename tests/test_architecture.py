"""The structure docs/architecture.md draws, checked: the front end never loads OpenCV or numpy, test
modules stand alone, the studies stay apart, and no class or function in detserve/ has grown to
do several jobs.
"""

import ast
import json
import pkgutil
import subprocess
import sys

import pytest

import detserve
from support import REPO_ROOT

HEAVY_MODULES = ("cv2", "numpy")
WORKER_PACKAGE = "detserve.worker"
TESTS = REPO_ROOT / "tests"
STUDIES = REPO_ROOT / "studies"
# The one module of the worker a study may import: the worker's path as a whole, not its parts.
STUDIES_WORKER_ENTRY = "detserve.worker.pipeline"
# A study of one part of the worker imports that part too (study file: the part it measures).
STUDIED_WORKER_PARTS = {"multipart_parsers.py": "detserve.worker.multipart"}
# Test modules may import these helper modules; conftest is loaded by pytest, never imported.
TEST_HELPER_MODULES = {"support", "reference", "standin_worker"}
MAX_CLASS_LINES = 200
MAX_FUNCTION_LINES = 40


# -- the front end never imports OpenCV or numpy ------------------------------------------------------
def front_end_modules():
    """Every module of detserve outside detserve/worker/, found by walking the package."""
    names = [info.name for info in pkgutil.walk_packages(detserve.__path__, "detserve.")]
    return ["detserve", *sorted(name for name in names
                                if name != WORKER_PACKAGE and not name.startswith(WORKER_PACKAGE + "."))]


def heavy_modules_after_importing(module):
    """Which of HEAVY_MODULES a fresh interpreter holds after importing module."""
    probe = (f"import importlib, json, sys; importlib.import_module({module!r}); "
             f"print(json.dumps([name for name in {HEAVY_MODULES!r} if name in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_walk_finds_every_part_of_the_front_end():
    modules = front_end_modules()
    for expected in ("detserve.server", "detserve.calibrate", "detserve.protocol", "detserve.front.handler",
                     "detserve.pool.worker_pool", "detserve.pool.supervisor"):
        assert expected in modules
    assert not any(name.startswith(WORKER_PACKAGE) for name in modules)


@pytest.mark.parametrize("module", front_end_modules())
def test_importing_a_module_outside_the_worker_loads_neither_opencv_nor_numpy(module):
    assert heavy_modules_after_importing(module) == []


def test_the_import_probe_sees_opencv_where_it_is_loaded():
    """The check above can fail: the worker's detector does bring both in."""
    assert heavy_modules_after_importing("detserve.worker.detector") == list(HEAVY_MODULES)


# -- test modules stand alone ------------------------------------------------------------------------
def imported_modules(path):
    """Every module path imports: its absolute name, or dots and the name for a relative import."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def imported_top_level_names(path):
    return {name.split(".")[0] for name in imported_modules(path) if not name.startswith(".")}


def test_no_test_module_imports_another_test_module_or_conftest():
    local_modules = {path.stem for path in TESTS.glob("*.py")}
    assert {"conftest", "support"} <= local_modules  # the walk below looks where the tests are
    forbidden = local_modules - TEST_HELPER_MODULES
    offenders = {path.name: sorted(imported_top_level_names(path) & forbidden)
                 for path in sorted(TESTS.glob("*.py"))}
    assert {name: imports for name, imports in offenders.items() if imports} == {}


# -- the studies stay apart ---------------------------------------------------------------------------
def test_neither_the_package_nor_the_load_client_nor_a_test_imports_a_study():
    paths = [*(REPO_ROOT / "detserve").rglob("*.py"), *(REPO_ROOT / "bench").rglob("*.py"), *TESTS.glob("*.py")]
    assert REPO_ROOT / "bench" / "loadgen.py" in paths and TESTS / "test_bench.py" in paths
    offenders = sorted(str(path.relative_to(REPO_ROOT)) for path in paths if "studies" in imported_top_level_names(path))
    assert offenders == []


def test_a_study_imports_no_other_study_and_reaches_the_worker_only_through_its_pipeline():
    """Or through the one part it studies, named in STUDIED_WORKER_PARTS."""
    studies = sorted(path for path in STUDIES.glob("*.py") if path.name != "__init__.py")
    assert STUDIES / "ceiling.py" in studies and STUDIES / "decode_accuracy.py" in studies
    assert {STUDIES / name for name in STUDIED_WORKER_PARTS} <= set(studies)
    offenders = {}
    for path in studies:
        allowed = {STUDIES_WORKER_ENTRY, STUDIED_WORKER_PARTS.get(path.name)}
        wrong = sorted(name for name in imported_modules(path)
                       if name.startswith(".") or name.split(".")[0] == "studies"
                       or (name.startswith(WORKER_PACKAGE) and name not in allowed))
        if wrong:
            offenders[path.name] = wrong
    assert offenders == {}


def test_the_import_walk_sees_relative_imports_and_the_modules_imported_from(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import studies.soak\nfrom . import ceiling\nfrom ..x import y\n"
                     "from detserve.worker.batch_runner import BatchRunner\n")
    assert imported_modules(probe) == {"studies.soak", ".", "..x", "detserve.worker.batch_runner"}
    assert imported_top_level_names(probe) == {"studies", "detserve"}


# -- size guard ------------------------------------------------------------------------------------------
def oversized_definitions(package_dir, root=REPO_ROOT):
    """{"path:Class" or "path:function": lines} for every class over MAX_CLASS_LINES and
    every function or method over MAX_FUNCTION_LINES (docstring and comments included)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = MAX_FUNCTION_LINES
            else:
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found[f"{path.relative_to(root)}:{node.name}"] = lines
    return found


def test_no_class_over_200_lines_and_no_function_over_40_in_detserve():
    found = oversized_definitions(REPO_ROOT / "detserve")
    assert found == {}, f"split these; each does more than one job: {found}"


def test_the_size_guard_sees_a_long_function_and_a_long_class(tmp_path):
    statements = "".join(f"        x{i} = {i}\n" for i in range(MAX_CLASS_LINES))
    (tmp_path / "long.py").write_text(
        "class Big:\n    def method(self):\n" + statements
        + "\n\ndef short():\n    return 1\n")
    assert oversized_definitions(tmp_path, root=tmp_path) == {
        "long.py:Big": MAX_CLASS_LINES + 2, "long.py:method": MAX_CLASS_LINES + 1}

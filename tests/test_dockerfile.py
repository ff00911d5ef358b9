"""The Dockerfile: lint-clean, consistent with the app and the Deployment, and (with an engine) serving.

The lint and consistency tests run everywhere. test_image_serves builds
nothing itself: `make image-test` builds the image, then runs it here with
DETSERVE_IMAGE_TEST=<tag>; without that variable (CI has no Docker engine) it
is skipped.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from detserve import model_files
from detserve.config import Config
from support import REPO_ROOT, camera_json

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
DEPLOYMENT = REPO_ROOT / "manifests" / "deployment.yml"
IMAGE_UNDER_TEST = os.environ.get("DETSERVE_IMAGE_TEST", "")
DOCKER = os.environ.get("DOCKER", "docker")
START_TIMEOUT_S = 120


# -- reading the Dockerfile --------------------------------------------------------------------

def instructions(text=None):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text() if text is None else text
    result, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def stages():
    """Instructions grouped by stage; the last group is the runtime image."""
    groups = []
    for keyword, args in instructions():
        if keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append((keyword, args))
    return groups


def runtime(keyword):
    return [args for kw, args in stages()[-1] if kw == keyword]


def runtime_env():
    env = {}
    for args in runtime("ENV"):
        for name, value in re.findall(r"(\w+)=(\S+)", args):
            env[name] = value
    return env


def pod_container():
    return yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]["containers"][0]


def pod_spec():
    return yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]


# -- lint --------------------------------------------------------------------------------------

def hadolint_path():
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing():
    hadolint = hadolint_path()
    assert hadolint, "hadolint is missing: install the test extra (pip install -e '.[test]', or make test)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_really_linting():
    # A guard for the test above: a known-bad Dockerfile must be reported.
    bad = "FROM python:3.11-slim\nRUN pip install numpy\nRUN cd /tmp\n"
    result = subprocess.run([hadolint_path(), "--no-color", "-"], input=bad, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "DL3042" in result.stdout, result.stdout


# -- consistency -------------------------------------------------------------------------------

def test_expose_is_the_app_port_and_the_probe_port_and_the_container_ports():
    (expose,) = runtime("EXPOSE")
    assert expose.split() == [str(Config.port), str(Config.probe_port)]
    assert runtime_env()["DETSERVE_PORT"] == str(Config.port)
    assert runtime_env()["DETSERVE_PROBE_PORT"] == str(Config.probe_port)
    assert [p["containerPort"] for p in pod_container()["ports"]] == [Config.port, Config.probe_port]


def test_cmd_starts_detserve_with_settings_from_the_environment():
    (cmd,) = runtime("CMD")
    assert json.loads(cmd) == ["python", "-m", "detserve"], "exec form, so python gets SIGTERM itself"
    assert not runtime("ENTRYPOINT")
    assert (REPO_ROOT / "detserve" / "__main__.py").is_file()
    assert int(runtime_env()["DETSERVE_WORKERS"]) >= 1
    # In the pod the same variable comes from the CPU limit.
    workers = [v for v in pod_container()["env"] if v["name"] == "DETSERVE_WORKERS"]
    assert workers[0]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"


def test_runs_as_the_non_root_user_the_pod_expects():
    (user,) = runtime("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so the kubelet can check runAsNonRoot"
    security = pod_spec()["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))


def test_healthcheck_asks_the_liveness_endpoint():
    (healthcheck,) = runtime("HEALTHCHECK")
    assert pod_container()["livenessProbe"]["httpGet"]["path"] in healthcheck
    assert "DETSERVE_PROBE_PORT" in healthcheck, "it must follow the port the server really uses"
    assert "DETSERVE_PORT" in healthcheck, "and fall back on the API port when the probe port is off"


def test_weights_are_fetched_and_verified_in_a_build_stage():
    first_stages = [args for group in stages()[:-1] for kw, args in group if kw == "RUN"]
    assert any("model_files.py" in run and "--check" in run for run in first_stages)
    copies = runtime("COPY")
    assert any(c.startswith("--from=models") and c.endswith("/app/yolo_tiny_configs") for c in copies)


def global_args():
    """{name: default} of the ARGs before the first FROM (those every stage may redeclare)."""
    args = {}
    for keyword, value in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = value.partition("=")
            args[name] = default
    return args


def test_the_models_argument_chooses_what_the_image_fetches_verifies_and_serves():
    assert global_args()["MODELS"] == model_files.DEFAULT_MODELS, "by default the image is what it always was"
    models_stage = stages()[0]
    assert ("ARG", "MODELS") in models_stage
    runs = [args for kw, args in models_stage if kw == "RUN"]
    assert any(run.count('--models "${MODELS}"') == 2 and "--check" in run for run in runs), \
        "the same models fetched and then verified"
    assert ("ARG", "MODELS") in stages()[-1]
    assert runtime_env()["DETSERVE_MODELS"] == "${MODELS}", "the image serves the models it carries"


def test_the_pod_serves_only_models_the_default_image_carries():
    served = [var for var in pod_container()["env"] if var["name"] == "DETSERVE_MODELS"]
    pod_models = model_files.models_of(model_files.parse_model_choices(served[0]["value"] if served
                                                                       else model_files.DEFAULT_MODELS))
    image_models = model_files.models_of(model_files.parse_model_choices(global_args()["MODELS"]))
    assert set(pod_models) <= set(image_models), "build the image with --build-arg MODELS=... (make image MODELS=...)"


def test_only_runtime_dependencies_and_no_pip_cache():
    text = " ".join(args for _, args in instructions())
    for run in (args for kw, args in instructions() if kw == "RUN"):
        for install in re.findall(r"pip install[^&;]*", run):
            assert "--no-cache-dir" in install, install
            assert "[test]" not in install and "-e " not in install
    assert "pytest" not in text and "gcc" not in text and "build-essential" not in text
    assert not any("pip install" in args for args in runtime("RUN")), "dependencies come from the deps stage"


def test_dockerignore_keeps_the_context_to_what_is_copied():
    patterns = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert patterns[0] == "*", "an allow-list: .git, .venv and tests never reach the build"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = []
    for kw, args in instructions():
        if kw == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    for source in sources:
        top = source.rstrip("/").split("/")[0]
        assert top in allowed or source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
        assert (REPO_ROOT / source).exists(), source


# -- the Makefile's image targets without an engine --------------------------------------------

def _make(*args):
    # Not the flags of a `make test` that may be running this suite.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_make_image_test_skips_with_a_message_without_an_engine():
    # `false` is a docker client whose engine never answers.
    result = _make("image-test", "DOCKER=false")
    assert result.returncode == 0
    assert "image-test skipped: no Docker engine answers" in result.stdout


def test_make_image_says_when_there_is_no_engine():
    result = _make("image", "DOCKER=false")
    assert result.returncode != 0 and "no Docker engine answers" in result.stderr
    result = _make("image", "DOCKER=/nonexistent/docker")
    assert result.returncode != 0 and "'/nonexistent/docker' not found" in result.stderr


def test_make_image_builds_from_the_repository_root():
    result = _make("-n", "image", "IMAGE=detserve:dev")
    assert "docker build -t detserve:dev ." in result.stdout.splitlines()
    result = _make("-n", "image", "IMAGE=detserve:dev", "MODELS=yolov3-tiny,yolov4-tiny")
    assert "docker build --build-arg MODELS=yolov3-tiny,yolov4-tiny -t detserve:dev ." in result.stdout.splitlines()


# -- the image, for real (make image-test) -----------------------------------------------------

def _docker(*args, check=True, timeout=120):
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=check)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url, body=None, timeout_s=30):
    headers = {"Content-Type": "application/json"} if body else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=timeout_s) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.skipif(not IMAGE_UNDER_TEST, reason="needs a Docker engine: `make image-test` builds the image "
                                                  "and runs this with DETSERVE_IMAGE_TEST=<tag>")
def test_image_serves():
    info = json.loads(_docker("image", "inspect", IMAGE_UNDER_TEST).stdout)[0]
    print(f"\nimage {IMAGE_UNDER_TEST}: {info['Size'] / 1e6:.0f} MB, user {info['Config']['User']}")
    assert {"5050/tcp", "5051/tcp"} <= set(info["Config"]["ExposedPorts"])
    # The build leaves no compiler and no pip cache in the final image.
    leftovers = _docker("run", "--rm", "--user", "0", "--entrypoint", "sh", IMAGE_UNDER_TEST, "-c",
                        "command -v gcc cc g++ make; ls -d /root/.cache/pip /tmp/.cache 2>/dev/null; true").stdout
    assert leftovers.strip() == "", leftovers

    port = _free_port()
    probe_port = _free_port()
    while probe_port == port:
        probe_port = _free_port()
    base = f"http://127.0.0.1:{port}"
    resources = pod_container()["resources"]["limits"]
    # As the pod runs it: read-only root, /tmp the only writable place, no
    # capabilities, the pod's memory limit, one CPU. Host network, loopback only.
    name = f"detserve-image-test-{port}"
    _docker("run", "--detach", "--name", name, "--network", "host",
            "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--memory", resources["memory"].replace("Mi", "m").replace("Gi", "g"), "--cpus", "1",
            "--health-interval", "2s",
            "-e", "DETSERVE_HOST=127.0.0.1", "-e", f"DETSERVE_PORT={port}", "-e", f"DETSERVE_PROBE_PORT={probe_port}",
            "-e", "DETSERVE_WORKERS=1",
            "-e", "DETSERVE_MAX_PIXELS=16000000", IMAGE_UNDER_TEST)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if _get(base + "/readyz", timeout_s=2)[0] == 200:
                    break
            except OSError:
                pass
            state = json.loads(_docker("inspect", name).stdout)[0]["State"]
            assert state["Running"], "container exited:\n" + _docker("logs", name, check=False).stderr
            assert time.monotonic() < deadline, "not ready in time:\n" + _docker("logs", name, check=False).stderr
            time.sleep(0.5)

        status, text = _get(base + "/")
        assert status == 200, text
        assert _get(f"http://127.0.0.1:{probe_port}/healthz")[0] == 200, "the probe port"
        body = camera_json("image-test-1")  # a person in it
        status, text = _get(base + "/api/", body)
        print(f"POST /api/ camera.jpg: {status} {text}")
        assert status == 200, text
        answer = json.loads(text)
        assert answer["id"] == "image-test-1"
        assert "person" in {d["label"] for d in answer["detections"]}

        uid = _docker("exec", name, "id", "-u").stdout.strip()
        assert uid == "10001"
        peak = _docker("exec", name, "sh", "-c", "cat /sys/fs/cgroup/memory.peak "
                       "/sys/fs/cgroup/memory/memory.max_usage_in_bytes 2>/dev/null; true").stdout.split()
        if peak:
            print(f"container memory peak: {int(peak[0]) / 2**20:.0f} MiB")

        deadline = time.monotonic() + 30
        while json.loads(_docker("inspect", name).stdout)[0]["State"]["Health"]["Status"] != "healthy":
            assert time.monotonic() < deadline, "the image's HEALTHCHECK did not pass"
            time.sleep(1)

        # SIGTERM drains and exits 0, well inside the pod's grace period.
        started = time.monotonic()
        _docker("stop", "--time", str(pod_spec()["terminationGracePeriodSeconds"]), name, timeout=90)
        stop_s = time.monotonic() - started
        state = json.loads(_docker("inspect", name).stdout)[0]["State"]
        logs = _docker("logs", name, check=False).stderr
        print(f"stopped in {stop_s:.1f} s, exit code {state['ExitCode']}")
        assert state["ExitCode"] == 0, logs[-3000:]
    finally:
        _docker("rm", "--force", name, check=False)

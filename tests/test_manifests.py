"""The Kubernetes manifests: schema-valid, consistent with each other, the app and the Makefile.

No cluster is needed. Schemas come from the kubernetes-validate package (it
ships them, so this runs offline); the app's ports and probe paths are checked
against a real detserve (the `server` fixture); the Makefile targets are
checked with `make -n` and with stand-in kubectl commands that fail the way a
missing tool or an unreachable cluster does.
"""

import os
import re
import subprocess
import sys
from dataclasses import fields

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from detserve import memory_sizing, model_files
from detserve.config import ENV_PREFIX, Config
from support import REPO_ROOT, http_request

MANIFESTS = REPO_ROOT / "manifests"
EXPECTED_FILES = {
    "deployment.yml", "service.yml", "service-loadbalancer.yml", "service-clusterip.yml",
    "ingress.yml", "hpa.yml", "pdb.yml", "networkpolicy.yml",
}
# The newest schemas the package ships (a current Kubernetes), and an older
# release still found on laptops, so the files work on both.
KUBERNETES_VERSIONS = (kubernetes_validate.latest_version(), "1.30.0")
APP_NAME = "detserve"
NODE_PORT = 30008
# The memory limit is sized from the rule (detserve/memory_sizing.py), not far above it.
MEMORY_LIMIT_SLACK_MIB = 128
# What the ingress must let through: the server's largest body, in MiB.
INGRESS_BODY_MIB_UNITS = {"k": 1 / 1024, "m": 1, "g": 1024}


# -- loading -----------------------------------------------------------------------------------

def load_documents():
    """Every YAML document under manifests/, as (file name, document)."""
    docs = []
    for path in sorted(MANIFESTS.glob("*.yml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCUMENTS = load_documents()


def only(kind, name=None, file=None):
    found = [doc for fname, doc in DOCUMENTS
             if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
             and (file is None or fname == file)]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''} {file or ''}, found {len(found)}"
    return found[0]


def deployment():
    return only("Deployment", APP_NAME)


def container():
    containers = deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the pod has one container, detserve"
    return containers[0]


def pod_labels():
    return deployment()["spec"]["template"]["metadata"]["labels"]


def env_value(name):
    for var in container().get("env", []):
        if var["name"] == name:
            return var
    return None


def container_port_number(port):
    """Resolve a port (number or name) against the container's ports."""
    for declared in container()["ports"]:
        if port in (declared["containerPort"], declared.get("name")):
            return declared["containerPort"]
    raise AssertionError(f"port {port!r} is not one of the container's ports {container()['ports']}")


def services():
    return [doc for _, doc in DOCUMENTS if doc["kind"] == "Service"]


def probes():
    return {kind: container()[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}


def quantity_mib(text):
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi|M|G)", str(text))
    assert match, f"memory quantity {text!r} should be in Mi, Gi, M or G"
    value, unit = float(match.group(1)), match.group(2)
    return value * {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}[unit]


def quantity_cpus(text):
    text = str(text)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def make(*args, check=False):
    # Not the flags of a `make test` that may be running this suite.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=check)


# -- files and schemas -------------------------------------------------------------------------

def test_every_expected_manifest_is_there():
    assert {p.name for p in MANIFESTS.glob("*.yml")} == EXPECTED_FILES


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("fname,doc", DOCUMENTS, ids=[f"{f}:{d['kind']}" for f, d in DOCUMENTS])
def test_manifest_is_valid_for_kubernetes_strict(fname, doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        pytest.fail(f"{fname}: {'.'.join(map(str, err.path))}: {err.message} (Kubernetes {version}, strict)")


def test_strict_validation_rejects_unknown_fields():
    # Guards the test above: a misspelt field must fail, not pass silently.
    doc = yaml.safe_load((MANIFESTS / "deployment.yml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = doc["spec"]["template"]["spec"][
        "containers"][0]["livenessProbe"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)


def test_every_resource_is_named_and_labelled_for_detserve():
    for fname, doc in DOCUMENTS:
        meta = doc["metadata"]
        assert meta["name"].startswith(APP_NAME), f"{fname}: {meta['name']} should start with {APP_NAME}"
        assert meta["labels"]["app.kubernetes.io/name"] == APP_NAME, fname
        assert "namespace" not in meta, f"{fname}: the namespace comes from kubectl's context"


# -- labels and selectors ----------------------------------------------------------------------

def _selects_pods(selector):
    return selector and all(pod_labels().get(k) == v for k, v in selector.items())


def test_deployment_selector_matches_its_pod_labels():
    assert _selects_pods(deployment()["spec"]["selector"]["matchLabels"])


def test_every_service_selects_the_detserve_pods():
    assert len(services()) == 3
    for svc in services():
        assert _selects_pods(svc["spec"]["selector"]), svc["metadata"]["name"]


def test_pdb_networkpolicy_and_hpa_point_at_the_deployment():
    assert _selects_pods(only("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert _selects_pods(only("NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    target = only("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", APP_NAME)


# -- ports -------------------------------------------------------------------------------------

def test_container_ports_are_the_app_port_and_the_probe_port():
    assert container_port_number("http") == Config.port
    assert env_value("DETSERVE_PORT")["value"] == str(Config.port)
    assert container_port_number("probes") == Config.probe_port
    assert env_value("DETSERVE_PROBE_PORT")["value"] == str(Config.probe_port)
    assert len(container()["ports"]) == 2


def test_probes_and_the_scrape_reach_the_probe_port_and_services_the_app_port():
    for kind, probe in probes().items():
        assert container_port_number(probe["httpGet"]["port"]) == Config.probe_port, kind
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == Config.probe_port
    assert annotations["prometheus.io/path"] == "/metrics"
    for svc in services():
        for port in svc["spec"]["ports"]:
            assert container_port_number(port["targetPort"]) == Config.port, svc["metadata"]["name"]


def test_service_types_and_the_nodeport():
    by_type = {svc["spec"].get("type", "ClusterIP"): svc for svc in services()}
    assert set(by_type) == {"NodePort", "LoadBalancer", "ClusterIP"}
    assert only("Service", file="service.yml") is by_type["NodePort"]
    assert only("Service", file="service-loadbalancer.yml") is by_type["LoadBalancer"]
    assert only("Service", file="service-clusterip.yml") is by_type["ClusterIP"]
    (port,) = by_type["NodePort"]["spec"]["ports"]
    assert (port["port"], port["nodePort"]) == (Config.port, NODE_PORT)
    # On Docker Desktop the ingress controller's LoadBalancer holds localhost:80.
    assert all(p["port"] != 80 for p in by_type["LoadBalancer"]["spec"]["ports"])


def test_networkpolicy_admits_only_the_app_port_and_the_probe_port():
    policy = only("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    ports = [p for rule in policy["ingress"] for p in rule["ports"]]
    assert [(p.get("protocol", "TCP"), container_port_number(p["port"])) for p in ports] == [
        ("TCP", Config.port), ("TCP", Config.probe_port)]
    assert all(set(rule) == {"ports"} for rule in policy["ingress"]), "any source, those ports only"


def test_ingress_routes_root_and_api_to_the_clusterip_service():
    ingress = only("Ingress")
    clusterip = only("Service", file="service-clusterip.yml")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    routed = {}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == clusterip["metadata"]["name"]
            svc_port = backend["port"].get("name", backend["port"].get("number"))
            assert any(svc_port in (p.get("name"), p["port"]) for p in clusterip["spec"]["ports"]), svc_port
            routed[path["path"]] = path["pathType"]
    assert routed == {"/": "Exact", "/api/": "Prefix", "/page/": "Prefix"}


def test_ingress_lets_through_the_largest_body_and_the_slowest_answer():
    annotations = only("Ingress")["metadata"]["annotations"]
    size = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    match = re.fullmatch(r"(\d+)([kmg])", size.lower())
    assert match, size
    body_mib = int(match.group(1)) * INGRESS_BODY_MIB_UNITS[match.group(2)]
    max_body_mb = float((env_value("DETSERVE_MAX_BODY_MB") or {}).get("value", Config.max_body_mb))
    assert max_body_mb >= 20, "a 20 MB request must be accepted"
    # The server counts a body's megabytes in MiB; JSON and headers add a little.
    assert body_mib > max_body_mb, f"nginx refuses bodies the server accepts: {size} <= {max_body_mb} MiB"
    request_timeout_s = float(env_value("DETSERVE_REQUEST_TIMEOUT_S")["value"])
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > request_timeout_s


def test_probe_paths_exist_on_the_server(server):
    paths = {kind: probe["httpGet"]["path"] for kind, probe in probes().items()}
    assert paths["readinessProbe"] == "/readyz"
    assert paths["livenessProbe"] == "/healthz"
    assert server.probe_port, "the server has a probe listener"
    probe_url = f"http://127.0.0.1:{server.probe_port}"
    for kind, path in paths.items():
        status, _, payload = http_request(probe_url + path)
        assert status == 200, f"{kind} {path} answered {status} on the probe port: {payload}"
    assert http_request(probe_url + "/metrics")[0] == 200, "the scrape annotation's path"
    status, _, _ = http_request(probe_url + "/no-such-probe-path")
    assert status == 404, "a wrong probe path would not be caught"
    _, _, ready = http_request(probe_url + "/readyz")
    assert ready["workers_ready"] == ready["workers"], "ready means every worker has the model"


def test_ingress_paths_exist_on_the_server(server):
    assert server.request("/")[0] == 200
    # /api/ is POST only: 405 (not 404) shows the route is there.
    assert server.request("/api/")[0] == 405
    # What a browser's `/` loads next: the page's script and style.
    assert server.request("/page/page.js")[0] == 200


# -- the pod -----------------------------------------------------------------------------------

def test_every_detserve_env_var_is_a_real_setting():
    settings = {f.name for f in fields(Config)} | {"api_key_file"}
    for var in container()["env"]:
        assert var["name"].startswith(ENV_PREFIX), var["name"]
        assert var["name"][len(ENV_PREFIX):].lower() in settings, f"{var['name']} is not a detserve setting"


def test_worker_count_comes_from_the_cpu_limit():
    source = env_value("DETSERVE_WORKERS")["valueFrom"]["resourceFieldRef"]
    assert source["resource"] == "limits.cpu"
    assert source.get("containerName", container()["name"]) == container()["name"]
    assert str(source.get("divisor", "1")) == "1"


def pod_config():
    """The Config the pod's server runs with: the container's DETSERVE_* values, the workers its CPU limit gives."""
    environment = {var["name"]: str(var["value"]) for var in container()["env"] if "value" in var}
    environment[ENV_PREFIX + "WORKERS"] = str(memory_sizing.workers_for_cpus(container()["resources"]["limits"]["cpu"]))
    return memory_sizing.config_from_environment(environment)


def test_memory_limit_holds_the_front_end_and_every_worker_at_their_worst():
    """limits.memory >= the front end's ceiling + workers x (80 MiB + each model's share + the largest
    requests), for the DETSERVE_MODELS, DETSERVE_WORKERS (from limits.cpu) and bounds the pod sets."""
    config = pod_config()
    resources = container()["resources"]
    limit_mib = quantity_mib(resources["limits"]["memory"])
    front_end_mib, worker_mib = memory_sizing.front_end_ceiling_mib(config), memory_sizing.worker_mib(config)
    need_mib = memory_sizing.server_mib(config)
    models_mib = sum(model_files.worker_share_mib(choice) for choice in config.model_choices)
    assert worker_mib > memory_sizing.WORKER_BASE_MIB + models_mib, "a worker holds at least its models"
    assert limit_mib >= need_mib, (
        f"{config.workers} worker(s) of {config.models} need at least {need_mib:.0f} Mi: front end "
        f"{front_end_mib:.0f} + {config.workers} x {worker_mib:.0f} + {memory_sizing.OTHER_PROCESSES_MIB}")
    assert limit_mib <= need_mib + MEMORY_LIMIT_SLACK_MIB, f"{limit_mib:.0f} Mi is far above the {need_mib:.0f} needed"
    assert quantity_mib(resources["requests"]["memory"]) <= limit_mib
    assert quantity_cpus(resources["requests"]["cpu"]) <= quantity_cpus(resources["limits"]["cpu"])


def test_the_pod_names_its_models_and_bounds_its_answers():
    # Spelled out, so that changing the models is an edit an operator sees beside the memory rule.
    config = pod_config()
    assert env_value("DETSERVE_MODELS") and env_value("DETSERVE_MAX_ANSWER_BUFFER_MB")
    assert config.model_choices[0].name == model_files.DEFAULT_MODELS
    # The answer budget holds at least the largest annotated answer, or every one would be refused.
    assert config.max_answer_buffer_mb >= memory_sizing.largest_answer_mib(config)


@pytest.mark.parametrize("name", sorted(model_files.MODELS))
def test_every_model_carries_its_measured_worker_memory(name):
    """A model the pod could be given can be sized: its share at its trained size is measured, a size
    variant is never given less than the nearest measured size above it, and more images cost more."""
    model = model_files.MODELS[name]
    assert model.memory is not None and dict(model.memory.ready_mib).get(model.input_size_px)
    shares = [model_files.worker_share_mib(model_files.parse_model_choice(f"{name}@{size}"))
              for size in range(model_files.MIN_INPUT_SIZE_PX, model_files.MAX_INPUT_SIZE_PX + 1,
                                model_files.INPUT_SIZE_STEP_PX)]
    assert shares == sorted(shares), "a larger input never needs less"
    for measured_px, measured_mib in model.memory.ready_mib:
        choice = model_files.parse_model_choice(f"{name}@{measured_px}")
        assert model_files.worker_share_mib(choice, 0) == measured_mib
    choice = model_files.parse_model_choice(name)
    assert model_files.worker_share_mib(choice, 4) > model_files.worker_share_mib(choice, 1)


def test_probes_gate_on_the_model_and_drain():
    probe = probes()
    assert probe["startupProbe"]["periodSeconds"] * probe["startupProbe"]["failureThreshold"] >= 60, \
        "a slow first model load must not be killed"
    assert probe["readinessProbe"]["periodSeconds"] * probe["readinessProbe"]["failureThreshold"] <= 15


def test_termination_outlasts_the_prestop_pause_and_the_drain():
    pod = deployment()["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause_s = float(command[1])
    assert pause_s >= 3, "endpoints need a moment to drop the pod before the drain starts"
    drain_s = float(env_value("DETSERVE_DRAIN_TIMEOUT_S")["value"])
    assert pod["terminationGracePeriodSeconds"] >= pause_s + drain_s + 10


def test_security_context_is_locked_down():
    pod = deployment()["spec"]["template"]["spec"]
    ctx = container()["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"] and "add" not in ctx["capabilities"]
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in container()["volumeMounts"]}
    assert mounts == {"/tmp"}, "the only writable path is /tmp"


def test_rolling_update_keeps_capacity():
    spec = deployment()["spec"]
    assert "replicas" not in spec, "the replica count belongs to make deploy/scale and the HPA"
    update = spec["strategy"]["rollingUpdate"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert update["maxUnavailable"] == 0 and update["maxSurge"] >= 1


def test_autoscaler_and_disruption_budget_make_sense():
    hpa = only("HorizontalPodAutoscaler")["spec"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    pdb = only("PodDisruptionBudget")["spec"]
    # minAvailable equal to the replica count would block every node drain.
    assert pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb


# -- the Makefile ------------------------------------------------------------------------------

def test_make_deploy_passes_the_replicas_to_kubectl():
    result = make("-n", "deploy", "REPLICAS=4", check=True)
    lines = result.stdout.splitlines()
    scale = [line for line in lines if line.startswith("kubectl scale") and "--replicas=4" in line]
    assert scale == [f"kubectl scale deployment/{APP_NAME} --replicas=4"], result.stdout
    applied = " ".join(line for line in lines if "kubectl apply" in line)
    for name in ("deployment.yml", "service.yml"):
        assert f"manifests/{name}" in applied
    assert lines.index(scale[0]) < next(i for i, l in enumerate(lines) if "kubectl rollout status" in l)


def test_make_deploy_substitutes_the_image():
    result = make("-n", "deploy", "IMAGE=registry.example.com/team/detserve:1.2", check=True)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("sed ")]
    match = re.match(r"sed 's\|([^|]+)\|([^|]+)\|' manifests/deployment.yml \| kubectl apply -f -$", line)
    assert match, line
    text = (MANIFESTS / "deployment.yml").read_text()
    assert text.count(match.group(1)) == 1, "the sed pattern must match the image line exactly once"
    substituted = yaml.safe_load(text.replace(match.group(1), match.group(2)))
    assert substituted["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.example.com/team/detserve:1.2"
    assert container()["image"] == "detserve:latest" and container()["imagePullPolicy"] == "IfNotPresent"


def test_make_deploy_all_applies_every_service_and_the_ingress():
    applied = " ".join(l for l in make("-n", "deploy-all", check=True).stdout.splitlines() if "kubectl apply" in l)
    for name in EXPECTED_FILES - {"hpa.yml"}:
        assert f"manifests/{name}" in applied, name


@pytest.mark.parametrize("target", ["deploy", "deploy-all", "scale", "undeploy", "sweep-cluster", "autoscale"])
def test_make_targets_say_when_kubectl_is_missing(target):
    result = make(target, "REPLICAS=2", "KUBECTL=/nonexistent/kubectl")
    assert result.returncode != 0
    assert "'/nonexistent/kubectl' not found: install kubectl" in result.stderr


def test_make_deploy_says_when_no_cluster_answers():
    # `false` is a kubectl whose every call fails, as with no reachable cluster.
    result = make("deploy", "REPLICAS=2", "KUBECTL=false")
    assert result.returncode != 0
    assert "no Kubernetes cluster answers" in result.stderr


def test_make_scale_wants_a_replica_count():
    # `true` is a kubectl for which everything succeeds.
    for replicas in ("", "0", "four"):
        result = make("scale", f"REPLICAS={replicas}", "KUBECTL=true")
        assert result.returncode != 0
        assert "REPLICAS must be a whole number of at least 1" in result.stderr


def test_make_sweep_cluster_scales_waits_then_sweeps_with_real_bench_flags():
    result = make("-n", "sweep-cluster", "SWEEP_OUT=/tmp/sweep.csv", check=True)
    script = result.stdout
    loop = re.search(r"for r in ([\d ]+); do", script)
    assert loop and loop.group(1).split() == ["1", "2", "4", "8", "16"], script
    scale, rollout, sweep = (script.index(s) for s in (
        "kubectl scale deployment/detserve --replicas=$r", "kubectl rollout status deployment/detserve",
        "-m bench sweep inputfolder http://localhost:30008/api/"))
    assert scale < rollout < sweep
    command = script[sweep:].split("||")[0]
    assert "--threads 1,2,4,8,16" in command and "--replicas $r" in command
    assert "--append" in command and "--out /tmp/sweep.csv" in command
    # The flags must be the bench CLI's own.
    help_text = subprocess.run([sys.executable, "-m", "bench", "sweep", "--help"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    for flag in re.findall(r"(--[a-z-]+)", command):
        assert flag in help_text, f"bench sweep has no {flag}"

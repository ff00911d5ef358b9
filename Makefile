# detserve: the two commands a fresh machine needs are `make run` and `make test`.
# Both create .venv, install what they need and fetch the model on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKERS ?= 2
PORT ?= 5050
# The models to serve and fetch (the server's --models); empty: DETSERVE_MODELS, else yolov3-tiny alone.
MODELS ?=
# The suite tests every registered model, so `make test` fetches all of them.
TEST_MODELS := yolov3-tiny,yolov4-tiny
# Stamps record what is installed, so each target installs only what it lacks.
RUNTIME_STAMP := $(VENV)/.runtime-installed
STAMP := $(VENV)/.test-installed

.PHONY: help install models test-models run test bench calibrate ceiling perf clean

help:
	@echo "make run          serve on :$(PORT) with $(WORKERS) workers (installs and fetches the model first)"
	@echo "make test         install the test dependencies, fetch the model, run the test suite"
	@echo "make models       fetch and verify the files of the configured models (MODELS=yolov3-tiny,yolov4-tiny)"
	@echo "make bench        load-test a running server: URL=... THREADS=..."
	@echo "make calibrate    measure the cost per image at batch sizes 1, 2, 4, 8 and suggest flags"
	@echo "make ceiling      the raw pipeline ceiling of this machine (no server)"
	@echo "make perf         the performance benchmark: ceiling vs detserve, with ratios"
	@echo "make image        build the Docker image (MODELS=... the models it carries); make image-test builds, runs and queries it"
	@echo "make deploy REPLICAS=4 [IMAGE=...]   deploy to the current kubectl context"
	@echo "make deploy-all | scale REPLICAS=n | autoscale | unautoscale | undeploy | sweep-cluster"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): setup.cfg pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(STAMP): $(RUNTIME_STAMP) setup.cfg
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(RUNTIME_STAMP)

models: $(RUNTIME_STAMP)
	$(PY) -m detserve.model_files $(if $(MODELS),--models $(MODELS))

test-models: $(RUNTIME_STAMP)
	$(PY) -m detserve.model_files --models $(TEST_MODELS)

run: models
	$(PY) -m detserve --workers $(WORKERS) --port $(PORT) $(if $(MODELS),--models $(MODELS))

test: $(STAMP) test-models
	$(PY) -m pytest tests

URL ?= http://127.0.0.1:$(PORT)/api/
THREADS ?= 4
bench: $(RUNTIME_STAMP)
	$(PY) -m bench inputfolder $(URL) $(THREADS)

calibrate: models
	$(PY) -m detserve.calibrate

ceiling: models
	$(PY) -m studies.ceiling inputfolder

perf: models
	$(PY) -m studies.perf inputfolder

clean:
	rm -rf $(VENV) *.egg-info build dist .pytest_cache

# ---- container and Kubernetes (image, image-test, deploy, deploy-all, scale, undeploy, sweep-cluster) ----
# These targets drive Docker and kubectl (the manifests are in manifests/).
# Each checks its tool first and stops with a message saying what is missing.

IMAGE ?= detserve:latest
DOCKER ?= docker
KUBECTL ?= kubectl
MANIFESTS := manifests
DEPLOYMENT := detserve
# Empty: `make deploy` keeps the current replica count (1 for a new deployment).
REPLICAS ?=
ROLLOUT_TIMEOUT ?= 300s
NODEPORT ?= 30008
# What `make sweep-cluster` loads: the NodePort on Docker Desktop by default.
CLUSTER_URL ?= http://localhost:$(NODEPORT)/api/
SWEEP_REPLICAS ?= 1 2 4 8 16
SWEEP_THREADS ?= 1,2,4,8,16
# Seconds per point; empty: bench's default.
SWEEP_DURATION ?=
SWEEP_OUT ?= bench/results/sweep-cluster-$(shell date -u +%Y%m%d-%H%M%S).csv
SWEEP_OUT := $(SWEEP_OUT)

.PHONY: image image-test docker-check kube-check \
        deploy deploy-all scale undeploy autoscale unautoscale sweep-cluster

# Shell snippets shared by the targets below.
check_replicas = case "$(REPLICAS)" in ''|*[!0-9]*|0*) echo "error: REPLICAS must be a whole number of at least 1, e.g. make $@ REPLICAS=4 (got '$(REPLICAS)')" >&2; exit 1;; esac
# An HPA owns the replica count while it exists; scaling by hand would be undone.
# Pods that never become ready are mostly Pending for want of CPU or memory.
rollout = $(KUBECTL) rollout status deployment/$(DEPLOYMENT) --timeout=$(ROLLOUT_TIMEOUT) || { echo "error: detserve pods not ready within $(ROLLOUT_TIMEOUT); see 'kubectl get pods -l app.kubernetes.io/name=detserve' and 'kubectl describe pod' (Pending: the cluster lacks the CPU or memory they request)" >&2; exit 1; }
check_no_hpa = if $(KUBECTL) get hpa/$(DEPLOYMENT) >/dev/null 2>&1; then echo "error: the HorizontalPodAutoscaler $(DEPLOYMENT) manages the replica count; run 'make unautoscale' first" >&2; exit 1; fi

docker-check:
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "error: '$(DOCKER)' not found: install Docker (e.g. apt-get install docker.io) to build the image" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "error: no Docker engine answers ('$(DOCKER) info' failed): start dockerd or Docker Desktop" >&2; exit 1; }

kube-check:
	@command -v $(KUBECTL) >/dev/null 2>&1 || { echo "error: '$(KUBECTL)' not found: install kubectl and point it at a cluster (Docker Desktop: Settings > Kubernetes > Enable Kubernetes)" >&2; exit 1; }
	@$(KUBECTL) cluster-info --request-timeout=5s >/dev/null 2>&1 || { echo "error: no Kubernetes cluster answers for kubectl context '$$($(KUBECTL) config current-context 2>/dev/null || echo '<none>')': start the cluster or choose one with 'kubectl config use-context NAME'" >&2; exit 1; }

image: docker-check
	$(DOCKER) build $(if $(MODELS),--build-arg MODELS=$(MODELS) )-t $(IMAGE) .
	@$(DOCKER) image inspect $(IMAGE) --format 'built $(IMAGE): {{.Size}} bytes'

# Builds the image, runs it with --network host on 127.0.0.1 and posts an image
# to it (tests/test_dockerfile.py::test_image_serves). Skips without an engine.
# Where no base image can be pulled, build a local python:3.11-slim stand-in first.
image-test:
	@if ! command -v $(DOCKER) >/dev/null 2>&1 || ! $(DOCKER) info >/dev/null 2>&1; then \
	  echo "image-test skipped: no Docker engine answers ('$(DOCKER) info' failed). Install and start one (apt-get install docker.io; dockerd &) and run make image-test again."; \
	  exit 0; \
	fi; \
	$(MAKE) --no-print-directory image $(STAMP) && \
	DETSERVE_IMAGE_TEST=$(IMAGE) DOCKER=$(DOCKER) $(PY) -m pytest tests/test_dockerfile.py -k test_image_serves -rs -v -s

# The deployment, the NodePort service and the guard rails (PDB, NetworkPolicy).
deploy: kube-check
	@$(if $(REPLICAS),$(check_replicas); $(check_no_hpa))
	sed 's|image: detserve:latest|image: $(IMAGE)|' $(MANIFESTS)/deployment.yml | $(KUBECTL) apply -f -
	$(KUBECTL) apply -f $(MANIFESTS)/service.yml -f $(MANIFESTS)/pdb.yml -f $(MANIFESTS)/networkpolicy.yml
	$(if $(REPLICAS),$(KUBECTL) scale deployment/$(DEPLOYMENT) --replicas=$(REPLICAS))
	$(rollout)
	@$(KUBECTL) get deployment/$(DEPLOYMENT) service/detserve-nodeport
	@node_ip=$$($(KUBECTL) get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}' 2>/dev/null); \
	echo "detserve is ready. Reach it through the NodePort service:"; \
	echo "  Docker Desktop:  curl http://localhost:$(NODEPORT)/"; \
	echo "  any node:        curl http://$${node_ip:-NODE_IP}:$(NODEPORT)/"; \
	echo "  the API:         POST http://localhost:$(NODEPORT)/api/   (try: make bench URL=http://localhost:$(NODEPORT)/api/)"

deploy-all: deploy
	$(KUBECTL) apply -f $(MANIFESTS)/service-loadbalancer.yml -f $(MANIFESTS)/service-clusterip.yml -f $(MANIFESTS)/ingress.yml
	@$(KUBECTL) get ingressclass nginx >/dev/null 2>&1 || echo "note: no IngressClass 'nginx' in this cluster: install the ingress-nginx controller for ingress.yml to route (see docs/deployment.md)"
	@$(KUBECTL) get service detserve-nodeport detserve-loadbalancer detserve-clusterip
	@$(KUBECTL) get ingress detserve
	@echo "NodePort:      http://localhost:$(NODEPORT)/api/"
	@echo "LoadBalancer:  http://EXTERNAL-IP:8080/api/ (Docker Desktop: http://localhost:8080/api/)"
	@echo "Ingress:       http://ADDRESS/api/ (Docker Desktop: http://localhost/api/)"
	@echo "ClusterIP:     http://detserve-clusterip/api/ from inside the cluster"

scale: kube-check
	@$(check_replicas); $(check_no_hpa)
	$(KUBECTL) scale deployment/$(DEPLOYMENT) --replicas=$(REPLICAS)
	$(rollout)

autoscale: kube-check
	$(KUBECTL) apply -f $(MANIFESTS)/hpa.yml
	@$(KUBECTL) get apiservice v1beta1.metrics.k8s.io >/dev/null 2>&1 || echo "note: no metrics API in this cluster: the HPA needs metrics-server to see CPU use"

unautoscale: kube-check
	$(KUBECTL) delete --ignore-not-found -f $(MANIFESTS)/hpa.yml

undeploy: kube-check
	$(KUBECTL) delete --ignore-not-found -f $(MANIFESTS)/

# For each replica count: scale, wait until every pod is ready, then one bench
# sweep over the thread counts, all rows appended to one CSV file.
sweep-cluster: kube-check $(RUNTIME_STAMP)
	@$(check_no_hpa)
	@mkdir -p $(dir $(SWEEP_OUT))
	for r in $(SWEEP_REPLICAS); do \
	  $(KUBECTL) scale deployment/$(DEPLOYMENT) --replicas=$$r || exit 1; \
	  $(rollout); \
	  $(PY) -m bench sweep inputfolder $(CLUSTER_URL) --threads $(SWEEP_THREADS) --replicas $$r \
	    $(if $(SWEEP_DURATION),--duration $(SWEEP_DURATION)) --append --out $(SWEEP_OUT) || exit 1; \
	done
	@echo "results: $(SWEEP_OUT)  (plot: $(PY) -m bench plot $(SWEEP_OUT) -o $(basename $(SWEEP_OUT)).png)"

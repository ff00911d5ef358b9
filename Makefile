# detserve: the two commands a fresh machine needs are `make run` and `make test`.
# Both create .venv, install what they need and fetch the model on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKERS ?= 2
PORT ?= 5050
STAMP := $(VENV)/.installed

.PHONY: help install models run test bench ceiling perf clean

help:
	@echo "make run          serve on :$(PORT) with $(WORKERS) workers (installs and fetches the model first)"
	@echo "make test         install test dependencies, fetch the model, run the test suite"
	@echo "make models       fetch and verify the YOLOv3-tiny files"
	@echo "make bench        load-test a running server: URL=... THREADS=..."
	@echo "make perf         the performance benchmark (ceiling vs detserve, ratios)"
	@echo "make image        build the Docker image; make image-test builds and serves it"
	@echo "make deploy REPLICAS=4   deploy to the current kubectl context"

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

models: $(STAMP)
	$(PY) -m detserve.model_files

run: models
	$(PY) -m detserve --workers $(WORKERS) --port $(PORT)

test: models
	$(PY) -m pytest tests

URL ?= http://127.0.0.1:$(PORT)/api/
THREADS ?= 4
bench: $(STAMP)
	$(PY) -m bench inputfolder $(URL) $(THREADS)

ceiling: models
	$(PY) -m bench.ceiling inputfolder

perf: models
	$(PY) -m bench.perf inputfolder

clean:
	rm -rf $(VENV) *.egg-info build dist .pytest_cache

# ---- container and Kubernetes (image, image-test, deploy, deploy-all, scale, undeploy, sweep-cluster) ----

# medsynth — `make test` and `make demo` work from a fresh clone: both install what they need first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install tools test test-containers demo images dashboards protos bench bench-generators bench-gate bench-load bench-ingest bench-fid bench-study clean help

help:
	@echo "make install  create $(VENV) with the pinned dependencies (requirements.lock, requirements-tools.lock) and medsynth"
	@echo "make test     install, then run the test suite"
	@echo "make test-containers  the pipeline in containers with podman: every image (built where missing), deploy/compose.yaml"
	@echo "               with deploy/compose.podman.yaml, the demo's path over REST with a worker killed (~6 min; not in make test)"
	@echo "make demo     install, then run the main job end to end on phantom scans (DATA=dir to use your own)"
	@echo "make bench-generators  train every generator family under one wall-clock budget and compare them"
	@echo "               (DATA=dir, default phantoms; ARGS=\"--budget-min 8 --families spade stylegan2\"); run it alone"
	@echo "make bench-gate  how often the memorization gate flags planted copies and held-out real images"
	@echo "               (ARGS=\"--dataset D --view-id V\": a view in the local store)"
	@echo "make bench-load  the supervised stack under load: 10,000 uploads by 50 clients, 20 clients requesting cohorts"
	@echo "               (ARGS=\"--scans 2000 --cohort-seconds 30\"); run it alone"
	@echo "make bench-ingest  DICOM series -> canonical volumes beside dcm2niix (dcm_qa_nih when present), and NIfTI/DICOM"
	@echo "               uploads through the ingest service (ARGS=\"--rounds 5 --scans 500 --no-service\"); run it alone"
	@echo "               ARGS=--memory: the ingest service's peak RSS under two concurrent 300 MB uploads instead"
	@echo "make bench-fid  features and FID for 10,000 images a side, medsynth beside clean-fid on the same files"
	@echo "               (ARGS=\"--images 2000 --rounds 1\"); run it alone"
	@echo "make bench-study  a study of tiny jobs on the local stack: scheduling and queue delay per job, reuse; run it alone"
	@echo "make images   build the service images (deploy/images/Dockerfile; CPU, and CUDA for the GPU stages) with Docker,"
	@echo "               or with podman from a local base where no registry can be reached (deploy/images/build-local.sh)"
	@echo "make dashboards  regenerate the Grafana dashboards (helm/medsynth/files/dashboards) from deploy/grafana/dashboards.py"
	@echo "make protos   regenerate the protobuf code in libs/medsynth/src/medsynth/v1 from protos/"

install: $(STAMP)

$(STAMP): requirements.lock requirements-tools.lock libs/medsynth/pyproject.toml
	@java -version 2>&1 | grep -q 'version "17' || { echo "Java 17 is required (TorchServe): install openjdk-17-jre-headless" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-tools.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e libs/medsynth
	touch $(STAMP)

# Real DICOM peers and the reference converter the tests and bench-ingest check against, Prometheus
# (promtool for the alert rules' unit tests, the server to run every dashboard query on the stack) and
# Chromium (the browser tests, driven by Playwright): Debian packages.
DEBIAN_TOOLS := dcmtk dcm2niix dicom3tools prometheus chromium
tools:
	@command -v storescu >/dev/null && command -v dcm2niix >/dev/null && command -v dciodvfy >/dev/null && command -v promtool >/dev/null && command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q $(DEBIAN_TOOLS) >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $(DEBIAN_TOOLS) >/dev/null; }; \
	  else echo "the DICOM, monitoring and browser tests need $(DEBIAN_TOOLS): sudo apt-get install $(DEBIAN_TOOLS)" >&2; exit 1; fi; }

test: install tools
	$(PY) -m pytest tests

demo: install
	$(VENV)/bin/medsynth demo $(if $(DATA),--data $(DATA)) $(ARGS)

bench: bench-generators

bench-generators: install
	$(VENV)/bin/python -m medsynth.bench.generators $(if $(DATA),--data $(DATA)) $(ARGS)

bench-gate: install
	$(VENV)/bin/python -m medsynth.bench.gate $(ARGS)

bench-load: install
	$(VENV)/bin/python -m medsynth.bench.load $(ARGS)

bench-ingest: install tools
	$(VENV)/bin/python -m medsynth.bench.ingest $(ARGS)

bench-fid: install
	$(VENV)/bin/python -m medsynth.bench.fid $(ARGS)

bench-study: install
	$(VENV)/bin/python -m medsynth.bench.study $(ARGS)

# The service images (deploy/images/Dockerfile): with a Docker engine, from the public base and PyTorch's CPU
# index (VARIANT=cuda too for the GPU stages); else with podman, from a local Debian base and a local CPU
# torch wheel (deploy/images/build-local.sh: no registry needed; sizes and build times in build-local.json).
IMAGE_TARGETS := api ingest trainer preparer sampler segmenter evaluator torchserve
GPU_TARGETS := trainer segmenter torchserve
VERSION ?= 0.1.0
images:
	@if docker info >/dev/null 2>&1; then \
	  for t in $(IMAGE_TARGETS); do \
	    docker build -f deploy/images/Dockerfile --target $$t --build-arg VERSION=$(VERSION) -t medsynth/$$t:$(VERSION) . || exit 1; \
	  done; \
	  for t in $(GPU_TARGETS); do \
	    docker build -f deploy/images/Dockerfile --target $$t --build-arg VARIANT=cuda --build-arg VERSION=$(VERSION) -t medsynth/$$t:$(VERSION)-cuda . || exit 1; \
	  done; \
	  docker image ls 'medsynth/*'; \
	elif command -v podman >/dev/null; then \
	  VERSION=$(VERSION) deploy/images/build-local.sh $(IMAGE_TARGETS); \
	else echo "make images needs a running Docker engine or podman (apt-get install podman buildah runc debootstrap)" >&2; exit 1; fi

# The pipeline in containers (tests/containers, README "Deploy"): podman's Docker API driven by testcontainers,
# the images built by deploy/images/build-local.sh where missing (what `make images` runs under podman, the
# trial-servers image too), podman-compose for `compose config`. Not part of `make test`: about 6 minutes with
# the images built, 15 more to build them.
CONTAINER_IMAGES := $(IMAGE_TARGETS) trial-servers
PODMAN_COMPOSE := podman-compose==1.6.0
test-containers: install
	@command -v podman >/dev/null || { echo "make test-containers needs podman (apt-get install podman buildah runc debootstrap)" >&2; exit 1; }
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(PODMAN_COMPOSE)
	@missing=""; for t in $(CONTAINER_IMAGES); do podman image exists localhost/medsynth/$$t:$(VERSION) || missing="$$missing $$t"; done; \
	  if [ -n "$$missing" ]; then echo "building the missing images:$$missing"; VERSION=$(VERSION) deploy/images/build-local.sh $$missing; fi
	MEDSYNTH_CONTAINER_TESTS=1 $(PY) -m pytest tests/containers $(ARGS)

dashboards: install
	$(PY) deploy/grafana/dashboards.py

protos: install
	$(PY) -m grpc_tools.protoc -I protos --python_out=libs/medsynth/src --pyi_out=libs/medsynth/src protos/medsynth/v1/*.proto

clean:
	rm -rf $(VENV) .medsynth .pytest_cache

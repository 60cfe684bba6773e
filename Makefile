# The kit's front door. `make` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPEC ?= models.yaml
REPO ?= model_repository
K8S_REPOSITORY ?= pvc:model-repository
TARGET ?= auto
MODEL ?= text_encoder
PROTOCOL ?= grpc
TRITON_HTTP_PORT ?= 8000
TRITON_GRPC_PORT ?= 8001
TRITON_METRICS_PORT ?= 8002
export TRITON_HTTP_PORT TRITON_GRPC_PORT TRITON_METRICS_PORT

# The runtime the environment gets: gpu (onnxruntime-gpu, the host's CUDA PyTorch reused) where
# nvidia-smi lists a GPU, cpu elsewhere or with TARGET=cpu.
RUNTIME := $(if $(filter cpu,$(TARGET)),cpu,$(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo gpu || echo cpu))
REQUIREMENTS := $(if $(filter gpu,$(RUNTIME)),requirements-gpu.txt,requirements.lock)
# The environment is keyed by its runtime and the content of its requirements: a change
# re-installs, an unchanged set installs nothing.
DEPS_HASH := $(shell cat pyproject.toml $(REQUIREMENTS) | sha256sum | cut -c1-16)
VENV_STAMP := $(VENV)/.deps-$(RUNTIME)-$(DEPS_HASH)

.PHONY: help venv backend compat build-repo check-repo serve loadtest tune image k8s-manifests deploy-check test test-system test-durations coverage lint format docs docs-serve lock clean

help: ## list the targets
	@echo "usage: make <target> [VAR=value]"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "variables: SPEC=$(SPEC) REPO=$(REPO) TARGET=$(TARGET) FORCE=1 TRT_VERSION= COMPUTE_CAPABILITY= TORCH_VERSION= MODEL=$(MODEL) PROTOCOL=$(PROTOCOL) URL=host:port TRITON_{HTTP,GRPC,METRICS}_PORT PYTEST_ARGS=..."

venv: $(VENV_STAMP) ## create or refresh .venv: requirements.lock, or requirements-gpu.txt where nvidia-smi lists a GPU

$(VENV_STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11+ is needed, $(PYTHON) is " + sys.version.split()[0] + "; run make with PYTHON=python3.11")'
	@if [ -x $(PY) ] && [ "$$(cat $(VENV)/.runtime 2>/dev/null || echo cpu)" != "$(RUNTIME)" ]; then \
		echo "recreating $(VENV) for the $(RUNTIME) runtime"; rm -rf $(VENV); fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo $(RUNTIME) > $(VENV)/.runtime
	@# gpu: the host interpreter's packages (its CUDA PyTorch) come after the environment's own, so
	@# they are reused rather than downloaded, whether they live in the system or in a venv.
	$(if $(filter gpu,$(RUNTIME)),$(PYTHON) -c 'import site; print("\n".join(site.getsitepackages()))' \
		> "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_host_packages.pth")
	@echo "installing the $(RUNTIME) requirements ($(REQUIREMENTS)) into $(VENV) (the first time takes a few minutes; pip lists each package)"
	$(PY) -m pip install -q --upgrade pip
	set -o pipefail; $(PY) -m pip install --progress-bar off -r $(REQUIREMENTS) | { grep --line-buffered -E '^(Collecting|Successfully installed)' || true; }
	@echo "installing the kit itself (editable: the triton-kit-* commands in $(VENV)/bin)"
	PYTHONWARNINGS=ignore $(PY) -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.deps-*
	@touch $@

# The other end of the supported ranges: the lock with numpy 2 and the oldest onnxruntime minor,
# as GPU hosts carry them, for the builder and the unit tests. Serving needs numpy 1 (Triton
# 2.51's Python backend predates 2; requirements-gpu.txt): here the server must refuse to load.
# nvidia-pytriton's numpy<2 pin and matplotlib's follow that: installed without deps.
COMPAT_VENV ?= .venv-compat
COMPAT_PINS := numpy==2.4.6 onnxruntime==1.30.0 onnx==1.23.1
COMPAT_NODEPS := nvidia-pytriton matplotlib
compat: ## build the examples and run the unit tests with numpy 2 and onnxruntime 1.30 (.venv-compat)
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	grep -v -E '^($(subst $(eval) ,|,$(foreach p,$(COMPAT_PINS) $(COMPAT_NODEPS) ml_dtypes contourpy,$(firstword $(subst ==, ,$(p))))))==' requirements.lock > $(COMPAT_VENV)/requirements.txt
	printf '%s\n' $(COMPAT_PINS) >> $(COMPAT_VENV)/requirements.txt
	$(COMPAT_VENV)/bin/python -m pip install -qq -r $(COMPAT_VENV)/requirements.txt
	$(COMPAT_VENV)/bin/python -m pip install -qq --no-deps $(filter $(addsuffix ==%,$(COMPAT_NODEPS)),$(shell cat requirements.lock))
	$(COMPAT_VENV)/bin/python -c 'import numpy, onnxruntime; print("compat: numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)'
	rm -rf .compat && $(COMPAT_VENV)/bin/python -m builder build --spec $(SPEC) --repo .compat/model_repository --target cpu
	$(COMPAT_VENV)/bin/python -m pytest tests/unit tests/integration/test_numpy_guard.py -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

backend: venv ## compile Triton's C++ onnxruntime backend for the embedded server (once; cached; TRITON_KIT_SOURCE_MIRROR=dir offline)
	$(PY) -m server.onnxruntime_backend

build-repo: backend ## build model_repository/ from models.yaml (TARGET=cpu|gpu, default: this machine's; FORCE=1 re-exports)
	$(VENV)/bin/triton-kit-builder build --spec $(SPEC) --repo $(REPO) --target $(TARGET) $(if $(FORCE),--force)

check-repo: venv ## check any model repository against Triton's rules (REPO=path, TARGET=cpu|gpu, STRICT=1, SERVER_VERSION=2.51, TRT_VERSION=10.5, COMPUTE_CAPABILITY=9.0, TORCH_VERSION=2.5.0a0)
	$(VENV)/bin/triton-kit-builder check --repo $(REPO) $(if $(filter-out auto,$(TARGET)),--target $(TARGET)) \
		$(if $(STRICT),--strict-model-config) $(if $(SERVER_VERSION),--server-version $(SERVER_VERSION)) \
		$(if $(TRT_VERSION),--tensorrt-version $(TRT_VERSION)) $(if $(COMPUTE_CAPABILITY),--compute-capability $(COMPUTE_CAPABILITY)) \
		$(if $(TORCH_VERSION),--torch-version $(TORCH_VERSION))

serve: venv ## serve model_repository/ with the embedded Triton server in the foreground (Ctrl-C stops it)
	@test -d $(REPO) || { echo "error: $(REPO) does not exist; run 'make build-repo' first" >&2; exit 1; }
	exec $(VENV)/bin/triton-kit-server --repo $(REPO)

loadtest: venv ## load-test a served model with Locust into reports/ (MODEL=, PROTOCOL=grpc|http, URL=, LOADTEST_ARGS=)
	$(VENV)/bin/triton-kit-loadtest --model $(MODEL) --protocol $(PROTOCOL) $(if $(URL),--url $(URL)) $(LOADTEST_ARGS)

P95_MS ?= 20
tune: venv ## search MODEL's serving options for the highest rate within a p95 budget (P95_MS=20, TUNE_ARGS="--budget-s 600 --write")
	$(VENV)/bin/triton-kit-loadtest tune --model $(MODEL) --p95-ms $(P95_MS) --spec $(SPEC) --repo $(REPO) $(if $(URL),--url $(URL)) $(TUNE_ARGS)

KIT_IMAGE ?= triton-model-kit:0.1.0
image: venv ## build the kit's CPU serving image, what `docker compose --profile cpu` runs (KIT_IMAGE=, IMAGE_ARGS="--build-arg TORCH=0")
	$(PY) -m deploy image-context .triton/image
	docker build --file deploy/docker/Dockerfile --tag $(KIT_IMAGE) $(IMAGE_ARGS) .

# TARGET=auto is this machine's runtime, as for build-repo.
K8S_TARGET := $(if $(filter auto,$(TARGET)),$(RUNTIME),$(TARGET))
k8s-manifests: venv ## render Kubernetes manifests into deploy/kubernetes/rendered/ (TARGET=gpu|cpu, default: this machine's; K8S_REPOSITORY=s3://... or pvc:name)
	$(VENV)/bin/triton-kit-deploy k8s --target $(K8S_TARGET) --repository $(K8S_REPOSITORY) --out deploy/kubernetes/rendered/triton-$(K8S_TARGET).yaml

deploy-check: venv ## validate docker-compose.yml and the Kubernetes manifests offline (schemas, no cluster)
	$(VENV)/bin/triton-kit-deploy check

TEST_WORKERS ?= 2
TIMINGS ?= .triton/test-timings.json
COVERAGE_PACKAGES := builder clients server loadtest deploy models
test: venv ## every test that needs no Docker engine: in parallel, then the serial ones alone (TEST_WORKERS=2, PYTEST_ARGS=)
	$(PY) -m tests.run --workers $(TEST_WORKERS) $(PYTEST_ARGS)

test-system: venv ## the tests that need a Docker engine: the kit image built, docker-compose.yml brought up for real
	$(PY) -m pytest -m docker $(PYTEST_ARGS)

test-durations: venv ## make test, recording each test's set-up, call and teardown; prints where the time went
	rm -f $(TIMINGS)
	$(PY) -m tests.run --workers $(TEST_WORKERS) --timings-file=$(TIMINGS) $(PYTEST_ARGS); status=$$?; \
		$(PY) -m tests.timing $(TIMINGS); exit $$status

coverage: venv ## make test under coverage.py: line coverage of the kit's packages
	$(PY) -m tests.run --workers $(TEST_WORKERS) $(addprefix --cov=,$(COVERAGE_PACKAGES)) --cov-report=term:skip-covered $(PYTEST_ARGS)

lint: venv ## ruff (lint + format check), mypy, and the import contracts (lint-imports)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

format: venv ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Material's banner about its own end of life is no warning about these docs: off, so that any
# line the build prints is one.
docs docs-serve: export NO_MKDOCS_2_WARNING := 1
docs: venv ## build the docs site into site/ (mkdocs --strict: a broken link or reference, or a failing generated table, fails it)
	$(PY) -m mkdocs build --strict

DOCS_PORT ?= 8008
docs-serve: venv ## serve the docs site on 127.0.0.1:$(DOCS_PORT), rebuilt as pages change
	$(PY) -m mkdocs serve --strict --dev-addr 127.0.0.1:$(DOCS_PORT)

lock: ## re-resolve requirements.lock from the pins in pyproject.toml
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	$(PYTHON) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))' > .lock-venv/requirements.in
	.lock-venv/bin/pip install --quiet -r .lock-venv/requirements.in
	{ sed -n 1,2p requirements.lock; .lock-venv/bin/pip freeze | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

clean: ## remove the virtualenv, build workspace and caches (model_repository/ stays)
	rm -rf $(VENV) $(COMPAT_VENV) site .compat .$(notdir $(REPO)).build .triton .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

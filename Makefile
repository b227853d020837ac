# One command each: `make demo` (set up, build, grade example submissions, write their reports)
# and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TG := $(VENV)/bin/tensorgrade
DEMO := dist/demo

.PHONY: setup build demo image test test-fast lint clean

$(VENV)/.installed: pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $@

setup: $(VENV)/.installed

build: setup
	$(TG) build

demo: build
	rm -rf $(DEMO)
	$(TG) examples 01_tensors -o $(DEMO)/submissions
	$(TG) grade $(DEMO)/submissions -a 01_tensors -o $(DEMO)/results -j 2
	$(TG) report $(DEMO)/results -o $(DEMO)/reports
	$(TG) export $(DEMO)/results --format plain -o $(DEMO)/grades-plain.csv
	@echo "open $(DEMO)/reports/index.html (class summary) and $(DEMO)/reports/<submission>.html"

# The grading image, tensorgrade-grader (VARIANT=cuda for the CUDA build of the pinned torch);
# needs a Docker engine, makes its Debian base itself where no registry is reachable.
image: build
	PYTHON=$(PY) bash autograder/docker/build-image.sh

lint: setup
	$(VENV)/bin/ruff check autograder tests bench
	$(VENV)/bin/ruff format --check autograder tests bench
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest --durations=15

# The inner loop: everything but what takes seconds per test (slow: whole notebooks graded,
# kernels, worker pools, builds), starts sandboxes (sandbox: Linux confinement, mostly as root) or
# needs a service (Docker, Slurm, the grading image, a package index, a browser). Tests of a built
# course build only the assignments they use (01 for the engine's bad-input tests).
FAST := not slow and not sandbox and not docker and not slurm and not image and not release and not browser
test-fast: setup
	$(PY) -m pytest -m "$(FAST)" --durations=5

clean:
	rm -rf dist results .pytest_cache .ruff_cache

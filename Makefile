# Two commands do all the set-up on a fresh machine:  `make run`  and  `make test`.
# torch is installed first and pinned, so pip takes the CPU wheel instead of a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.synclearn-installed

.PHONY: install cluster run test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# the cluster launchers too (SLURM via submitit, Ray): `make cluster`; the local ones (joblib, Optuna) are in dev
cluster: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,cluster]'

run: $(STAMP)
	$(VENV)/bin/synclearn run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m '' $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

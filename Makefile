# make demo: set up .venv if missing, make phantoms, train, test, print the Dice/NSD table.
# make test: set up .venv if missing, run the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test zeroshot venv clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt pytest
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	PYTHON=$(PY) bash training_scripts/train_phantom.sh
	PYTHON=$(PY) bash testing_scripts/test_phantom.sh

zeroshot: $(STAMP)
	PYTHON=$(PY) bash testing_scripts/test_phantom_zeroshot.sh

test: $(STAMP)
	$(PY) -m pytest -q

clean-demo:
	rm -rf Model/phantom_ct outputs/data/phantom_ct outputs/data/phantom_mr

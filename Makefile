# Shortcuts for the commands the README and .ci/run use. Python is the active environment's.
PYTHON ?= python

.PHONY: help install lint format test test-fast bench demo

help:
	@echo "make install    the editable install with the build, test and lint extras"
	@echo "make lint       ruff lint + format check, mypy on sdk/ (the CI gates)"
	@echo "make format     ruff format and the safe ruff fixes, in place"
	@echo "make test       the whole suite (two workers)"
	@echo "make test-fast  the suite without the modules marked slow"
	@echo "make bench      the CPU benchmark harness on the demo model (benchmarks/run.py --models demo)"
	@echo "make demo       build the demo bundle and translate one photograph"

install:
	$(PYTHON) -m pip install -e ".[export,test,lint]"

lint:
	ruff check .
	ruff format --check .
	mypy

format:
	ruff check --fix .
	ruff format .

test:
	$(PYTHON) -m pytest -q --durations=25

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

bench:
	$(PYTHON) benchmarks/run.py --models demo

demo:
	$(PYTHON) export/build_engines.py && $(PYTHON) samples/translate.py --output out.png

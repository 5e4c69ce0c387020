# The two commands of the README. Each installs what it needs first (scripts/setup.sh).
PY ?= python3

.PHONY: run test setup
setup:
	@PYTHON=$(PY) bash scripts/setup.sh

run: setup
	$(PY) -m studies.universality

test: setup
	$(PY) -m pytest -q

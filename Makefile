# The two commands of the README. Each first prepares the project's Python (scripts/setup.sh):
# a virtual environment in .venv/ by default, or the interpreter named by SPLITKIT_PYTHON.
PYTHON ?= python3

.PHONY: run test setup
setup:
	@PYTHON=$(PYTHON) bash scripts/setup.sh >/dev/null

run:
	@py=$$(PYTHON=$(PYTHON) bash scripts/setup.sh) && set -x && $$py -m studies.universality $(ARGS)

test:
	@py=$$(PYTHON=$(PYTHON) bash scripts/setup.sh) && set -x && $$py -m pytest -q $(ARGS)

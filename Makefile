# Two commands for a newcomer:  make book   and   make test
# Both create (or reuse) the virtual environment .venv from requirements.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.labkit-installed
PYTEST_ARGS ?=

.PHONY: book test lint format smoke-book student-book editions venv sample benchmark full clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@$(BIN)/python -c "import torch, torchvision, labkit" || { \
	  echo "torch and torchvision do not match in $(VENV) (a CPU-only torch wheel without"; \
	  echo "torchvision's operators?). Remove $(VENV) and run make again."; exit 1; }
	@touch $(STAMP)

## Build the book (book mode unless LABKIT_MODE is set; every page executed) into _build/html.
book: $(STAMP)
	$(BIN)/jupyter-book clean .
	LABKIT_STATIC=1 $(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Open _build/html/index.html"

## The book in smoke mode, as CI builds it.
smoke-book: $(STAMP)
	$(BIN)/jupyter-book clean .
	LABKIT_MODE=smoke LABKIT_STATIC=1 $(BIN)/jupyter-book build . -W -n --keep-going

## The student edition of the book (no solutions; labs as student notebooks) into _build/student/html.
student-book: $(STAMP)
	$(BIN)/python -m labkit.course student-book

## Student and solution editions of the labs, and a manifest, into course/.
editions: $(STAMP)
	$(BIN)/python -m labkit.course editions course

## Unit and property tests of labkit, and the book built in smoke mode: every lab executed once
## (each check failing on its stub and passing on its solution), every page once, both editions.
test: $(STAMP)
	LABKIT_MODE=smoke $(BIN)/python -m pytest -n 2 --dist loadscope -p no:cacheprovider $(PYTEST_ARGS)

## ruff: lint and formatting check of labkit, tests and scripts (configured in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check labkit tests scripts conftest.py book/_ext
	$(BIN)/ruff format --check labkit tests scripts conftest.py book/_ext

## Apply ruff's formatting and safe fixes.
format: $(STAMP)
	$(BIN)/ruff check --fix labkit tests scripts conftest.py book/_ext
	$(BIN)/ruff format labkit tests scripts conftest.py book/_ext

## Rebuild the bundled smoke-mode samples from the official files in $$LABKIT_DATA.
sample: $(STAMP)
	$(BIN)/python scripts/make_sample.py

## Time the test suite and every page and lab (smoke and book mode); record the lab times for the book.
benchmark: $(STAMP)
	$(BIN)/python scripts/benchmark.py --json book/data/lab_times.json

## Run a chapter's experiment at full size and record it for the book: make full CH=ch01
full: $(STAMP)
	LABKIT_MODE=full $(BIN)/python -m labkit.chapters $(CH)

clean:
	-$(BIN)/jupyter-book clean . 2>/dev/null
	rm -rf .pytest_cache .hypothesis

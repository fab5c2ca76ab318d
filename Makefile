# Losses, Derived: `make book` builds the site, `make test` runs every check.
# Both bootstrap .venv from requirements.txt on first use and reuse it afterwards.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUILD  := _build
NBDIR  := $(BUILD)/notebooks
# Chapters are the MyST notebooks under book/ (pages with a jupytext header).
CHAPTERS = $(shell grep -l '^ *format_name: myst' book/*.md)
JOBS   ?= 2

export PYTHONHASHSEED := 0
# Chapters and tests run tiny tensors, two processes at a time on a 2-core machine: one thread
# each avoids oversubscription, which slows such work several-fold. Benchmarks keep the default.
unit nbval book page site-test: export OMP_NUM_THREADS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all setup book page test lint typecheck unit notebooks nbval site-test bench clean

all: book

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --requirement requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --editable .
	@touch $(STAMP)

setup: $(STAMP)

# The site: every chapter is re-read (--all, so a change in companion/ alone re-runs them all)
# and executed (execute_notebooks: force); any warning or cell error fails the build.
book: $(STAMP)
	$(BIN)/jupyter-book build . --all --warningiserror --keep-going

# A quick look at one chapter while writing it: the whole site is built into
# _build/pages/NAME, but only PAGE and the errata are executed, so glue references into the
# other (unexecuted) chapters are not reported. `make book` checks everything.
#   make page PAGE=book/nce.md
page: $(STAMP)
	@test -n "$(PAGE)" || { echo "usage: make page PAGE=book/<chapter>.md"; exit 2; }
	@mkdir -p $(BUILD)/pages
	$(BIN)/python tools/page_config.py $(PAGE) > $(BUILD)/pages/$(notdir $(PAGE:.md=))-config.yml
	$(BIN)/jupyter-book build . --config $(BUILD)/pages/$(notdir $(PAGE:.md=))-config.yml \
	  --path-output $(BUILD)/pages/$(notdir $(PAGE:.md=)) --all --warningiserror --keep-going

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -n $(JOBS) -m "not browser" tests

# jupytext turns each MyST chapter into a plain .ipynb (no outputs) for nbval.
notebooks: $(STAMP)
	@rm -rf $(NBDIR) && mkdir -p $(NBDIR)
	@for f in $(CHAPTERS); do \
	  $(BIN)/jupytext --quiet --to ipynb --output $(NBDIR)/$$(basename $${f%.md}).ipynb $$f || exit 1; \
	done

# One notebook per worker; check cells (asserts) make the values count.
nbval: notebooks
	$(BIN)/pytest -q -p no:cacheprovider --nbval-lax -n $(JOBS) --dist loadfile $(NBDIR)

site-test: $(STAMP)
	$(BIN)/pytest -q -m browser tests/test_site.py

test: lint typecheck unit nbval book site-test

bench: $(STAMP)
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(BUILD)

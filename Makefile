# Losses, Derived: `make book` builds the site, `make test` runs every check.
# Both bootstrap .venv from requirements.txt on first use and reuse it afterwards.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUILD  := _build
NBDIR  := $(BUILD)/notebooks
NBCACHE := $(BUILD)/.jupyter_cache
WHEELENV := $(BUILD)/wheel-venv
PDF    := $(BUILD)/html/losses-derived.pdf
# Chapters are the MyST notebooks under book/ (pages with a jupytext header).
CHAPTERS = $(shell grep -l '^ *format_name: myst' book/*.md)
JOBS   ?= 2

export PYTHONHASHSEED := 0
# Chapters and tests run tiny tensors, two processes at a time on a 2-core machine: one thread
# each avoids oversubscription, which slows such work several-fold. Benchmarks keep the default.
unit nbval book page site-test: export OMP_NUM_THREADS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all setup book pdf page test lint typecheck unit notebooks nbval site-test wheel-test bench clean

all: book

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --requirement requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --editable .
	@touch $(STAMP)

setup: $(STAMP)

# The site. Each chapter is executed once, by nbval (below), whose outputs are filed in the
# build's jupyter-cache (keyed on companion/ and the pins, see tools/nbcache.py); the build then
# reads them from there (execute_notebooks: cache) instead of running the chapters again. It
# re-reads every page (--all) and fails on any warning; a chapter missing from the cache is
# executed by the build itself, and a cell error there fails it too. Then the PDF (below).
book: nbval
	$(BIN)/python tools/nbcache.py check $(NBCACHE)
	$(BIN)/jupyter-book build . --all --warningiserror --keep-going
	$(build_pdf)

# The whole book as one PDF, linked from every page of the site: the single-page build, which
# reuses the pages the site build has just read (nothing is read or executed again), printed
# by Chromium once MathJax has typeset it (tools/pdf.py). `make pdf` redoes it after `make book`.
define build_pdf
$(BIN)/jupyter-book build . --builder singlehtml --warningiserror --keep-going > $(BUILD)/singlehtml.log 2>&1 \
  || { cat $(BUILD)/singlehtml.log; exit 1; }
$(BIN)/python tools/pdf.py $(BUILD)/singlehtml $(PDF)
endef

pdf: $(STAMP)
	@test -f $(BUILD)/html/index.html || { echo "make pdf: run make book first"; exit 2; }
	$(build_pdf)

# A quick look at one chapter while writing it: the whole site is built into
# _build/pages/NAME, but only PAGE and the errata are executed, so glue and figure references into
# the other (unexecuted) chapters are not reported. `make book` checks everything.
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

# jupytext turns each MyST chapter into a plain .ipynb (no outputs), for nbval or to open.
notebooks: $(STAMP)
	@rm -rf $(NBDIR)
	@$(BIN)/python tools/nbcache.py convert $(NBDIR) $(CHAPTERS) > /dev/null

# nbval runs every chapter, one notebook per worker, the slowest first; check cells (asserts)
# make the values count. tools/nbval_record.py keeps the outputs of each chapter that passed
# and tools/nbcache.py files them for the book build. Each run works in its own folder, so that
# two runs at once (make nbval CHAPTERS=... while writing) do not remove each other's files.
nbval: $(STAMP)
	@mkdir -p $(BUILD)
	@run=$$(mktemp -d $(BUILD)/nbval.XXXXXX) && trap 'rm -rf '$$run EXIT && \
	notebooks=$$($(BIN)/python tools/nbcache.py convert $$run/in $(CHAPTERS)) && \
	{ NBVAL_RECORD_DIR=$$run/out $(BIN)/python -m pytest -q -p no:cacheprovider -p tools.nbval_record \
	  --nbval-lax -n $(JOBS) --dist loadfile --no-loadscope-reorder $$notebooks; status=$$?; } ; \
	$(BIN)/python tools/nbcache.py store $$run/out $(NBCACHE) && exit $$status

site-test: $(STAMP)
	$(BIN)/pytest -q -m browser tests/test_site.py tests/test_pdf.py

# The package on its own: build the wheel, install it into a virtual environment that holds
# nothing but torch and numpy (at the pinned versions, from the same package index as .venv),
# and import every module and run every doctest there (tools/wheel_smoke.py), from outside the
# source tree. The environment is kept in $(WHEELENV) while the pins stay the same; companion is
# reinstalled from the new wheel each time, and anything else found in it fails the test.
wheel-test: $(STAMP)
	@rm -rf $(BUILD)/dist
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir $(BUILD)/dist .
	@rm -rf build
	@pins="$$(grep -E '^(torch|numpy)==' requirements.txt | sort | tr '\n' ' ')"; \
	if [ "$$(cat $(WHEELENV)/.pins 2>/dev/null)" != "$$pins" ]; then \
	  rm -rf $(WHEELENV) && $(PYTHON) -m venv $(WHEELENV) && \
	  { $(WHEELENV)/bin/python -m pip install --quiet $$pins > $(BUILD)/wheel-venv.log 2>&1 \
	    || { cat $(BUILD)/wheel-venv.log; exit 1; }; } && \
	  echo "$$pins" > $(WHEELENV)/.pins; \
	fi
	$(WHEELENV)/bin/python -m pip install --quiet --no-deps --force-reinstall $(BUILD)/dist/companion-*.whl
	@$(WHEELENV)/bin/python -m pip check
	@extra="$$($(WHEELENV)/bin/python -m pip freeze --exclude-editable | grep -viE \
	  '^(companion|torch|numpy|filelock|typing.extensions|sympy|mpmath|networkx|jinja2|markupsafe|fsspec|setuptools)(==| @)')"; \
	  test -z "$$extra" || { echo "wheel-test: unexpected packages in $(WHEELENV): $$extra"; exit 1; }
	cd $(BUILD) && OMP_NUM_THREADS=1 $(abspath $(WHEELENV))/bin/python $(abspath tools/wheel_smoke.py)
	@# the wheel's metadata carries companion.__version__ (pyproject.toml reads it from there)
	@cd $(BUILD) && $(abspath $(WHEELENV))/bin/python -c "import companion, importlib.metadata as m; \
	  v = m.version('companion'); assert v == companion.__version__, (v, companion.__version__)"

test: lint typecheck unit book site-test wheel-test

bench: $(STAMP)
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(BUILD)

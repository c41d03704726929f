# The two commands of the README: `make serve` and `make test`. Both install what is missing first.
VENV ?= .venv
BIN := $(VENV)/bin
# One OpenMP thread per process: spinning threads on two shared cores made steps 8-26x slower.
export OMP_NUM_THREADS ?= 1
# Test modules run on two workers (one module stays on one worker, so each starts its server once):
# most of the suite is SGLang servers starting and answering, which two cores overlap well. Files go
# out in collection order (tests/conftest.py puts the long ones first), not xdist's default of the
# most tests first, which left one-test modules of a minute or two for the end.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install serve test test-fast train-embedded eval

install:
	@bash scripts/install.sh

serve: install
	$(BIN)/lynx-sglang serve $(ARGS)

test: install
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# Daily work: everything but the tests marked slow (servers, engines, long property searches) and the
# container tests (they build deploy/'s images and run them with podman).
test-fast: install
	$(BIN)/python -m pytest $(XDIST) -m "not slow and not containers" $(PYTEST_ARGS)

train-embedded: install
	$(BIN)/python -m lynx_sglang.embedded.train --out lynx_sglang/embedded/checkpoint $(ARGS)

eval: install
	$(BIN)/lynx-sglang eval $(ARGS)

# Two commands do all set-up on a fresh machine (Python 3.10+ with pip and venv):
#   make demo   - create .venv, install, and run the main job on the bundled default
#   make test   - create .venv, install, and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
export OMP_NUM_THREADS ?= 1
export NUMBA_THREADING_LAYER ?= threadsafe

.PHONY: install bytecode demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch 2.13.0 CPU wheel (pinned in pyproject); MPI comes from the mpich wheel on PyPI
	$(BIN)/python -m pip install --quiet -e '.[mpi,test,rl]'
	touch $(STAMP)

# the project's bytecode, which an editable install does not compile: where PYTHONDONTWRITEBYTECODE
# is set (CI, many containers) every process - each MPI rank - would otherwise compile the sources
# again (0.05-0.07 s of CPU a process start); cheap when nothing changed, so every target runs it
bytecode:
	$(BIN)/python -m compileall -q dpsgd algorithms benchmarks > /dev/null

install: $(STAMP) bytecode

# the main job on the bundled corpus: 1 parameter server + 2 DPSVI workers over MPI
demo: $(STAMP) bytecode
	$(BIN)/mpiexec -n 3 $(BIN)/dpsgd lda --corpus benchmarks/data/pydoc.npz --topics 20 --passes 3 --out runs/demo
	@echo "outputs in runs/demo: topics.txt metrics.json progress.csv model.npz config.json"

test: $(STAMP) bytecode
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=600 tests

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[mpi,test,rl,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) bytecode
	$(BIN)/python -m benchmarks.dc_asgd
	$(BIN)/python -m benchmarks.ps_throughput
	$(BIN)/python -m benchmarks.lda --mpi --reps 5
	$(BIN)/python -m benchmarks.rl

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

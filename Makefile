# Two commands do all set-up on a fresh machine:
#   make train   installs into .venv and runs the embedded default (ADC at xi=0.1 on digits)
#   make test    installs into .venv and runs the test suite
# Pass Hydra overrides with ARGS, e.g.  make train ARGS="method=none train.epochs=5"

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: train test bench proto clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/splitvit train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/merge_and_select.py
	$(BIN)/python benchmarks/split_overhead.py
	$(BIN)/python benchmarks/link_throughput.py
	$(BIN)/python benchmarks/clients_throughput.py
	$(BIN)/python benchmarks/step_phases.py

proto: $(STAMP)  # regenerate src/splitvit/link/splitvit_pb2.py after editing the .proto
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	cd src/splitvit/link/proto && ../../../../$(BIN)/python -m grpc_tools.protoc -I. --python_out=.. splitvit.proto

clean:
	rm -rf $(VENV) outputs multirun

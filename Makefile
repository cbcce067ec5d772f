# Two commands do all set-up on a fresh machine:
#   make train   installs into .venv and runs the embedded default (ADC at xi=0.1 on digits)
#   make test    installs into .venv and runs the test suite
# Pass Hydra overrides with ARGS, e.g.  make train ARGS="method=none train.epochs=5"

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: train test test-flower bench proto clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/splitvit train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --ignore=tests/flower $(ARGS)

test-flower: $(STAMP)  # the Flower extra (Python 3.11 or later) and its tests; make test runs without Flower
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,flower]'
	$(BIN)/python -m pytest -q tests/flower $(ARGS)

# name:script [args]: each output, headed by the machine and versions, in benchmarks/results/<name>.txt
BENCHES = "merge_and_select:merge_and_select.py" "merge_and_select_1thread:merge_and_select.py --batches 128 --threads 1" \
          "split_overhead:split_overhead.py" "link_throughput:link_throughput.py" \
          "clients_throughput:clients_throughput.py --method none" "clients_throughput_adc:clients_throughput.py --method adc" \
          "step_phases:step_phases.py"

bench: $(STAMP)  # every benchmark in full; run it on an otherwise idle machine
	mkdir -p benchmarks/results
	for b in $(BENCHES); do \
	  { $(BIN)/python -c "from splitvit.profiling import describe_machine; print(describe_machine())"; \
	    $(BIN)/python benchmarks/$${b#*:}; } > benchmarks/results/$${b%%:*}.txt || exit 1; \
	  cat benchmarks/results/$${b%%:*}.txt; \
	done

proto: $(STAMP)  # regenerate src/splitvit/link/splitvit_pb2.py after editing the .proto
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	cd src/splitvit/link/proto && ../../../../$(BIN)/python -m grpc_tools.protoc -I. --python_out=.. splitvit.proto
	$(BIN)/python src/splitvit/link/proto/portable.py src/splitvit/link/splitvit_pb2.py  # loads under protobuf 5.26 on

clean:
	rm -rf $(VENV) outputs multirun

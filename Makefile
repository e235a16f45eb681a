# One-command set-up: every target creates .venv and installs the project first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# `make bench-cifar [PROFILE=full|quick|smoke] [data.root=/path/to/cifar10]`:
# PROFILE picks the suite file; without it (PROFILE=auto) the paper-scale suite runs
# where CUDA is available and the quick one on a CPU-only machine. Every other
# VAR=value given on the command line whose name contains a dot is passed through
# as a config override.
PROFILE ?= auto
SUITE_full  := configs/suites/cifar10.yaml
SUITE_quick := configs/suites/cifar10-quick.yaml
SUITE_smoke := configs/suites/cifar10-smoke.yaml
OVERRIDES := $(foreach v,$(MAKEOVERRIDES),$(if $(and $(findstring =,$(v)),$(findstring .,$(firstword $(subst =, ,$(v))))),$(v)))
ARGS ?=
TEST_JOBS ?= auto

.PHONY: venv test bench-cifar bench-overhead check-cuda clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# The test-suite in TEST_JOBS pytest-xdist workers of one thread each (one per core by
# default; a test file stays on one worker, so its module fixtures run once), then the
# smoke profile of the benchmark (every method through the suite and the report, on
# synthetic data) into a scratch folder.
test: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile
	rm -rf out/smoke-suite
	WANDB_MODE=disabled $(MAKE) --no-print-directory bench-cifar PROFILE=smoke ARGS="--results-dir out/smoke-suite"

bench-cifar: $(STAMP)
	@case "$(PROFILE)" in \
	  auto) args="$(SUITE_quick) --gpu-suite $(SUITE_full)" ;; \
	  full) args=$(SUITE_full) ;; quick) args=$(SUITE_quick) ;; smoke) args=$(SUITE_smoke) ;; \
	  *) echo "error: unknown PROFILE '$(PROFILE)'; use PROFILE=full, quick or smoke (or leave it unset)" >&2; exit 2 ;; \
	esac; \
	$(BIN)/python -m bench suite $$args $(OVERRIDES) $(ARGS)

bench-overhead: $(STAMP)
	$(BIN)/python -m bench.overhead $(OVERRIDES) $(ARGS)

# On a GPU machine, before a paper-scale suite: smoke suite in the GPU's best precision,
# torch.compile, DDP over every visible GPU (SKIP under 2), exact resume of a method that
# changes the model, and a ResNet-18 run; each PASS/FAIL/SKIP with its step time.
check-cuda: $(STAMP)
	$(BIN)/python -m bench.check_cuda

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

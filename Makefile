# warmup-lab: `make install && make train`, then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: help install train test sweep tb plot-schedules clean clean-outputs claims pilots analyze bench bench-gpu

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  %-16s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)  ## create .venv and install the package with its dependencies, dev tools and launcher plugins
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev,launchers]"
	@$(PY) -c "import torch, torchvision; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| cuda', torch.cuda.is_available())"

train:  ## the default experiment (ResNet-20 on digits, SGD, warmup+cosine), offline, about 10 s on 2 cores
	$(PY) train.py $(ARGS)

test:  ## the test suite
	$(PY) -m pytest -q $(ARGS)

sweep:  ## example sweep: SGD vs AdamW, with and without warmup, 2 seeds
	$(PY) train.py -m optimizer=sgd,adamw scheduler=constantlr,warmupcosine seed=0,1 trainer.progress=false

claims:  ## every claim preset, run until decided, + its analysis; verdicts in outputs/claims/README.md (about 1 h on 2 cores; ARGS="--scale gpu", "--only NAME")
	$(PY) scripts/claims.py $(ARGS)

pilots:  ## the no-warmup pilots that placed the CPU presets (docs/claims.md), into outputs/pilots/
	PY=$(PY) bash scripts/pilots.sh

analyze:  ## judge a sweep: make analyze SWEEP=outputs/multirun/<stamp> (report.md, CSVs, plots in it)
	$(PY) scripts/analyze.py $(SWEEP) $(ARGS)

bench:  ## CPU benchmarks (docs/performance.md): harness overhead, start-up, sweep throughput, K runs per Trainer, whole process, knobs
	$(PY) scripts/bench_overhead.py --preset resnet20-digits transformer-bytes --threads 1
	$(PY) scripts/bench_startup.py
	$(PY) scripts/bench_sweep.py
	$(PY) scripts/bench_fused.py --k 8 --threads 1
	$(PY) scripts/bench_process.py --threads 1
	$(PY) scripts/bench_gpu.py --device cpu --models resnet20_digits resnet20 --threads 1 --steps 10

bench-gpu:  ## GPU benchmarks (skip without CUDA): overhead, throughput table vs floors, fused K=8
	$(PY) scripts/bench_overhead.py --device cuda --steps 200 --preset resnet20-digits transformer-bytes
	$(PY) scripts/bench_gpu.py --out outputs/bench_gpu.md
	$(PY) scripts/bench_fused.py --device cuda --preset resnet20-digits transformer-bytes --k 1 8 32 --steps 50 trainer.channels_last=true trainer.precision=bf16

tb:  ## TensorBoard over every run, with every scalar point kept
	$(VENV)/bin/tensorboard --logdir outputs --samples_per_plugin scalars=100000

plot-schedules:  ## regenerate docs/schedules.png
	$(PY) scripts/plot_schedules.py --gallery --out docs/schedules.png

clean:  ## remove caches
	rm -rf .pytest_cache .hypothesis src/*.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +

clean-outputs:  ## remove every run under outputs/
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp

.PHONY: venv test demo bench clean

venv: $(STAMP)

# Only reached when the interpreter is gone, so nothing left in .venv is usable.
$(VPY):
	$(PYTHON) -m venv --clear $(VENV)

# Re-run when the pins change, or when pyproject.toml changes (entry points and
# package metadata of the editable install come from it).
# All pins, torch included, go into one pip call so the resolver cannot pick another
# torch build. --no-deps: the pins are the dev environment; pyproject ranges serve
# other installs. papermill runs notebooks on the kernel named python3, so that name
# must resolve to this venv.
$(STAMP): $(VPY) requirements-dev.txt pyproject.toml
	$(VENV)/bin/pip install -r requirements-dev.txt
	$(VENV)/bin/pip install --no-deps -e .
	$(VPY) -m ipykernel install --sys-prefix --name python3
	touch $@

# Two pytest-xdist workers, one test module at a time each (module-scoped rank pools start
# once): most tests wait on ranks, kernels or Slurm part of the time, so two share the two
# cores of a small machine well. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: venv
	$(VPY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile

demo: venv
	$(VPY) -m axolab.demo

# Speed, side by side: axolab vs plain HF, vs DTensor tensor parallelism, vs AxoNN 0.2.0,
# overlap and tuning on vs off. Tables on stdout, JSON in results/bench/.
bench: venv
	$(VPY) benchmarks/training_speed.py --out results/bench/training_speed.json
	$(VPY) benchmarks/axonn_compare.py --out results/bench/axonn_compare.json
	$(VPY) benchmarks/single_rank_overhead.py --out results/bench/single_rank_overhead.json
	$(VPY) benchmarks/collective_speed.py --out results/bench/collective_speed.json
	$(VPY) benchmarks/fsdp2_compare.py --out results/bench/fsdp2_compare.json
	-$(VPY) benchmarks/published_runs.py --json results/bench/published_runs.json

# Leaves .venv and results/ alone: one is slow to rebuild, the other is the work.
clean:
	rm -rf build dist .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# DeepRebirth: the two contract targets are `make install` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: install venv package caffe proto models lint test test-fast clean rebirth-time ncnn-host device-check device-ncnn \
        results reproduce

install: venv package caffe proto rebirth-time ncnn-host

venv: $(PY)
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

package: venv
	$(PIP) install -q -e '.[test,caffe,runtimes]'

caffe: package
	JOBS=$${JOBS:-$$(nproc)} scripts/install_caffe.sh $(PY)

proto: package
	$(PY) -c 'from deeprebirth.caffe import proto; proto.compile_descriptor(); print("compiled", proto.DESCRIPTOR_FILE)'

# The timing program (device/) built against the engine's Caffe, for `bench --device host` and
# the tests (about 20 s; rebuilt only when device/ changes).
rebirth-time: caffe
	JOBS=$${JOBS:-$$(nproc)} scripts/build_rebirth_time.sh $(PY)

# rebirth-time-ncnn for this machine (ncnn static from its PyPI sdist: about 6 min on 2 cores, then
# cached outside the work tree), which the slow tests of tests/runtime/test_ncnn_device.py run.
ncnn-host: package
	JOBS=$${JOBS:-$$(nproc)} scripts/build_device.sh --host --engine ncnn

# Cross-build rebirth-time from source for aarch64 and run it under qemu-user on a slimmed
# GoogLeNet: too slow for every CI run (see docs/device.md).
DEVICE_CHECK_DIR ?= build/device-check
device-check: package
	command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq g++-aarch64-linux-gnu qemu-user; }
	JOBS=$${JOBS:-$$(nproc)} scripts/build_device.sh --cross aarch64-linux-gnu
	rm -rf $(DEVICE_CHECK_DIR)/slim
	$(PY) -c 'from deeprebirth.cli import main; main()' slim googlenet -o $(DEVICE_CHECK_DIR)/slim
	$(PY) -c 'from deeprebirth.cli import main; main()' bench googlenet $(DEVICE_CHECK_DIR)/slim/deploy.prototxt \
	  --device qemu-aarch64 --layers --runs $${RUNS:-1} --warmup 0

# The same for ncnn: cross-build rebirth-time-ncnn (ncnn from its PyPI sdist, static; about 8 min on
# 2 busy cores, JOBS=1) and time a slimmed GoogLeNet with it under qemu-user (docs/device.md).
DEVICE_NCNN_DIR ?= build/device-ncnn
device-ncnn: package
	command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq g++-aarch64-linux-gnu qemu-user; }
	JOBS=$${JOBS:-$$(nproc)} scripts/build_device.sh --cross aarch64-linux-gnu --engine ncnn
	rm -rf $(DEVICE_NCNN_DIR)/slim
	$(PY) -c 'from deeprebirth.cli import main; main()' slim googlenet -o $(DEVICE_NCNN_DIR)/slim
	$(PY) -c 'from deeprebirth.cli import main; main()' bench googlenet $(DEVICE_NCNN_DIR)/slim \
	  --device qemu-aarch64 --engine ncnn --runs $${RUNS:-3} --warmup 1

models: package
	$(PY) scripts/gen_models.py models

# docs/results/ regenerated cheaply: Table 3's shipped nets measured (scripts/reproduce/table3.py
# --eval-only: `rebirth eval` of 10,000 test images each, `rebirth bench`) and the speed tables
# (scripts/reproduce/speed.py: Tables 2 and 4-6 per engine at RUNS timed runs). About 3 min on 2
# shared cores (table3 about 1 min, speed about 2); the nets speed.py times are made in out/speed.
results:
	OPENBLAS_NUM_THREADS=1 $(PY) scripts/reproduce/table3.py --eval-only
	OPENBLAS_NUM_THREADS=1 $(PY) scripts/reproduce/speed.py --runs $${RUNS:-20}

# The whole reproduction, hours (about 9 h on 2 cores): the teachers trained again (`caffe train`;
# --no-install: models/ keeps the shipped teachers, which the chains start from), Table 3's chains
# (rows 9R, 9RL, 9RL+, BN), the Slim-Tucker chain of row T6 from that Slim net, Table 3 again with
# row T6, and the speed tables at 50 runs. Resumable: rerun it and each finished step is skipped.
REPRODUCE_DIR ?= out/reproduce
reproduce:
	OPENBLAS_NUM_THREADS=1 $(PY) scripts/reproduce/teachers.py --work $(REPRODUCE_DIR)/teachers --no-install
	OPENBLAS_NUM_THREADS=1 $(PY) scripts/reproduce/table3.py --work $(REPRODUCE_DIR)/table3
	OPENBLAS_NUM_THREADS=1 $(PY) scripts/reproduce/slim_tucker.py $(REPRODUCE_DIR)/table3/slim_tucker \
	  --slim $(REPRODUCE_DIR)/table3/slim --time 0.5 --iters 30000 --longer 45000 --row T6
	OPENBLAS_NUM_THREADS=1 $(PY) scripts/reproduce/table3.py --work $(REPRODUCE_DIR)/table3
	OPENBLAS_NUM_THREADS=1 $(PY) scripts/reproduce/speed.py --work $(REPRODUCE_DIR)/speed --runs 50

# The linter (ruff; its settings are in pyproject.toml). `make test` runs it first.
lint:
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q tests

# Everything but the tests marked slow (the fuzz run, the Table 3 pipeline, ...): under a minute.
test-fast:
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) build dist *.egg-info deeprebirth/caffe/proto/caffe.desc

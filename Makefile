# pgapi: HTTP JSON API server for PostgreSQL (master/worker, libevent, libpq, hiredis).
# `make` builds build/pgapi; `make asan` builds build/asan/pgapi; `make run` / `make test` do everything.

NAME      := pgapi
VERSION   := 0.1.0
# Install locations: `make install PREFIX=/usr DESTDIR=/tmp/root` for a package; each one can be set
# on its own (SYSCONFDIR=/usr/local/etc, UNITDIR=/etc/systemd/system, ...). The unit file gets the
# paths without DESTDIR, i.e. where the files end up on the target system.
PREFIX    ?= /usr/local
DESTDIR   ?=
BINDIR    ?= $(PREFIX)/bin
SHAREDIR  ?= $(PREFIX)/share/$(NAME)
MANDIR    ?= $(PREFIX)/share/man
DOCDIR    ?= $(PREFIX)/share/doc/$(NAME)
SYSCONFDIR ?= /etc
UNITDIR   ?= /lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
DOCS      := README.md $(wildcard docs/*.md docs/*.yaml) conf/prometheus-rules.yml conf/grafana-dashboard.json

CC        ?= cc
PKGS      := libevent libpq hiredis json-c inih libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser
WARN      := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2
CFLAGS    ?= -O2 -g
# CPPFLAGS and LDFLAGS from the environment too: a package build passes dpkg-buildflags' hardening there.
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -DPGAPI_VERSION='"$(VERSION)"' $(WARN) $(CPPFLAGS) $(CFLAGS) \
              -I. $(PKG_CFLAGS) -fno-strict-aliasing -MMD -MP
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

SRCS      := $(wildcard common/*.c master/*.c worker/*.c worker/*/*.c worker/*/*/*.c tools/*.c)
OBJS      := $(SRCS:%.c=build/obj/%.o)
SAN_OBJS  := $(SRCS:%.c=build/asan/obj/%.o)
LIB_SRCS  := $(filter-out master/main.c,$(SRCS))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=build/asan/tests/%)

# Fuzzing (tests/fuzz): libFuzzer needs clang; its objects are built apart from the gcc ones. The
# target links the request path (HTTP, router, handlers, body and query checks) with a fake database.
FUZZ_CC   ?= clang-14
FUZZ_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1 -g
FUZZ_SRCS := common/clock.c common/config.c common/consistency.c common/jwt.c common/log.c common/shm.c \
             common/utf8.c \
             $(wildcard worker/http/*.c worker/api/*.c worker/api/*/*.c) worker/cache/local_cache.c \
             worker/db/dbreply.c worker/db/id_list.c worker/db/lsn_text.c tests/fuzz/fake_db.c \
             tests/fuzz/fuzz_request.c
FUZZ_OBJS := $(FUZZ_SRCS:%.c=build/fuzz/obj/%.o)
FUZZ_SECONDS ?= 60

.PHONY: all asan deps build unit fuzz fuzz-run format run test test-unit test-integration topology-up \
        topology-down install uninstall dist deb clean bench bench-growth check-config

all: build/$(NAME)
build: all

build/$(NAME): $(OBJS)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

build/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

asan: build/asan/$(NAME)

build/asan/$(NAME): $(SAN_OBJS)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -o $@ $^ $(PKG_LIBS) -lm

build/asan/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -O1 -c -o $@ $<

# Unit tests: cmocka, each links every sanitizer object but master/main.o (the module it tests among them).
unit: $(UNIT_BINS)

build/asan/tests/%: tests/unit/%.c $(filter-out build/asan/obj/master/main.o,$(SAN_OBJS))
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -O1 -o $@ $^ $(PKG_LIBS) -lcmocka -lm

# make fuzz builds the target; make fuzz-run [FUZZ_SECONDS=60] replays the corpus, then fuzzes that long.
fuzz: build/fuzz/fuzz_request

build/fuzz/fuzz_request: $(FUZZ_OBJS)
	$(FUZZ_CC) $(ALL_CFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $^ $(PKG_LIBS) -lm

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(ALL_CFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

fuzz-run: fuzz
	FUZZ_SECONDS=$(FUZZ_SECONDS) tests/run.sh fuzz

deps:
	@scripts/deps.sh

# Lays out every C file as .clang-format says (tests/run.sh style checks it).
format:
	clang-format -i $$(git ls-files '*.c' '*.h')

STATE ?= $(CURDIR)/var

# make run: everything from a fresh machine to a server on 127.0.0.1:3000 in the foreground.
run: deps
	@$(MAKE) --no-print-directory all
	scripts/topology.sh up $(STATE)
	. $(STATE)/topology.env && build/$(NAME) migrate up && build/$(NAME) seed
	. $(STATE)/topology.env && exec build/$(NAME)

topology-up: deps
	scripts/topology.sh up $(STATE)

topology-down:
	scripts/topology.sh down $(STATE)

# make test: deps, both builds, a fresh throw-away topology per test session, every test.
test: deps
	@$(MAKE) --no-print-directory all asan unit fuzz
	FUZZ_SECONDS=$(FUZZ_SECONDS) tests/run.sh

test-unit: unit
	tests/run.sh unit

test-integration: all asan
	tests/run.sh integration

bench: deps all
	bench/run.sh

# the growth curves alone (data size, connections, workers, memory per idle connection): opt-in, as long
# again as `make bench`; they replace just their section of bench/RESULTS.md
bench-growth: deps all
	BENCH_GROWTH=only bench/run.sh

# install: the binary, migrations, example ini (mode 640, group pgapi: it may get secrets added), the man
# page, README and docs, the unit, the sysusers.d file that creates the `pgapi` user and group the unit runs
# as and the tmpfiles.d file that gives the ini that group. The group is set here only on a real install
# (no DESTDIR) where it exists: a DESTDIR is another system, whose group ids this one cannot know.
# After a real install: systemd-sysusers; systemd-tmpfiles --create pgapi.conf; systemctl daemon-reload
# (see pgapi(8), EXAMPLES).
SUBST := sed 's|@BINDIR@|$(BINDIR)|g; s|@SYSCONFDIR@|$(SYSCONFDIR)|g; s|@SHAREDIR@|$(SHAREDIR)|g; s|@DOCDIR@|$(DOCDIR)|g'
install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SHAREDIR)/migrations $(DESTDIR)$(SYSCONFDIR)/$(NAME) \
	           $(DESTDIR)$(UNITDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSUSERSDIR) \
	           $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(SYSCONFDIR)/logrotate.d
	install -m 755 build/$(NAME) $(DESTDIR)$(BINDIR)/$(NAME)
	install -m 644 migrations/*.sql $(DESTDIR)$(SHAREDIR)/migrations/
	install -m 640 conf/$(NAME).ini $(DESTDIR)$(SYSCONFDIR)/$(NAME)/$(NAME).ini.example
	@if [ -z "$(DESTDIR)" ] && getent group $(NAME) >/dev/null; then \
	    chgrp $(NAME) $(SYSCONFDIR)/$(NAME)/$(NAME).ini.example; \
	else \
	    echo "install: $(SYSCONFDIR)/$(NAME)/$(NAME).ini.example gets the group $(NAME) from" \
	         "systemd-tmpfiles --create $(NAME).conf, after systemd-sysusers" >&2; \
	fi
	gzip -9n < docs/$(NAME).8 > $(DESTDIR)$(MANDIR)/man8/$(NAME).8.gz
	chmod 644 $(DESTDIR)$(MANDIR)/man8/$(NAME).8.gz
	install -m 644 $(DOCS) $(DESTDIR)$(DOCDIR)/
	install -m 644 conf/$(NAME).logrotate $(DESTDIR)$(SYSCONFDIR)/logrotate.d/$(NAME)
	install -m 644 systemd/$(NAME).sysusers $(DESTDIR)$(SYSUSERSDIR)/$(NAME).conf
	$(SUBST) systemd/$(NAME).tmpfiles.in > $(DESTDIR)$(TMPFILESDIR)/$(NAME).conf
	chmod 644 $(DESTDIR)$(TMPFILESDIR)/$(NAME).conf
	$(SUBST) systemd/$(NAME).service.in > $(DESTDIR)$(UNITDIR)/$(NAME).service
	chmod 644 $(DESTDIR)$(UNITDIR)/$(NAME).service
	install -m 644 systemd/$(NAME).socket $(DESTDIR)$(UNITDIR)/$(NAME).socket

# uninstall: what install put there, with the same variables; the configuration a user wrote
# ($(SYSCONFDIR)/pgapi/pgapi.ini, pgpass) and the `pgapi` user are left alone.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/$(NAME) $(DESTDIR)$(UNITDIR)/$(NAME).service $(DESTDIR)$(UNITDIR)/$(NAME).socket \
	      $(DESTDIR)$(SYSUSERSDIR)/$(NAME).conf $(DESTDIR)$(TMPFILESDIR)/$(NAME).conf \
	      $(DESTDIR)$(MANDIR)/man8/$(NAME).8.gz \
	      $(DESTDIR)$(SYSCONFDIR)/$(NAME)/$(NAME).ini.example $(DESTDIR)$(SYSCONFDIR)/logrotate.d/$(NAME)
	rm -f $(addprefix $(DESTDIR)$(SHAREDIR)/migrations/,$(notdir $(wildcard migrations/*.sql))) \
	      $(addprefix $(DESTDIR)$(DOCDIR)/,$(notdir $(DOCS)))
	rmdir $(DESTDIR)$(SHAREDIR)/migrations $(DESTDIR)$(SHAREDIR) $(DESTDIR)$(DOCDIR) \
	      $(DESTDIR)$(SYSCONFDIR)/$(NAME) 2>/dev/null || true

# dist: build/pgapi-VERSION.tar.gz, the source tree of a commit (DIST_REF, default HEAD), made by
# `git archive`. A commit rather than the working tree: the tarball is then exactly a version that
# history can name and rebuild (same files, same mtimes), never holds uncommitted edits or stray
# untracked files, and var/ and build/ (ignored, untracked) cannot get in. So commit first: a dirty
# tree (edits, or new files not yet added) only gets a warning.
DIST_REF  ?= HEAD

dist:
	@mkdir -p build
	@test -z "$$(git status --porcelain 2>/dev/null)" || \
	    echo "dist: warning: uncommitted changes are not in the tarball (it is $(DIST_REF))" >&2
	git archive --format=tar.gz --prefix=$(NAME)-$(VERSION)/ -o build/$(NAME)-$(VERSION).tar.gz $(DIST_REF)
	@echo build/$(NAME)-$(VERSION).tar.gz

# deb: build/deb/pgapi_VERSION_ARCH.deb by dpkg-buildpackage (debian/), from a copy of the working tree
# (tracked and new files, not ignored ones: build/ and var/ stay out), then lintian, which must report
# no error and no warning (debian/pgapi.lintian-overrides holds the few overrides, each with its reason).
DEB_DIR := build/deb
deb:
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/$(NAME)-$(VERSION)
	git ls-files -co --exclude-standard | while read -r f; do [ -e "$$f" ] || [ -L "$$f" ] && echo "$$f"; done | \
	    tar -cf - -T - | tar -xf - -C $(DEB_DIR)/$(NAME)-$(VERSION)
	cd $(DEB_DIR)/$(NAME)-$(VERSION) && dpkg-buildpackage -us -uc -b -J
	lintian --fail-on error,warning --info $(DEB_DIR)/$(NAME)_$(VERSION)_*.deb
	@ls $(DEB_DIR)/$(NAME)_$(VERSION)_*.deb

clean:
	rm -rf build

# handlers_openapi.c embeds docs/openapi.yaml (.incbin), which the compiler's dependency files do not name
build/obj/worker/api/handlers_openapi.o build/asan/obj/worker/api/handlers_openapi.o \
build/fuzz/obj/worker/api/handlers_openapi.o: docs/openapi.yaml

-include $(OBJS:.o=.d) $(SAN_OBJS:.o=.d) $(FUZZ_OBJS:.o=.d)

# relaynet: build, test and run on Debian 12.
#
#   make run    installs what is missing, builds, runs the chat example
#   make test   installs what is missing, builds, runs luacheck + busted
#
# `make deps` installs the Debian packages below with apt-get when any is
# missing and does nothing when all are present.

LUA        ?= lua5.4
PREFIX     ?= /usr/local
LUA_INC    ?= $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
CC         ?= cc
CFLAGS     ?= -O2 -g
WARN       := -Wall -Wextra -Wshadow -Wno-unused-parameter
RN_CFLAGS  := $(CFLAGS) $(WARN) -fPIC -std=c99 -D_GNU_SOURCE $(LUA_INC)
LIBS       := -lwebsockets -luv -lssl -lcrypto -lm
PORT       ?= 8080

SRC        := $(wildcard csrc/*.c)
OBJ        := $(patsubst csrc/%.c,build/obj/%.o,$(SRC))
CORE       := build/relaynet/core.so

DEB_PKGS   := lua5.4 liblua5.4-dev libwebsockets-dev libwebsockets-evlib-uv \
              libuv1-dev libssl-dev luarocks pkg-config gcc make
TEST_PKGS  := lua-busted lua-check lua-luv python3 python3-websockets curl chromium valgrind

# spec/support/ is on the path so that a spec can require("helper") and
# require("mesh_harness").
export LUA_PATH_5_4  := $(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/support/?.lua;/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua;;
export LUA_CPATH_5_4 := $(CURDIR)/build/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;;

.PHONY: all deps test-deps build test check lint busted run echo clean install uninstall dist valgrind e2e-deps

all: build

# Installs the missing Debian packages among $(1); a no-op when all are there.
define apt_ensure
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	$(2) \
	if [ -n "$$missing" ]; then \
	  echo "relaynet: installing$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
endef

# The stamps depend on the Makefile, so that a package added to a list here
# is installed on a machine that ran `make deps` before.
deps: build/.deps-ok
build/.deps-ok: Makefile
	$(call apt_ensure,$(DEB_PKGS),)
	@mkdir -p build && touch $@

test-deps: build/.test-deps-ok
build/.test-deps-ok: Makefile | deps
	$(call apt_ensure,$(TEST_PKGS),command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm";)
	@mkdir -p build && touch $@

build: deps $(CORE)

build/obj/%.o: csrc/%.c csrc/rn.h | deps
	@mkdir -p build/obj
	$(CC) $(RN_CFLAGS) -c $< -o $@

$(CORE): $(OBJ)
	@mkdir -p build/relaynet
	$(CC) -shared -o $@ $(OBJ) $(LIBS)

lint: test-deps
	luacheck -q lua bin/relaynet spec examples

SPEC ?= spec

busted: build test-deps e2e-deps
	busted --lua=$(LUA) $(SPEC)

# npm packages for the external-client and browser specs, into spec/e2e.
e2e-deps: spec/e2e/node_modules/.ok
spec/e2e/node_modules/.ok: spec/e2e/package.json | test-deps
	cd spec/e2e && npm install --no-audit --no-fund --loglevel=error
	touch $@

# The test command: C warnings are errors here, then luacheck, then busted.
test: deps test-deps
	$(MAKE) --no-print-directory -B CFLAGS="$(CFLAGS) -Werror" build
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory busted

check: test

run: build
	$(LUA) examples/chat.lua $(PORT)

echo: build
	$(LUA) examples/echo.lua $(PORT)

valgrind: build test-deps
	valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=99 \
	  --show-leak-kinds=definite,indirect --suppressions=spec/support/valgrind.supp $(LUA) spec/support/traffic.lua

# ---- installing and packaging (README, Installing) -----------------------------
# `make install PREFIX=P` puts the modules in P/share/lua/5.4, relaynet.core
# in P/lib/lua/5.4, the examples in P/share/relaynet/examples and the command
# in P/bin. The installed command has P written into it (INSTALL_PREFIX in
# bin/relaynet), so it finds its modules without LUA_PATH from any
# directory. DESTDIR stages the files elsewhere without changing P.
#
# `make dist` packs the files committed at HEAD (git archive; uncommitted
# changes are left out) into build/dist/relaynet-$(VERSION).tar.gz, the
# release tarball the rockspec's source.url names, and builds the source rock
# build/dist/$(ROCKSPEC:.rockspec=.src.rock): a zip of the rockspec and that
# tarball, which `luarocks install` builds without fetching anything. It
# first checks that the rockspec lists every module and C source of HEAD
# (spec/support/check_rockspec.lua).
VERSION    := 0.1.0
ROCKSPEC   := relaynet-$(VERSION)-1.rockspec
DIST       := build/dist
IPREFIX     = $(abspath $(PREFIX))

install: build
	@case '$(IPREFIX)' in *[\\\"\|\&]*) echo "relaynet: PREFIX must not hold \\ \" | or &" >&2; exit 2;; esac
	install -d $(DESTDIR)$(IPREFIX)/lib/lua/5.4/relaynet $(DESTDIR)$(IPREFIX)/bin
	install -d $(DESTDIR)$(IPREFIX)/share/lua/5.4/relaynet/mesh $(DESTDIR)$(IPREFIX)/share/relaynet
	install -m 755 $(CORE) $(DESTDIR)$(IPREFIX)/lib/lua/5.4/relaynet/core.so
	install -m 644 lua/relaynet/*.lua $(DESTDIR)$(IPREFIX)/share/lua/5.4/relaynet/
	install -m 644 lua/relaynet/mesh/*.lua $(DESTDIR)$(IPREFIX)/share/lua/5.4/relaynet/mesh/
	rm -rf $(DESTDIR)$(IPREFIX)/share/relaynet/examples
	cp -R examples $(DESTDIR)$(IPREFIX)/share/relaynet/examples
	sed 's|^\(  local INSTALL_PREFIX = \)nil\( --.*\)$$|\1"$(IPREFIX)"\2|' bin/relaynet > build/relaynet.installed
	@grep -q '^  local INSTALL_PREFIX = "' build/relaynet.installed || \
	  { echo "relaynet: bin/relaynet lacks its INSTALL_PREFIX line" >&2; exit 1; }
	install -m 755 build/relaynet.installed $(DESTDIR)$(IPREFIX)/bin/relaynet

uninstall:
	rm -rf $(DESTDIR)$(IPREFIX)/share/lua/5.4/relaynet $(DESTDIR)$(IPREFIX)/lib/lua/5.4/relaynet \
	  $(DESTDIR)$(IPREFIX)/share/relaynet $(DESTDIR)$(IPREFIX)/bin/relaynet

dist: deps
	$(LUA) spec/support/check_rockspec.lua $(ROCKSPEC) --committed
	@git diff --quiet HEAD -- lua csrc bin examples $(ROCKSPEC) || \
	  echo "relaynet: uncommitted changes under lua, csrc, bin or examples are not in the dist"
	rm -rf $(DIST) && mkdir -p $(DIST)/rock
	git archive --format=tar.gz --prefix=relaynet-$(VERSION)/ -o $(DIST)/relaynet-$(VERSION).tar.gz HEAD
	cp $(DIST)/relaynet-$(VERSION).tar.gz $(DIST)/rock/
	git show HEAD:$(ROCKSPEC) > $(DIST)/rock/$(ROCKSPEC)
	cd $(DIST)/rock && zip -q -X ../$(ROCKSPEC:.rockspec=.src.rock) $(ROCKSPEC) relaynet-$(VERSION).tar.gz
	rm -rf $(DIST)/rock
	@echo "relaynet: built $(DIST)/$(ROCKSPEC:.rockspec=.src.rock) and $(DIST)/relaynet-$(VERSION).tar.gz"

clean:
	rm -rf build/obj build/relaynet build/dist build/relaynet.installed

# ---- benchmarks (bench/, docs/BENCHMARKS.md) -----------------------------------
# Never part of `make test`. `make bench` installs the peers it compares
# against (bench/setup.sh) and prints the table (~15 min); bench-quick is a
# short smoke run of every scenario; bench-callgrind counts instructions per
# echoed message (relaynet vs the libwebsockets C floor).
.PHONY: bench bench-quick bench-callgrind
bench: build
	bench/setup.sh && bench/run.sh

bench-quick: build
	bench/setup.sh && bench/run.sh --quick

bench-callgrind: build
	bench/setup.sh && bench/callgrind.sh --symbols

# ---- fuzzing and sanitizers (fuzz/, docs/FUZZING.md) ---------------------------
# `make fuzz` builds the libFuzzer + ASan + UBSan harnesses of fuzz/ with clang
# and runs each for FUZZ_SECONDS; `make fuzz-replay` runs them once over the
# inputs that ever crashed (fuzz/regressions/, also replayed by `make test`
# through spec/fuzz_regressions_spec.lua). `make test-asan` runs busted with
# the core built with -fsanitize=address,undefined and the ASan runtime
# preloaded into every Lua process (see ASAN_SKIP for the specs that cannot).
.PHONY: fuzz fuzz-build fuzz-replay fuzz-deps test-asan
FUZZ_SECONDS   ?= 150
FUZZ_HARNESSES ?= json_decode json_roundtrip mesh_scan ws_receive http_request
FUZZ_PKGS      := clang libclang-rt-14-dev dpkg-dev liblua5.4-dev

fuzz-deps: build/.fuzz-deps-ok
build/.fuzz-deps-ok: | deps
	$(call apt_ensure,$(FUZZ_PKGS),)
	@mkdir -p build && touch $@

fuzz-build: fuzz-deps
	fuzz/build.sh

fuzz: fuzz-build
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh fuzz $(FUZZ_HARNESSES)

fuzz-replay: fuzz-build
	fuzz/run.sh replay $(FUZZ_HARNESSES)

ASAN_CC    ?= gcc
ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
ASAN_DIR   := build/asan
ASAN_SRC   ?= $(SRC)
# valgrind_spec: valgrind cannot run a process that carries the ASan runtime
# (both replace malloc; ASan's shadow memory mapping fails under valgrind).
# The mesh attack specs assert RSS bounds (baseline + 64 MiB, back near
# baseline after) on floods of many small allocations: under ASan RSS
# measures ASan's allocator instead (redzones, a quarantine of freed blocks,
# free lists it does not return to the system; docs/FUZZING.md has numbers).
# `make test-asan ASAN_SKIP=spec/valgrind_spec.lua` runs them anyway, for
# sanitizer reports; RELAYNET_SANITIZED=1 is set for specs that want to skip
# their RSS assertions under the sanitizers.
ASAN_RSS_SPECS := spec/attack_mesh_calls_spec.lua spec/attack_mesh_routes_spec.lua
ASAN_SKIP  ?= spec/valgrind_spec.lua $(ASAN_RSS_SPECS)
ASAN_SPECS ?= $(filter-out $(ASAN_SKIP),$(wildcard spec/*_spec.lua))
# Programs the specs start that are not Lua run without the preloaded runtime
# (a wrapper in $(ASAN_DIR)/bin drops LD_PRELOAD): they are not what is being
# checked, and curl, pgrep, pkill and ps hang with libasan preloaded (seen
# blocked in a futex wait, never returning). Programs started by an absolute
# path (H.PY is /usr/bin/python3) keep the runtime; python3 and node work.
ASAN_NOPRELOAD := curl pgrep pkill ps python3 node npm npx chromium valgrind

# Leak checking is off (detect_leaks=0): spec and example processes exit
# without closing their Lua state and lws/libuv keep process-lifetime
# allocations; leaks are `make valgrind`'s job (with spec/support/valgrind.supp).
test-asan: deps test-deps e2e-deps
	@mkdir -p $(ASAN_DIR)/relaynet $(ASAN_DIR)/bin
	$(ASAN_CC) $(ASAN_FLAGS) -O1 -g $(WARN) -Werror -fPIC -std=c99 -D_GNU_SOURCE $(LUA_INC) \
	  -shared -o $(ASAN_DIR)/relaynet/core.so $(ASAN_SRC) $(LIBS)
	@for p in $(ASAN_NOPRELOAD); do \
	  real=$$(command -v $$p) || continue; \
	  printf '#!/bin/sh\nexec env -u LD_PRELOAD %s "$$@"\n' "$$real" > $(ASAN_DIR)/bin/$$p; \
	  chmod +x $(ASAN_DIR)/bin/$$p; \
	done
	RELAYNET_ASAN_PRELOAD="$$($(ASAN_CC) -print-file-name=libasan.so)" \
	LD_PRELOAD="$$($(ASAN_CC) -print-file-name=libasan.so)" RELAYNET_SANITIZED=1 \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:print_summary=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	LUA_CPATH_5_4="$(CURDIR)/$(ASAN_DIR)/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;;" \
	PATH="$(CURDIR)/$(ASAN_DIR)/bin:$$PATH" \
	  busted --lua=$(LUA) $(ASAN_SPECS)

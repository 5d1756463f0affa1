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
LIBS       := -lwebsockets -luv -lm
PORT       ?= 8080

SRC        := $(wildcard csrc/*.c)
OBJ        := $(patsubst csrc/%.c,build/obj/%.o,$(SRC))
CORE       := build/relaynet/core.so

DEB_PKGS   := lua5.4 liblua5.4-dev lua-cjson libwebsockets-dev libwebsockets-evlib-uv \
              libuv1-dev luarocks pkg-config gcc make
TEST_PKGS  := lua-busted lua-check python3 python3-websockets curl chromium valgrind

export LUA_PATH_5_4  := $(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/spec/?.lua;/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua;;
export LUA_CPATH_5_4 := $(CURDIR)/build/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;;

.PHONY: all deps test-deps build test check lint busted run echo clean install valgrind e2e-deps

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

deps: build/.deps-ok
build/.deps-ok:
	$(call apt_ensure,$(DEB_PKGS),)
	@mkdir -p build && touch $@

test-deps: build/.test-deps-ok
build/.test-deps-ok: | deps
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
	luacheck -q lua bin spec examples

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
	  --show-leak-kinds=definite,indirect --suppressions=spec/valgrind.supp $(LUA) spec/tools/traffic.lua

install: build
	install -d $(DESTDIR)$(PREFIX)/lib/lua/5.4/relaynet $(DESTDIR)$(PREFIX)/share/lua/5.4/relaynet $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(CORE) $(DESTDIR)$(PREFIX)/lib/lua/5.4/relaynet/core.so
	install -m 644 lua/relaynet/*.lua $(DESTDIR)$(PREFIX)/share/lua/5.4/relaynet/
	install -m 755 bin/relaynet $(DESTDIR)$(PREFIX)/bin/relaynet

clean:
	rm -rf build/obj build/relaynet

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

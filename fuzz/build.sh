#!/bin/sh
# Builds the libFuzzer harnesses of fuzz/*.c into build/fuzz/ (see
# docs/FUZZING.md). Run from the repository root: `make fuzz-build`.
#
# Every harness is built with clang -fsanitize=fuzzer,address,undefined.
# Lua itself is compiled from the Debian lua5.4 source package (5.4.4 with
# Debian's patches, the same Lua the runtime links against) with
# -fsanitize=address,undefined, because several decoder bugs (issue 8) are
# writes made by Lua's own code (lua_settop, the stack reallocation) into
# memory the C core got wrong: an uninstrumented liblua hides them.  When the
# source cannot be fetched the harnesses fall back to the system liblua5.4,
# with a warning.
set -eu

CC=${FUZZ_CC:-clang}
OUT=build/fuzz
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-g -O1 $SAN -D_GNU_SOURCE"
LUA_INC=$(pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
mkdir -p "$OUT"

# --- Lua 5.4.4 from the Debian source package, sanitized -------------------
LUASRC=$OUT/lua-src
if [ ! -f "$OUT/liblua-san.a" ]; then
  if [ ! -f "$LUASRC/src/lapi.c" ]; then
    # A private deb-src list, so the system's apt configuration is untouched.
    ver=$(dpkg-query -W -f='${Version}' liblua5.4-dev 2>/dev/null || true)
    tmp=$OUT/apt; rm -rf "$tmp"; mkdir -p "$tmp/lists/partial" "$tmp/dl"
    printf '%s\n' \
      'deb-src http://deb.debian.org/debian bookworm main' \
      'deb-src http://deb.debian.org/debian bookworm-updates main' \
      'deb-src http://deb.debian.org/debian-security bookworm-security main' > "$tmp/src.list"
    APTOPT="-o Dir::Etc::SourceList=$PWD/$tmp/src.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$PWD/$tmp/lists"
    if apt-get $APTOPT update -qq >/dev/null 2>&1 &&
       (cd "$tmp/dl" && apt-get $APTOPT source --download-only -qq "lua5.4${ver:+=$ver}" >/dev/null 2>&1) &&
       dpkg-source -x "$tmp"/dl/lua5.4_*.dsc "$LUASRC" >/dev/null 2>&1; then
      :
    else
      echo "fuzz: could not fetch the lua5.4 source package; using the system liblua5.4 (Lua itself not sanitized)" >&2
      rm -rf "$LUASRC"
    fi
  fi
  if [ -f "$LUASRC/src/lapi.c" ]; then
    mkdir -p "$OUT/lua-obj"
    for f in "$LUASRC"/src/*.c; do
      case $(basename "$f") in lua.c|luac.c) continue ;; esac
      o=$OUT/lua-obj/$(basename "$f" .c).o
      $CC $CFLAGS -std=gnu99 -DLUA_COMPAT_5_3 -DLUA_USE_LINUX -c "$f" -o "$o"
    done
    ar rcs "$OUT/liblua-san.a" "$OUT"/lua-obj/*.o
  fi
fi
if [ -f "$OUT/liblua-san.a" ]; then
  LUA_CFLAGS="-I$LUASRC/src"
  LUA_LIBS="$OUT/liblua-san.a -lm -ldl"
else
  LUA_CFLAGS=$LUA_INC
  LUA_LIBS="-llua5.4 -lm"
fi

# --- the harnesses -------------------------------------------------------------
# json_*: the whole core (csrc/*.c) opened with luaopen_relaynet_core; the
# libwebsockets and libuv libraries are linked as they are (not ours).
# ws_receive: the receive, close, send-queue and UTF-8 files of csrc/ and
# rn_buf.c, with the few lws/loop functions they call replaced by a scripted
# fake (fuzz/ws_receive.c).
# http_request: the whole core plus the Lua http router and JSON-RPC module.
CORE_DIR=${FUZZ_CSRC:-csrc} # another tree of csrc/ (e.g. a snapshot) may be fuzzed instead
CORE_SRC=$(ls "$CORE_DIR"/*.c)
FZ="-fsanitize=fuzzer $CFLAGS -Wall -Wextra -Wno-unused-parameter -std=gnu99 $LUA_CFLAGS -I$CORE_DIR"
# FUZZ_ONLY="h1 h2" builds only those harnesses.
for h in ${FUZZ_ONLY:-json_decode json_roundtrip mesh_scan ws_receive http_request}; do
  case $h in
    ws_receive) $CC $FZ "fuzz/$h.c" "$CORE_DIR/rn_buf.c" "$CORE_DIR/rn_recv.c" "$CORE_DIR/rn_close.c" \
                  "$CORE_DIR/rn_sendq.c" "$CORE_DIR/rn_utf8.c" -o "$OUT/$h" $LUA_LIBS ;;
    *) $CC $FZ -DRN_REPO="\"$PWD\"" "fuzz/$h.c" $CORE_SRC -o "$OUT/$h" $LUA_LIBS -lwebsockets -luv -lssl -lcrypto ;;
  esac
done
echo "fuzz: harnesses built in $OUT"

#!/bin/sh
# Builds bench/build/lua5.4-sym: the Debian lua5.4 interpreter (same source
# package and version as /usr/bin/lua5.4, Debian's patches applied) with
# symbols, so that callgrind can name the interpreter's functions
# (luaV_execute, luaH_get, the GC...). Debian's /usr/bin/lua5.4 is stripped
# and its -dbgsym package is not reachable from here.
#
# Fetches the source package with `apt-get source` through a private
# deb-src list (nothing under /etc/apt is changed). Used only by
# `bench/callgrind.sh --symbols`; idempotent.
set -eu
cd "$(dirname "$0")"
OUT=build/lua5.4-sym
[ -x "$OUT" ] && { echo "lua-symbols: $OUT is there"; exit 0; }
WORK=$(pwd)/build/lua-src
APT=$WORK/apt
mkdir -p "$APT/lists/partial" "$APT/sources"
. /etc/os-release
cat >"$APT/sources/deb-src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $VERSION_CODENAME
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
A="-o Dir::Etc::sourceparts=$APT/sources -o Dir::Etc::sourcelist=/dev/null -o Dir::State::Lists=$APT/lists"
# shellcheck disable=SC2086
apt-get $A update -qq
VER=$(dpkg-query -W -f='${Version}' lua5.4)
cd "$WORK"
# shellcheck disable=SC2086
apt-get $A source --download-only "lua5.4=$VER" >/dev/null 2>&1 || apt-get $A source --download-only lua5.4 >/dev/null
rm -rf src && mkdir src && cd src
tar xf ../lua5.4_*.orig.tar.gz
tar xf ../lua5.4_*.debian.tar.xz
cd lua-5.4.*
while read -r p; do
  case "$p" in ""|\#*|0001-build-system.patch) continue ;; esac # 0001: libtool build, not needed
  patch -p1 -s <"../debian/patches/$p"
done <../debian/patches/series
cd src
# Debian's flags for the interpreter, plus -g; the interpreter is statically
# linked with the library as /usr/bin/lua5.4 is, and exports its symbols for
# C modules (-Wl,-E).
set --
for f in ./*.c; do
  [ "$f" = ./luac.c ] || set -- "$@" "$f"
done
gcc -O2 -g -fstack-protector-strong -D_FORTIFY_SOURCE=2 -DLUA_COMPAT_5_3 -DLUA_USE_LINUX \
  -DDEB_HOST_MULTIARCH="\"$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)\"" \
  -Wl,-E -o "../../../../lua5.4-sym" "$@" -lm -ldl
echo "lua-symbols: built bench/$OUT"

#!/bin/sh
# Installs what the benchmarks need and builds the C tools. Idempotent: when
# everything is present it installs nothing.
#
#   Debian packages (apt-get, as root or through sudo): build tools, libuv,
#   libwebsockets, nginx + lua-nginx-module + lua-resty-websocket, lua-http
#   (+ cqueues), node/npm, valgrind (callgrind.sh), util-linux (taskset).
#   npm: `ws` into bench/node/node_modules (never globally).
#   C: bench/build/loadgen and bench/build/lws_echo (make -C bench).
#   TLS: a throw-away CA and a server certificate for localhost and
#   127.0.0.1 in bench/build/tls/ (openssl; RSA 2048, the common case),
#   for the wss scenarios. Made once; delete the folder for new ones.
set -eu
cd "$(dirname "$0")"

PKGS="gcc make pkg-config libuv1-dev libwebsockets-dev libwebsockets-evlib-uv \
lua5.4 libnginx-mod-http-lua lua-nginx-websocket lua-http lua-cqueues \
nodejs npm valgrind strace util-linux python3"

missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# node/npm may come from elsewhere than Debian: accept any working ones
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  missing=$(echo "$missing" | tr ' ' '\n' | grep -v -x -e nodejs -e npm | tr '\n' ' ')
fi
missing=$(echo "$missing" | xargs)
if [ -n "$missing" ]; then
  echo "bench: installing $missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  # (on a machine with systemd, Debian's nginx package also starts the system
  # nginx on port 80; the benchmarks run their own nginx and never use it)
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

if [ ! -f node/node_modules/ws/package.json ]; then
  echo "bench: npm install ws (into bench/node)"
  (cd node && npm install --no-audit --no-fund --loglevel=error)
fi

make --no-print-directory -s all

if [ ! -f build/tls/server.pem ]; then
  echo "bench: making a throw-away CA and a server certificate (bench/build/tls)"
  rm -rf build/tls
  mkdir -p build/tls
  (
    cd build/tls
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
      -subj "/CN=relaynet bench CA" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
      -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
      -days 3650 -extfile server.ext 2>/dev/null
  )
fi
echo "bench: ready"

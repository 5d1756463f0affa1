rockspec_format = "3.0"
package = "relaynet"
version = "0.1.0-1"
-- Releases are published on GitHub: the tarball is the one `make dist`
-- builds (build/dist/relaynet-0.1.0.tar.gz, every committed file under the
-- top directory relaynet-0.1.0/). The source rock `make dist` builds holds
-- this file and that tarball, so `luarocks install` of it never fetches.
source = {
  url = "https://github.com/relaynet/relaynet/releases/download/v0.1.0/relaynet-0.1.0.tar.gz",
  dir = "relaynet-0.1.0",
}
description = {
  summary = "Coroutine-aware HTTP, WebSocket and peer-mesh networking for Lua 5.4 on libuv and libwebsockets",
  detailed = [[
relaynet gives a Lua 5.4 script HTTP and WebSocket servers and clients on a
libuv event loop, with one coroutine per handler, bounded queues, size limits
and keepalive on by default.
]],
  license = "MIT",
  homepage = "https://github.com/relaynet/relaynet",
}
-- No Lua rocks are needed: JSON is relaynet's own (relaynet.json, in the
-- core). lua-cjson is not used, because it turns integers into floats.
-- luv is optional and not listed: rn.luv() loads it (pcall) only when a
-- script asks for it (Debian's lua-luv, or the luv rock).
-- spec/support/check_rockspec.lua (run by `make dist` and the install spec)
-- fails when a module under lua/ requires anything outside relaynet.* that
-- is not declared here.
dependencies = {
  "lua >= 5.4",
}
external_dependencies = {
  LIBWEBSOCKETS = { header = "libwebsockets.h", library = "websockets" },
  LIBUV = { header = "uv.h", library = "uv" },
  OPENSSL = { header = "openssl/ssl.h", library = "ssl" },
}
build = {
  type = "builtin",
  modules = {
    ["relaynet.core"] = {
      sources = { "csrc/rn_addr.c", "csrc/rn_buf.c", "csrc/rn_client.c", "csrc/rn_close.c",
                  "csrc/rn_conn.c", "csrc/rn_crypto.c", "csrc/rn_error.c", "csrc/rn_event.c",
                  "csrc/rn_http.c", "csrc/rn_json.c", "csrc/rn_jsondec.c", "csrc/rn_jsonscan.c", "csrc/rn_limits.c",
                  "csrc/rn_log.c", "csrc/rn_loop.c", "csrc/rn_module.c", "csrc/rn_protect.c",
                  "csrc/rn_recv.c", "csrc/rn_sendq.c", "csrc/rn_server.c", "csrc/rn_status.c",
                  "csrc/rn_tls.c", "csrc/rn_utf8.c" },
      libraries = { "websockets", "uv", "ssl", "crypto", "m" },
      incdirs = { "$(LIBWEBSOCKETS_INCDIR)", "$(LIBUV_INCDIR)", "$(OPENSSL_INCDIR)" },
      libdirs = { "$(LIBWEBSOCKETS_LIBDIR)", "$(LIBUV_LIBDIR)", "$(OPENSSL_LIBDIR)" },
      defines = { "_GNU_SOURCE" },
    },
    ["relaynet"] = "lua/relaynet/init.lua",
    ["relaynet.sched"] = "lua/relaynet/sched.lua",
    ["relaynet.http"] = "lua/relaynet/http.lua",
    ["relaynet.json"] = "lua/relaynet/json.lua",
    ["relaynet.mesh"] = "lua/relaynet/mesh/init.lua",
    ["relaynet.mesh.state"] = "lua/relaynet/mesh/state.lua",
    ["relaynet.mesh.ident"] = "lua/relaynet/mesh/ident.lua",
    ["relaynet.mesh.auth"] = "lua/relaynet/mesh/auth.lua",
    ["relaynet.mesh.wire"] = "lua/relaynet/mesh/wire.lua",
    ["relaynet.mesh.routes"] = "lua/relaynet/mesh/routes.lua",
    ["relaynet.mesh.pubsub_match"] = "lua/relaynet/mesh/pubsub_match.lua",
    ["relaynet.mesh.pubsub"] = "lua/relaynet/mesh/pubsub.lua",
    ["relaynet.mesh.history"] = "lua/relaynet/mesh/history.lua",
    ["relaynet.mesh.serve"] = "lua/relaynet/mesh/serve.lua",
    ["relaynet.mesh.calls"] = "lua/relaynet/mesh/calls.lua",
    ["relaynet.mesh.balance"] = "lua/relaynet/mesh/balance.lua",
    ["relaynet.mesh.link"] = "lua/relaynet/mesh/link.lua",
    ["relaynet.mesh.transport"] = "lua/relaynet/mesh/transport.lua",
    ["relaynet.mesh.presence"] = "lua/relaynet/mesh/presence.lua",
    ["relaynet.jsonrpc"] = "lua/relaynet/jsonrpc.lua",
    ["relaynet.runtime"] = "lua/relaynet/runtime.lua",
    ["relaynet.conn"] = "lua/relaynet/conn.lua",
    ["relaynet.server"] = "lua/relaynet/server.lua",
    ["relaynet.client"] = "lua/relaynet/client.lua",
    ["relaynet.tls"] = "lua/relaynet/tls.lua",
    ["relaynet.rpc"] = "lua/relaynet/rpc.lua",
    ["relaynet.rpc_pubsub"] = "lua/relaynet/rpc_pubsub.lua",
    ["relaynet.cli"] = "lua/relaynet/cli.lua",
    ["relaynet.uvbridge"] = "lua/relaynet/uvbridge.lua",
    ["relaynet.log"] = "lua/relaynet/log.lua",
    ["relaynet.metrics"] = "lua/relaynet/metrics.lua",
  },
  install = {
    bin = { relaynet = "bin/relaynet" },
  },
  -- Copied into the rock's directory in the tree, which
  -- `luarocks show --rock-dir relaynet` prints: the examples run there
  -- with the installed command (relaynet <rock-dir>/examples/echo.lua).
  copy_directories = { "examples", "docs" },
}
test = {
  type = "command",
  command = "make test",
}

-- relaynet.cli: the `relaynet` command (bin/relaynet is a thin wrapper).
--
--   relaynet [options] SCRIPT.lua [script arguments...]
--   relaynet keygen FILE
--
-- M.main(argv) parses argv (argv[1..n], as in `arg`), runs the script under
-- rn.run() and returns the process's exit status: 0 after a clean
-- shutdown, 1 when the script raised or the server could not start, 2 on a
-- usage error. A usage error is one line on stderr ("relaynet: ..."), never
-- a traceback: every value is checked while the command line is parsed.
--
-- Options are written --name VALUE, --name=VALUE, or with one dash
-- (-name VALUE, the relaynet design's spelling). They may come before or
-- after the script; after the script, an option the command does not know
-- is left to the script (in its `arg`), and everything after "--" is.

local M = {}

local USAGE = [[
usage: relaynet [options] SCRIPT.lua [script arguments...]
       relaynet keygen FILE

relaynet keygen FILE writes a new Ed25519 node key to FILE (mode 0600; an
existing file is never overwritten) and prints "NODE_ID PUBLIC_KEY", the
line a trust file (--trust) takes for it.

Runs SCRIPT.lua inside the relaynet runtime (a coroutine on the event loop)
as a node of the relaynet mesh. The script sees its own arguments in `arg`
(arg[0] is the script path). Options may come before or after the script,
as --name VALUE, --name=VALUE or -name VALUE; "--" ends them.

options:
  --port N             serve HTTP/WebSocket/mesh on port N: the script's
                       rn.server{...} listens there, or the command starts
                       that server itself once the script first waits
  --host ADDR          the IP address (or interface name) it listens on
                       (default: every interface)
  --server             start that server even without --port (port 8080)
  --node-id ID         this node's id (default: generated, node-xxxxxxxx)
  --add-peer ADDR      keep a mesh link to ADDR: ws://HOST:PORT/ws/p2p,
                       wss://... for a TLS peer, http://HOST:PORT or
                       HOST:PORT (the path defaults to /ws/p2p); repeatable
  --disable-registry   no mesh on this node: no /ws/p2p, no peers
  --no-mesh            the server mounts no mesh routes (/ws/p2p, /rpc,
                       /status, /peers, /routes, /registry, /metrics)
  --insecure-mesh      serve the mesh routes to every address (protected
                       mode off: without it they answer loopback peers
                       only); logs a warning
  --tls-cert FILE      serve https/wss with this PEM certificate (chain);
                       every server the script starts does, unless it
                       passes its own tls option (rn.tls_config.cert)
  --tls-key FILE       the certificate's PEM private key (needs --tls-cert)
  --tls-ca FILE        trust the CAs in this PEM file for wss:// peers and
                       rn.ws_connect (default: the system's CA store)
  --node-key FILE      this node's Ed25519 key (relaynet keygen): mesh links
                       are authenticated; without --node-id the node id is
                       derived from the key
  --trust FILE         lines "NODE_ID PUBLIC_KEY": the keys peers must prove
  --mesh-secret FILE   a cluster secret (at least 16 bytes) that proves
                       membership only (see README, Securing the mesh)
  --rpc-token FILE     JSON-RPC (/rpc) and the mesh views need the header
                       "Authorization: Bearer <token>" with this file's
                       token (16 to 256 bytes), from every address
  --log-level LEVEL    error, warn, info (the default) or debug
  --no-access-log      no access line per HTTP request and WebSocket
  -e CODE              run CODE (a Lua chunk) instead of a script file
  -h, --help           show this help and exit
  -v, --version        show the relaynet, libwebsockets and libuv versions

The process runs until rn.stop(), SIGINT/SIGTERM, or until no server,
connection or timer is left; it exits 0 after a clean shutdown, 1 when the
script raised an error, 2 on a usage error.
]]

local SHORT_USAGE = "usage: relaynet [options] SCRIPT.lua [script arguments...] (relaynet --help lists the options)"

local LOG_LEVELS = { error = true, warn = true, info = true, debug = true }

-- A usage error: raised as a table so that main() can tell it from a bug.
local function usage_error(fmt, ...)
  error({ usage = string.format(fmt, ...) }, 0)
end

-- The content of `file`: text | nil, why ("FILE: reason"), and the read
-- error alone when the file opened but could not be read (a folder opens,
-- then fails to read).
local function read_file(file)
  local f, err = io.open(file, "rb")
  if not f then return nil, err end
  local text, rerr = f:read("a")
  f:close()
  if not text then return nil, file .. ": " .. tostring(rerr), tostring(rerr) end
  return text
end

local function readable(file, flag)
  local text, why = read_file(file)
  if not text then usage_error("%s: cannot read %s", flag, why) end
  return file
end

local function port_value(v, flag)
  local n = math.tointeger(tonumber(v))
  if not n or n < 0 or n > 65535 or not v:match("^%d+$") then
    usage_error("%s: expected a port number 0..65535, got %q", flag, v)
  end
  return n
end

-- The options: name -> { key, kind = "flag" | "value", check(v, flag) -> value }.
-- A "list" option collects every value.
local OPTIONS = {
  ["port"] = { key = "port", check = port_value },
  ["host"] = { key = "host", check = function(v, flag)
    if v == "" then usage_error("%s: expected an address", flag) end
    return v
  end },
  ["server"] = { key = "server", flag = true },
  ["node-id"] = { key = "node_id", check = function(v, flag)
    local mesh = require("relaynet.mesh")
    local ok, err = pcall(mesh.set_node_id, v)
    if not ok then usage_error("%s: %s", flag, tostring(err):gsub("^relaynet%.set_node_id: ", "")) end
    return v
  end },
  ["add-peer"] = { key = "peers", list = true, check = function(v, flag)
    local url, why = require("relaynet.mesh").peer_url(v)
    if not url then usage_error("%s: %s", flag, why) end
    return url
  end },
  ["disable-registry"] = { key = "disable_registry", flag = true },
  ["no-mesh"] = { key = "no_mesh", flag = true },
  ["insecure-mesh"] = { key = "insecure_mesh", flag = true },
  ["tls-cert"] = { key = "tls_cert", check = readable },
  ["tls-key"] = { key = "tls_key", check = readable },
  ["tls-ca"] = { key = "tls_ca", check = readable },
  ["node-key"] = { key = "node_key", check = readable },
  ["trust"] = { key = "trust", check = readable },
  ["mesh-secret"] = { key = "mesh_secret", check = readable },
  ["rpc-token"] = { key = "rpc_token", check = function(v, flag)
    local text, why = require("relaynet.core").read_private(v)
    if not text then usage_error("%s: %s", flag, (why:gsub("^%u+: ", ""))) end
    local token = text:gsub("^%s+", ""):gsub("%s+$", "")
    if #token < 16 or #token > 256 then usage_error("%s: %s must hold a token of 16 to 256 bytes", flag, v) end
    return token
  end },
  ["log-level"] = { key = "log_level", check = function(v, flag)
    if not LOG_LEVELS[v] then usage_error("%s: expected error, warn, info or debug, got %q", flag, v) end
    return v
  end },
  ["no-access-log"] = { key = "no_access_log", flag = true },
}

--- Parses argv: returns opts, or raises a usage error. opts.script or
--- opts.code is what to run, opts.rest the script's own arguments;
--- opts.help / opts.version ask for those.
function M.parse(argv)
  local opts = { peers = {}, rest = {} }
  local i, n = 1, #argv
  local function take_value(flag, inline)
    if inline then return inline end
    local v = argv[i + 1]
    if v == nil then usage_error("%s needs a value", flag) end
    i = i + 1
    return v
  end
  while i <= n do
    local a = argv[i]
    local have_target = opts.script or opts.code
    if a == "--" then
      for k = i + 1, n do opts.rest[#opts.rest + 1] = argv[k] end
      break
    end
    local dashes, name, inline = a:match("^(%-%-?)([%a][%w%-]*)=(.*)$")
    if not dashes then dashes, name = a:match("^(%-%-?)([%a][%w%-]*)$") end
    local spec = name and OPTIONS[name]
    if a == "-h" or name == "help" then
      opts.help = true
    elseif a == "-v" or name == "version" then
      opts.version = true
    elseif a == "-e" and not have_target then
      opts.code = take_value("-e")
    elseif spec then
      local flag = dashes .. name
      if spec.flag then
        if inline then usage_error("%s takes no value", flag) end
        opts[spec.key] = true
      else
        local v = spec.check(take_value(flag, inline), flag)
        if spec.list then
          local list = opts[spec.key]
          list[#list + 1] = v
        else
          opts[spec.key] = v
        end
      end
    elseif have_target then
      opts.rest[#opts.rest + 1] = a -- the script's own arguments (and options)
    elseif dashes or a:sub(1, 1) == "-" then
      usage_error("unknown option %s (relaynet --help lists them)", a)
    else
      opts.script = a
    end
    i = i + 1
  end
  if (opts.tls_cert == nil) ~= (opts.tls_key == nil) then
    usage_error("--tls-cert and --tls-key go together")
  end
  return opts
end

local function keygen(argv)
  if not argv[2] or argv[3] then
    io.stderr:write("usage: relaynet keygen FILE\n")
    return 2
  end
  local core = require("relaynet.core")
  local priv, pub = core.ed25519_keygen()
  local ok, err = core.key_write(argv[2], priv)
  if not ok then
    io.stderr:write("relaynet: ", err, "\n")
    return 1
  end
  print(require("relaynet").key_node_id(pub) .. " " .. core.b64encode(pub))
  return 0
end

-- Applies the parsed options to the relaynet module before the run:
-- returns true, or nil and a usage message.
local function configure(rn, opts)
  if opts.disable_registry then rn.disable_registry() end
  if opts.insecure_mesh then rn.mesh_config.insecure_mesh = true end
  if opts.node_key or opts.trust or opts.mesh_secret then
    local ok, err = rn.mesh_auth { key = opts.node_key, trust = opts.trust, secret = opts.mesh_secret }
    if not ok then return nil, err end
  end
  if opts.rpc_token then rn.set_rpc_token(opts.rpc_token) end
  rn.tls_config.cert, rn.tls_config.key, rn.tls_config.ca = opts.tls_cert, opts.tls_key, opts.tls_ca
  rn.log.set_level(opts.log_level or "info")
  rn.log.set_access(not opts.no_access_log)
  if opts.port or opts.server or opts.host or opts.no_mesh then
    local defaults = { port = opts.port, host = opts.host }
    if opts.no_mesh then defaults.mesh = false end
    rn._set_listen_defaults(defaults)
  end
  return true
end

--- Runs the command with argv (arg[1..n]); returns the exit status.
function M.main(argv)
  argv = argv or {}
  -- A bad RELAYNET_LIMITS raises while relaynet loads: that is the user's
  -- setting, so it is one line and exit status 2, like a usage error.
  local loaded, load_err = pcall(require, "relaynet")
  if not loaded then
    local why = tostring(load_err):match("RELAYNET_LIMITS: [^\n]*")
    if not why then error(load_err, 0) end
    io.stderr:write("relaynet: ", why, "\n")
    return 2
  end
  if argv[1] == "keygen" then return keygen(argv) end
  local ok, opts = pcall(M.parse, argv)
  if not ok then
    if type(opts) == "table" and opts.usage then
      io.stderr:write("relaynet: ", opts.usage, "\n")
      return 2
    end
    error(opts, 0)
  end
  if opts.help then
    io.stdout:write(USAGE)
    return 0
  end
  if opts.version then
    local rn = require("relaynet")
    local lws, uv = require("relaynet.core").versions()
    print(rn._VERSION .. " (libwebsockets " .. lws .. ", libuv " .. uv .. ", " .. _VERSION .. ")")
    return 0
  end

  local chunk, err
  if opts.code then
    chunk, err = load(opts.code, "=(command line)")
  elseif opts.script then
    local text, _, rerr = read_file(opts.script)
    if not text then
      io.stderr:write("relaynet: cannot open script ", opts.script, rerr and ": " .. rerr or "", "\n")
      return 2
    end
    chunk, err = loadfile(opts.script)
  elseif opts.port or opts.server then
    chunk = function() end -- a bare node: serve until stopped
  else
    io.stderr:write(SHORT_USAGE, "\n")
    return 2
  end
  if not chunk then
    io.stderr:write("relaynet: ", tostring(err), "\n")
    return 1
  end

  -- The script's own arg table: arg[0] is the script, then its arguments.
  local sarg = { [0] = opts.script or "-e" }
  for k = 1, #opts.rest do sarg[k] = opts.rest[k] end
  _G.arg = sarg

  local rn = require("relaynet")
  local cok, cerr = configure(rn, opts)
  if not cok then
    io.stderr:write("relaynet: ", tostring(cerr), "\n")
    return 2
  end
  local failed = false
  local want_server = opts.port or opts.server
  require("relaynet.runtime").set_command(true) -- the script's rn.run() joins this run
  local run_ok = rn.run(function()
    for _, url in ipairs(opts.peers) do rn.add_peer(url) end
    require("relaynet.sched").go(function()
      local co = coroutine.running()
      local good, e = xpcall(chunk, function(m) return debug.traceback(co, tostring(m), 2) end,
        table.unpack(sarg, 1, #sarg))
      if not good then
        failed = true
        io.stderr:write("relaynet: ", tostring(e), "\n")
        rn.stop()
      end
    end)
    -- The script has run up to its first wait (or its end): the server
    -- --port asked for starts now unless the script started it itself.
    if want_server and not failed then
      local srv, lerr = rn.server()
      if not srv then
        io.stderr:write("relaynet: ", lerr, "\n")
        failed = true
        rn.stop()
      end
    end
  end)
  return (failed or not run_ok) and 1 or 0
end

--- True when the function that calls it is in the file being run as the
--- main script (by lua5.4 or by the relaynet command), not loaded by
--- dofile or require.
function M.is_main()
  local a = _G.arg
  return a ~= nil and debug.getinfo(2, "S").source == "@" .. tostring(a[0])
end

--- Runs a script that serves one server: `lua5.4 FILE [PORT]` or
--- `relaynet FILE [PORT] [--port N] [options]`. Plain lua5.4 hands the file
--- to the command (M.main), so both take every option; then the server is
--- rn.server{ port = PORT, <spec.listen> } (the command's --port wins),
--- spec.attach(srv) sets it up, and spec.banner(srv)'s line goes to stdout.
--- spec.name prefixes error messages, spec.usage is the file as the usage
--- line names it, spec.check() (optional) returns an error message to exit
--- 1 with before the loop starts. A bad PORT is a usage error (exit 2).
function M.serve_script(spec)
  local rn = require("relaynet")
  local a = _G.arg
  if not rn.running() then os.exit(M.main({ a[0], table.unpack(a) })) end
  local port = a[1] and math.tointeger(tonumber(a[1]))
  if port and (port < 0 or port > 65535) then port = nil end
  if a[2] or (a[1] and not port) then
    io.stderr:write("usage: relaynet ", spec.usage, " [PORT] [--port N] [relaynet options]\n")
    os.exit(2)
  end
  local cerr = spec.check and spec.check()
  if cerr then
    io.stderr:write(spec.name, ": ", cerr, "\n")
    os.exit(1)
  end
  rn.main(function()
    local o = { port = port }
    for k, v in pairs(spec.listen or {}) do o[k] = v end
    local srv, err = rn.server(o)
    if not srv then
      io.stderr:write(spec.name, ": ", err, "\n")
      return false
    end
    spec.attach(srv)
    print(spec.banner(srv))
    io.stdout:flush()
  end)
end

return M

-- spec/support/tls_files.lua: a private CA and certificates for the TLS
-- specs, made at test time with the openssl command (never checked in).
--
--   local T = require("tls_files")
--   local f = T.make()  -- f.dir, f.ca, f.cert, f.key (localhost, 127.0.0.1),
--                       -- f.other_cert, f.other_key (only other.test),
--                       -- f.rogue_ca, f.rogue_cert, f.rogue_key (another CA),
--                       -- f.client_cert, f.client_key (a client certificate)
-- The files of one make() are shared by every spec of the process.

local M = {}

local made

local function run(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  assert(ok, "tls_files: failed: " .. cmd)
end

-- A key and a certificate signed by ca/ca_key for the given subjectAltName.
local function leaf(dir, name, ca, ca_key, cn, san, usage)
  local key, csr, crt, ext = dir .. "/" .. name .. ".key", dir .. "/" .. name .. ".csr",
    dir .. "/" .. name .. ".pem", dir .. "/" .. name .. ".ext"
  local f = assert(io.open(ext, "w"))
  f:write("subjectAltName=" .. san .. "\nextendedKeyUsage=" .. usage .. "\n")
  f:close()
  run(string.format("openssl req -newkey rsa:2048 -nodes -keyout %s -out %s -subj '/CN=%s'", key, csr, cn))
  run(string.format("openssl x509 -req -in %s -CA %s -CAkey %s -CAcreateserial -out %s -days 2 -extfile %s",
    csr, ca, ca_key, crt, ext))
  return crt, key
end

local function ca(dir, name, cn)
  local key, crt = dir .. "/" .. name .. ".key", dir .. "/" .. name .. ".pem"
  run(string.format("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 2 -subj '/CN=%s'",
    key, crt, cn))
  return crt, key
end

function M.make()
  if made then return made end
  local p = io.popen("mktemp -d /tmp/rn-tls-XXXXXX")
  local dir = p:read("l")
  p:close()
  local f = { dir = dir }
  local ca_key, rogue_key
  f.ca, ca_key = ca(dir, "ca", "relaynet test CA")
  f.cert, f.key = leaf(dir, "server", f.ca, ca_key, "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth")
  f.other_cert, f.other_key = leaf(dir, "other", f.ca, ca_key, "other.test", "DNS:other.test", "serverAuth")
  f.client_cert, f.client_key = leaf(dir, "client", f.ca, ca_key, "client", "DNS:client", "clientAuth")
  f.rogue_ca, rogue_key = ca(dir, "rogue-ca", "not our CA")
  f.rogue_cert, f.rogue_key = leaf(dir, "rogue", f.rogue_ca, rogue_key, "localhost", "DNS:localhost,IP:127.0.0.1",
    "serverAuth")
  made = f
  return f
end

--- Removes the files (call from a teardown; make() makes new ones after).
function M.remove()
  if made then os.execute("rm -rf '" .. made.dir .. "'") end
  made = nil
end

return M

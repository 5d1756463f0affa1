-- relaynet.tls: the process-wide TLS settings (rn.tls_config), read at the
-- moment a server listens or a client connects.
--
--   cert, key  PEM files: HttpServer.listen serves https/wss with them when
--              its own options carry no `tls` (the relaynet command's
--              --tls-cert / --tls-key);
--   ca         a PEM file of trusted CAs: wss:// connections (rn.ws_connect,
--              mesh links) verify servers against it when their own options
--              name no `ca` (--tls-ca); nil: the system's CA store.
--
-- A server's own `tls = { cert =, key =, ca =, require_client_cert = }`
-- and a connect's own `ca` / `insecure` win over these.

local M = {}

M.config = { cert = nil, key = nil, ca = nil }

--- The tls option a listen gets: its own, else one made from the settings
--- (nil when neither names a certificate). `tls = false` means plain.
function M.server_tls(opts)
  if opts.tls ~= nil then return opts.tls or nil end
  local c = M.config
  if c.cert or c.key then return { cert = c.cert, key = c.key } end
  return nil
end

--- The CA file a wss:// connect verifies against (nil: the system's store).
function M.client_ca(opts)
  if opts.ca ~= nil then return opts.ca end
  return M.config.ca
end

return M

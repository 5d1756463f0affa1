-- relaynet.http: HTTP routing, request objects, responses and static files.

local M = {}

local MIME = {
  html = "text/html; charset=utf-8", htm = "text/html; charset=utf-8",
  css = "text/css; charset=utf-8", js = "text/javascript; charset=utf-8",
  mjs = "text/javascript; charset=utf-8", json = "application/json",
  txt = "text/plain; charset=utf-8", svg = "image/svg+xml", png = "image/png",
  jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif", ico = "image/x-icon",
  webp = "image/webp", wasm = "application/wasm", map = "application/json",
  woff = "font/woff", woff2 = "font/woff2", xml = "application/xml",
}
M.MIME = MIME

function M.mime_type(path)
  local ext = path:match("%.([%w]+)$")
  return ext and MIME[ext:lower()] or "application/octet-stream"
end

--- The server's query arguments arrive already decoded by libwebsockets, one
--- "k=v" per NUL-terminated piece. Returns the table and a decoded
--- "k=v&k2=v2" string.
function M.parse_args(raw)
  local t, list = {}, {}
  for arg in raw:gmatch("([^%z]*)%z") do
    if arg ~= "" then
      list[#list + 1] = arg
      local k, v = arg:match("^([^=]*)=(.*)$")
      if k then t[k] = v else t[arg] = "" end
    end
  end
  return t, table.concat(list, "&")
end

-- routes ---------------------------------------------------------------------

local METHODS = { GET = true, POST = true, PUT = true, PATCH = true, DELETE = true,
  OPTIONS = true, HEAD = true, ["*"] = true }

--- Adds a route to `routes` (see HttpServer.route). A path ending in "*"
--- matches every path with that prefix.
function M.add_route(routes, method, path, handler)
  if type(method) ~= "string" or not METHODS[method:upper()] then
    error("relaynet: route method must be GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD or *", 3)
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    error("relaynet: route path must be a string starting with '/'", 3)
  end
  if type(handler) ~= "function" then
    error("relaynet: route handler must be a function", 3)
  end
  method = method:upper()
  if path:sub(-1) == "*" then
    local prefix = path:sub(1, -2)
    local entry
    for _, p in ipairs(routes.prefixes) do
      if p.prefix == prefix then entry = p end
    end
    if not entry then
      entry = { prefix = prefix, methods = {} }
      routes.prefixes[#routes.prefixes + 1] = entry
      -- longest prefix first
      table.sort(routes.prefixes, function(a, b) return #a.prefix > #b.prefix end)
    end
    entry.methods[method] = handler
  else
    routes.exact[path] = routes.exact[path] or {}
    routes.exact[path][method] = handler
  end
end

function M.new_routes()
  return { exact = {}, prefixes = {} }
end

local function pick(methods, method)
  local h = methods[method] or methods["*"]
  if not h and method == "HEAD" then h = methods.GET end
  if h then return h end
  local allow = {}
  for m in pairs(methods) do allow[#allow + 1] = m end
  table.sort(allow)
  return nil, table.concat(allow, ", ")
end

--- Finds the handler for method/path: handler | nil, status, allow.
function M.match(routes, method, path)
  local methods = routes.exact[path]
  if not methods then
    for _, p in ipairs(routes.prefixes) do
      if path:sub(1, #p.prefix) == p.prefix then methods = p.methods; break end
    end
  end
  if not methods then return nil, 404 end
  local h, allow = pick(methods, method)
  if h then return h end
  return nil, 405, allow
end

-- responses ------------------------------------------------------------------

local REASON = {
  [400] = "Bad Request", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [411] = "Length Required", [413] = "Payload Too Large",
  [500] = "Internal Server Error", [503] = "Service Unavailable",
}
M.REASON = REASON

--- Normalizes a handler's return values to status, body, headers.
--- Accepts (status, body, headers), (body) or ({status=, body=, headers=}).
--- A table body is encoded with json.encode (relaynet.json: text | nil,
--- message); a body it cannot encode raises, like a non-integer status, so
--- the caller answers 500 and reports the message.
function M.normalize(json, a, b, c)
  local status, body, headers
  if type(a) == "table" and (a.status ~= nil or a.body ~= nil or a.headers ~= nil) then
    status, body, headers = a.status or 200, a.body, a.headers
  elseif type(a) == "table" and b == nil then
    -- any other table (an array, an object) is the body, sent as JSON
    status, body = 200, a
  elseif type(a) == "string" and b == nil then
    status, body = 200, a
  elseif a == nil then
    status, body = 204, ""
  else
    status, body, headers = a, b, c
  end
  if math.type(status) ~= "integer" then
    status = tonumber(status) and math.tointeger(tonumber(status)) or nil
    if not status then error("relaynet: route handler returned a non-integer status", 0) end
  end
  headers = headers or {}
  if type(body) == "table" then
    local text, err = json.encode(body)
    if not text then error("relaynet: route handler returned a body JSON cannot hold: " .. tostring(err), 0) end
    body = text
    local has_ct = false
    for k in pairs(headers) do
      if type(k) == "string" and k:lower() == "content-type" then has_ct = true end
    end
    if not has_ct then
      local h = {}
      for k, v in pairs(headers) do h[k] = v end
      h["content-type"] = "application/json"
      headers = h
    end
  elseif body == nil then
    body = ""
  elseif type(body) ~= "string" then
    body = tostring(body)
  end
  return status, body, headers
end

-- static files -----------------------------------------------------------------

--- Maps a request path under `prefix` to a file under `dir`; nil when the
--- path escapes the folder or is malformed. The path is already decoded
--- (libwebsockets decodes it and resolves dot segments), so it is not
--- unescaped again.
function M.static_path(dir, prefix, path)
  local rel = path:sub(#prefix + 1)
  if rel:find("%z") or rel:find("\\", 1, true) then return nil end
  local parts = {}
  for seg in rel:gmatch("[^/]+") do
    if seg == ".." then return nil end
    if seg ~= "." then parts[#parts + 1] = seg end
  end
  if #parts == 0 or rel:sub(-1) == "/" then parts[#parts + 1] = "index.html" end
  return dir .. "/" .. table.concat(parts, "/")
end

--- Returns a route handler serving files from `dir` under URL `prefix`.
function M.static_handler(dir, prefix, max_size)
  return function(req)
    local file = M.static_path(dir, prefix, req.path)
    if not file then return 403, "forbidden\n" end
    local f = io.open(file, "rb")
    if not f then return 404, "not found\n" end
    local probe, read_err = f:read(0)
    if probe == nil and read_err then
      -- reading fails on a directory ("Is a directory"): redirect to the folder
      f:close()
      return 301, "", { location = req.path .. "/" }
    end
    local size = f:seek("end")
    if not size then f:close(); return 404, "not found\n" end
    if size > max_size then f:close(); return 403, "file too large\n" end
    f:seek("set", 0)
    local data = f:read("a")
    f:close()
    if not data then return 404, "not found\n" end
    return 200, data, { ["content-type"] = M.mime_type(file) }
  end
end

return M

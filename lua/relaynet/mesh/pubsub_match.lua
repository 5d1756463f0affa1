-- relaynet.mesh.pubsub_match: topic and pattern syntax, and matching.
--
-- Topics are NATS-style subjects: tokens separated by ".". A token is 1-64
-- characters from [A-Za-z0-9_-:@]; a topic is at most cfg.max_topic_length
-- (256) bytes with no empty token. A subscription pattern may also use the
-- wildcards "*" (exactly one token) and ">" (one or more trailing tokens,
-- only as the last token); a topic one publishes to may not.
--
-- This file holds no state but a bounded cache of compiled patterns; it
-- requires nothing but the mesh's config, so routes.lua can use it to check
-- the patterns of route entries.

local S = require("relaynet.mesh.state")

local cfg = S.config

local P = {}

--- The longest token, in bytes.
P.MAX_TOKEN = 64

-- Splits `s` into its tokens, or returns nil and why. `wild`: "*" and ">"
-- are allowed as whole tokens (">" only last).
local function tokens(s, wild)
  if type(s) ~= "string" then return nil, "a topic must be a string, got " .. type(s) end
  if #s == 0 then return nil, "a topic must not be empty" end
  if #s > cfg.max_topic_length then
    return nil, string.format("topic is %d bytes, at most %d (mesh_config.max_topic_length)", #s,
      cfg.max_topic_length)
  end
  local list, n = {}, 0
  for tok in (s .. "."):gmatch("([^.]*)%.") do
    n = n + 1
    if tok == "" then return nil, "topic '" .. s .. "' has an empty token" end
    if tok == "*" or tok == ">" then
      if not wild then
        return nil, "topic '" .. s .. "' has a wildcard token ('" .. tok .. "'): publish to a topic without wildcards"
      end
    elseif #tok > P.MAX_TOKEN then
      return nil, string.format("topic '%s' has a token of %d bytes, at most %d", s, #tok, P.MAX_TOKEN)
    elseif tok:find("[^%w_%-:@]") then
      return nil, "topic '" .. s .. "' has a token with a character other than letters, digits, _ - : @"
    end
    list[n] = tok
  end
  for i = 1, n - 1 do
    if list[i] == ">" then return nil, "topic '" .. s .. "': '>' may only be the last token" end
  end
  return list
end

--- Checks a topic to publish to (no wildcards): its token list | nil, why.
function P.check_topic(s) return tokens(s, false) end

--- Checks a subscription pattern (wildcards allowed): its token list | nil, why.
function P.check_pattern(s) return tokens(s, true) end

-- Compiled patterns: pattern text -> token list, or false (invalid). Other
-- nodes' patterns arrive in route entries; the cache is emptied when it
-- holds more than 4 * max_interest_entries patterns, so it stays bounded.
local cache, n_cache = {}, 0

local function compiled(pattern)
  local c = cache[pattern]
  if c == nil then
    c = tokens(pattern, true) or false
    if n_cache >= 4 * cfg.max_interest_entries then cache, n_cache = {}, 0 end
    cache[pattern] = c
    n_cache = n_cache + 1
  end
  return c
end

--- True when the token list `t` of a topic matches pattern text `pattern`
--- (an invalid pattern matches nothing).
function P.match_tokens(pattern, t)
  local p = compiled(pattern)
  if not p then return false end
  local np, nt = #p, #t
  for i = 1, np do
    local tok = p[i]
    if tok == ">" then return nt >= i end
    if i > nt then return false end
    if tok ~= "*" and tok ~= t[i] then return false end
  end
  return np == nt
end

--- True when topic text `topic` (no wildcards; not checked) matches pattern
--- text `pattern`.
function P.match(pattern, topic)
  if pattern == topic then return true end
  local t = {}
  for tok in (topic .. "."):gmatch("([^.]*)%.") do t[#t + 1] = tok end
  return P.match_tokens(pattern, t)
end

--- True when any pattern of the list `patterns` matches token list `t`.
function P.any_match(patterns, t)
  for i = 1, #patterns do
    if P.match_tokens(patterns[i], t) then return true end
  end
  return false
end

return P

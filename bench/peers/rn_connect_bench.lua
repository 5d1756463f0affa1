-- The cost of opening a link from relaynet's side: rn.ws_connect to a
-- WebSocket server (over ws:// or wss://), one connection at a time, each
-- closed with close_wait() before the next (what a mesh node pays to dial a
-- peer, before any mesh hello).
--
--   lua5.4 bench/peers/rn_connect_bench.lua URL COUNT [CA_FILE]
--
-- Prints one JSON line: connects (measured, after 20 not measured), the
-- connect time (the call to rn.ws_connect until it returns an open client:
-- TCP, TLS with the certificate and host name verified against CA_FILE,
-- and the HTTP upgrade) as open_p50_us / open_p99_us, and this process's
-- CPU time (os.clock: user + system) per connect-and-close cycle as
-- client_cpu_us. Exits 1 with a message when a connect fails.
local rn = require("relaynet")
local hrtime = require("relaynet.core").hrtime

local url, count, ca = arg[1], math.tointeger(tonumber(arg[2] or "")), arg[3]
if not url or not count or count < 1 then
  io.stderr:write("usage: lua5.4 rn_connect_bench.lua URL COUNT [CA_FILE]\n")
  os.exit(2)
end
local WARMUP = 20

local failed
rn.run(function()
  local opts = { ca = ca }
  local times = {}
  local cpu0
  for i = 1, WARMUP + count do
    if i == WARMUP + 1 then cpu0 = os.clock() end
    local t0 = hrtime()
    local c, err = rn.ws_connect(url, opts)
    local t1 = hrtime()
    if not c then
      failed = err
      return
    end
    c:close_wait()
    if i > WARMUP then times[#times + 1] = (t1 - t0) * 1e6 end
  end
  local cpu = os.clock() - cpu0
  table.sort(times)
  local function pct(p) return times[math.floor(p * (#times - 1) + 0.5) + 1] end
  print(string.format('{"connects":%d,"open_p50_us":%.1f,"open_p99_us":%.1f,"client_cpu_us":%.1f}',
    #times, pct(0.5), pct(0.99), cpu / #times * 1e6))
end)
if failed then
  io.stderr:write("rn_connect_bench: ", tostring(failed), "\n")
  os.exit(1)
end

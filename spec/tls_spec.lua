-- spec/tls_spec.lua: https and wss, served by relaynet and reached by
-- clients nobody here wrote (curl, python3-websockets, node's ws) and by
-- rn.ws_connect, with a private CA made at test time
-- (spec/support/tls_files.lua); certificate failures give ECERT, bad files
-- ETLS; and a mesh of three relaynet processes linked over wss.

local H = require("helper")
local MH = require("mesh_harness")
local T = require("tls_files")
local rn = require("relaynet")
local json = require("relaynet.json")

local F

-- An echo server over TLS on a free loopback port (the test's own process).
local function tls_echo(tls)
  local srv = H.listen({ mesh = false, tls = tls or { cert = F.cert, key = F.key } })
  srv:route("GET", "/hello", function() return 200, "hello over tls\n" end)
  srv:on("message", function(id, msg, binary) srv:ws_send(id, msg, binary) end)
  return srv
end

describe("TLS", function()
  setup(function() F = T.make() end)
  teardown(function() T.remove() end)

  it("serves https to curl, verified against the test CA", function()
    H.run(function()
      local srv = tls_echo()
      local status, body = H.curl("--cacert " .. H.q(F.ca) .. " " .. H.q("https://localhost:" .. srv.port .. "/hello"))
      assert.are.equal(200, status)
      assert.are.equal("hello over tls\n", body)
      -- plain http on the TLS port is not served
      local st2 = H.curl(H.q("http://localhost:" .. srv.port .. "/hello"))
      assert.are_not.equal(200, st2)
    end, { timeout = 30 })
  end)

  it("echoes over wss to rn.ws_connect with opts.ca", function()
    H.run(function()
      local srv = tls_echo()
      local c = assert(rn.ws_connect("wss://localhost:" .. srv.port .. "/", { ca = F.ca }))
      assert(c:send("over tls"))
      assert(c:send("\0\1\2", true))
      assert.are.same({ "over tls", false }, { c:receive(5) })
      assert.are.same({ "\0\1\2", true }, { c:receive(5) })
      c:close_wait()
    end, { timeout = 30 })
  end)

  it("echoes over wss to python3-websockets trusting the test CA", function()
    H.run(function()
      local srv = tls_echo()
      local cmd = "SSL_CERT_FILE=" .. H.q(F.ca) .. " " .. H.PY .. " " .. H.q(H.ROOT .. "/spec/support/py_client.py")
        .. " echo " .. H.q("wss://localhost:" .. srv.port .. "/")
      local rc, out, err = H.sh(cmd):wait(60)
      assert.are.equal(0, rc, err)
      local res = assert(json.decode(out:match("[^\n]+")))
      assert.is_nil(res.error, tostring(res.error))
      assert.is_true(#res.cases >= 4, out)
      for _, case in ipairs(res.cases) do assert.is_true(case.ok, case.name .. ": " .. out) end
      assert.are.equal(1000, res.close_code)
    end, { timeout = 70 })
  end)

  it("echoes over wss to node's ws trusting the test CA", function()
    H.run(function()
      local srv = tls_echo()
      local cmd = "NODE_EXTRA_CA_CERTS=" .. H.q(F.ca) .. " node " .. H.q(H.ROOT .. "/spec/e2e/ws_echo_client.js")
        .. " " .. H.q("wss://localhost:" .. srv.port .. "/")
      local rc, out, err = H.sh(cmd):wait(30)
      assert.are.equal(0, rc, "node client failed:\n" .. out .. err)
      assert.are.equal("ws_echo_client: OK (6 messages echoed)\n", out)
    end, { timeout = 40 })
  end)

  it("refuses a certificate from an unknown CA with ECERT", function()
    H.run(function()
      local srv = tls_echo({ cert = F.rogue_cert, key = F.rogue_key })
      local url = "wss://localhost:" .. srv.port .. "/"
      local c, err, code = rn.ws_connect(url, { ca = F.ca })
      assert.is_nil(c)
      assert.are.equal("ECERT", code)
      assert.are.equal("ECERT: certificate of " .. url .. " not accepted: certificate verify failed: "
        .. "unable to get local issuer certificate", err)
      -- the system's CA store does not know the test CA either
      c, err, code = rn.ws_connect("wss://localhost:" .. tls_echo().port .. "/")
      assert.is_nil(c)
      assert.are.equal("ECERT", code, err)
    end, { timeout = 30 })
  end)

  it("refuses a certificate for another host name with ECERT", function()
    H.run(function()
      local srv = tls_echo({ cert = F.other_cert, key = F.other_key })
      local url = "wss://localhost:" .. srv.port .. "/"
      local c, err, code = rn.ws_connect(url, { ca = F.ca })
      assert.is_nil(c)
      assert.are.equal("ECERT", code)
      assert.are.equal("ECERT: certificate of " .. url .. " not accepted: certificate verify failed: "
        .. "hostname mismatch", err)
    end, { timeout = 30 })
  end)

  it("connects to any certificate with insecure = true (an explicit opt-out)", function()
    H.run(function()
      local srv = tls_echo({ cert = F.other_cert, key = F.other_key })
      local c = assert(rn.ws_connect("wss://localhost:" .. srv.port .. "/", { insecure = true }))
      assert(c:send("x"))
      assert.are.equal("x", (c:receive(5)))
      c:close_wait()
    end, { timeout = 30 })
  end)

  it("reads rn.tls_config for servers and clients that name no files", function()
    H.run(function()
      rn.tls_config.cert, rn.tls_config.key, rn.tls_config.ca = F.cert, F.key, F.ca
      local ok, err = pcall(function()
        local srv = H.listen({ mesh = false })
        srv:on("message", function(id, msg) srv:ws_send(id, msg) end)
        local c = assert(rn.ws_connect("wss://127.0.0.1:" .. srv.port .. "/"))
        assert(c:send("by default"))
        assert.are.equal("by default", (c:receive(5)))
        c:close_wait()
        -- tls = false keeps one server plain
        local plain = H.listen({ mesh = false, tls = false })
        local status = H.curl(H.q("http://127.0.0.1:" .. plain.port .. "/"))
        assert.are.equal(404, status)
      end)
      rn.tls_config.cert, rn.tls_config.key, rn.tls_config.ca = nil, nil, nil
      assert(ok, err)
    end, { timeout = 30 })
  end)

  it("asks for a client certificate with require_client_cert", function()
    H.run(function()
      local srv = tls_echo({ cert = F.cert, key = F.key, ca = F.ca, require_client_cert = true })
      local py = [[
import asyncio, json, ssl, sys, websockets
async def main(url, ca, cert, key):
    out = {}
    for name, chain in (("without", None), ("with", (cert, key))):
        ctx = ssl.create_default_context(cafile=ca)
        if chain: ctx.load_cert_chain(*chain)
        try:
            async with websockets.connect(url, ssl=ctx, open_timeout=10) as ws:
                await ws.send("cert")
                out[name] = await asyncio.wait_for(ws.recv(), 10)
        except Exception as e:
            out[name] = "refused"
    print(json.dumps(out, sort_keys=True))
asyncio.run(main(*sys.argv[1:]))
]]
      local path = F.dir .. "/client_cert.py"
      local f = assert(io.open(path, "w"))
      f:write(py)
      f:close()
      local rc, out, err = H.sh(H.PY .. " " .. H.q(path) .. " " .. H.q("wss://localhost:" .. srv.port .. "/") .. " "
        .. H.q(F.ca) .. " " .. H.q(F.client_cert) .. " " .. H.q(F.client_key)):wait(40)
      assert.are.equal(0, rc, err)
      assert.are.equal('{"with": "cert", "without": "refused"}\n', out)
    end, { timeout = 50 })
  end)

  it("gives ETLS, naming the file, for unusable certificate files", function()
    H.run(function()
      local function listen(tls)
        return rn.HttpServer.listen({ port = 0, host = "127.0.0.1", mesh = false, tls = tls })
      end
      local s, err, code = listen({ cert = F.dir .. "/missing.pem", key = F.key })
      assert.are.same({ nil, "ETLS: cannot read the certificate file " .. F.dir .. "/missing.pem", "ETLS" },
        { s, err, code })
      s, err, code = listen({ cert = F.cert, key = F.other_key })
      assert.is_nil(s)
      assert.are.equal("ETLS", code)
      assert.truthy(err:find("bad key file " .. F.other_key .. ":", 1, true), err)
      s, err, code = listen({ cert = F.key, key = F.key })
      assert.is_nil(s)
      assert.are.equal("ETLS", code)
      assert.truthy(err:find("bad certificate file " .. F.key .. ":", 1, true), err)
      assert.has_error(function() listen({ cert = F.cert }) end, "relaynet: tls needs cert and key (file names)")
      local c
      c, err, code = rn.ws_connect("wss://localhost:1/", { ca = F.dir .. "/none.pem" })
      assert.are.same({ nil, "ETLS: cannot read the CA file " .. F.dir .. "/none.pem", "ETLS" }, { c, err, code })
    end, { timeout = 30 })
  end)

  it("links three relaynet nodes over wss and calls across two hops", function()
    H.run(function()
      local ports = MH.free_ports(3)
      local handles = {}
      local function node(i, peer)
        local argv = { "lua5.4", H.q(MH.RELAYNET), H.q(MH.COUNTER), "--port", ports[i], "--host", "127.0.0.1",
          "--node-id", "t" .. i, "--tls-cert", H.q(F.cert), "--tls-key", H.q(F.key), "--tls-ca", H.q(F.ca) }
        if peer then
          argv[#argv + 1] = "--add-peer"
          argv[#argv + 1] = H.q("wss://localhost:" .. ports[peer] .. "/ws/p2p")
        end
        handles[#handles + 1] = H.sh("exec " .. table.concat(argv, " "))
      end
      local ok, err = pcall(function()
        node(1)
        node(2, 1)
        node(3, 2)
        -- this process joins t1 over wss and calls the counter on t3
        rn.tls_config.ca = F.ca
        rn.add_peer("wss://localhost:" .. ports[1] .. "/ws/p2p")
        local deadline = rn.now() + 30
        local res, cerr, code
        repeat
          res, cerr, code = rn.remote_call("t3", "counter", "increment", {}, 2)
          if res == nil then rn.sleep(0.2) end
        until res ~= nil or rn.now() > deadline
        assert(res ~= nil, "no answer from t3 over wss: " .. tostring(cerr) .. " " .. tostring(code))
        assert.are.equal("integer", math.type(res))
        local res2 = assert(rn.remote_call("t3", "counter", "increment", {}, 5))
        assert.are.equal(res + 1, res2)
        -- the routes say t3 is two links away from t1
        local routes_url = "https://localhost:" .. ports[1] .. "/routes"
        local status, body = H.curl("--cacert " .. H.q(F.ca) .. " " .. H.q(routes_url))
        assert.are.equal(200, status)
        local to_t3
        for _, r in ipairs(assert(json.decode(body))) do
          if r.node == "t3" then to_t3 = r end
        end
        assert(to_t3, body)
        assert.are.same({ "t1", "t2", "t3" }, to_t3.path)
      end)
      rn.tls_config.ca = nil
      for _, h in ipairs(handles) do h:kill() end
      assert(ok, err)
    end, { timeout = 90 })
  end)
end)

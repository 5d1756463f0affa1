#!/usr/bin/python3
"""relaynet benchmark runner (python3 standard library only).

Runs every scenario against relaynet and its peers, the server pinned to one
core and the load client (bench/build/loadgen) to another, each measurement
repeated (3 times by default, interleaved: for each scenario, round 1 runs
every server, then round 2, ...; the server order rotates between rounds),
and prints the median run of each, with ratios relaynet / peer measured in
this same run.

    bench/run.py [--quick] [--reps N] [--only SCENARIO,...] [--servers NAME,...]
                 [--duration S] [--warmup S] [--json FILE]

Every server is started fresh for every measurement (so idle memory and
churn RSS start from the same state) and killed afterwards. Results (every
run, and the medians) go to bench/results/latest.json and the tables to
bench/results/latest.md as well as stdout (quick.json / quick.md with
--quick).
"""
import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
LOADGEN = os.path.join(BENCH, "build", "loadgen")
RPC_SCRIPT = "bench/peers/rn_rpc_bench.lua"  # remote_call nodes and the Lua caller
FANOUT_SCRIPT = "bench/peers/rn_fanout.lua"  # publish fan-out nodes
FANOUT_TOPIC = "bench.fanout"
FANOUT_NODES = ["fan-a", "fan-b", "fan-c"]
RESULTS = os.path.join(BENCH, "results")
# The throw-away CA and server certificate (localhost, 127.0.0.1) that
# bench/setup.sh makes with openssl, for the wss scenarios.
TLS_DIR = os.path.join(BENCH, "build", "tls")
TLS_CA = os.path.join(TLS_DIR, "ca.pem")
TLS_CERT = os.path.join(TLS_DIR, "server.pem")
TLS_KEY = os.path.join(TLS_DIR, "server.key")

SERVER_CPU = "0"  # taskset cores
OTHER_LIMIT = 15.0  # % of a core used by other processes during a run: run it again
MAX_RETRIES = 2
CLIENT_CPU = "1"

# --------------------------------------------------------------------------
# servers


def rn_env():
    env = dict(os.environ)
    env["LUA_PATH_5_4"] = (f"{ROOT}/lua/?.lua;{ROOT}/lua/?/init.lua;"
                           "/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua;;")
    env["LUA_CPATH_5_4"] = f"{ROOT}/build/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;;"
    # The benchmarks open up to 10,000 connections from one address and push
    # tens of thousands of messages/s down one connection: lift the
    # per-address connection cap and the per-connection WebSocket rate
    # limits (README, "Security model") for these runs only. A broadcast to
    # 10,000 connections counts its message once per queue against
    # max_buffered, so the backlog of a fan-out run could reach it: off too.
    env["RELAYNET_LIMITS"] = ("max_connections=100000,max_connections_per_ip=0,"
                              "ws_msg_rate=0,ws_byte_rate=0,max_buffered=0")
    return env


def luahttp_env():
    # Debian ships lua-http's pure-Lua modules (and its pure-Lua deps) for
    # 5.1-5.3 in /usr/share/lua/5.1; its C deps (cqueues, luaossl, lpeg) are
    # built for 5.4. lua-http runs unchanged on 5.4 with this path.
    env = dict(os.environ)
    env["LUA_PATH_5_4"] = ("/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua;"
                           "/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua;;")
    env.pop("LUA_CPATH_5_4", None)
    return env


NGINX_CONF = r"""
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 30000;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
events {{ worker_connections 25000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  lua_package_path "/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua;;";
  lua_socket_log_errors off;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      content_by_lua_block {{
        local server = require "nginx.websocket.server"  -- lua-resty-websocket
        local wb = server:new{{ timeout = 3600000, max_payload_len = 1048576 }}
        if not wb then return ngx.exit(444) end
        while true do
          local data, typ = wb:recv_frame()
          if not data then
            return ngx.exit(444)
          elseif typ == "close" then
            wb:send_close(1000, "")
            return ngx.exit(ngx.OK)
          elseif typ == "ping" then
            wb:send_pong(data)
          elseif typ == "text" then
            wb:send_text(data)
          elseif typ == "binary" then
            wb:send_binary(data)
          end
        end
      }}
    }}
  }}
}}
"""


def nginx_cmd(port, tmp):
    d = tempfile.mkdtemp(prefix="nginx-", dir=tmp)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(dir=d, port=port))
    return ["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf"), "-e", os.path.join(d, "error.log")]


# name -> how to start it per kind ("echo" or "broadcast"); None: not offered
SERVERS = {
    "relaynet": {
        "label": "relaynet (Lua 5.4)",
        "echo": lambda port, tmp: ["lua5.4", "examples/echo.lua", str(port)],
        "broadcast": lambda port, tmp: ["lua5.4", "bench/peers/rn_broadcast.lua", str(port)],
        # the fan-out scenario's local floor: the same broadcast server
        "fanout": lambda port, tmp: ["lua5.4", "bench/peers/rn_broadcast.lua", str(port)],
        # remote_call scenarios (driven by the Lua caller, not loadgen): the
        # floor's echo server, and one mesh node of the chain
        "rpc-echo": lambda port, tmp: ["lua5.4", "examples/echo.lua", str(port)],
        # the same echo server, with rn.tls_config naming the certificate
        # (what bin/relaynet --tls-cert/--tls-key sets): https and wss
        "wss-echo": lambda port, tmp: ["lua5.4", "-e", "local t = require('relaynet').tls_config; "
                                       f"t.cert, t.key = '{TLS_CERT}', '{TLS_KEY}'",
                                       "examples/echo.lua", str(port)],
        "remote_call": lambda port, tmp, node_id, peer: (
            ["lua5.4", "bin/relaynet", RPC_SCRIPT, "node", "--host", "127.0.0.1", "--port", str(port),
             "--node-id", node_id] + (["--add-peer", peer] if peer else [])),
        "env": rn_env,
    },
    # Publish fan-out over three mesh nodes (run_fanout): subscribers on
    # every node, the publisher on the first.
    "relaynet-mesh3": {
        "label": "relaynet, pub/sub over 3 nodes",
        "fanout": lambda port, tmp, node_id, peer: (
            ["lua5.4", "bin/relaynet", FANOUT_SCRIPT, "--host", "127.0.0.1", "--port", str(port),
             "--node-id", node_id] + (["--add-peer", peer] if peer else [])),
        "env": rn_env,
    },
    "lws": {
        "label": "lws C, libuv, direct write",
        "echo": lambda port, tmp: ["bench/build/lws_echo", "--port", str(port)],
        "broadcast": lambda port, tmp: ["bench/build/lws_echo", "--port", str(port), "--broadcast"],
        "wss-echo": lambda port, tmp: ["bench/build/lws_echo", "--port", str(port), "--tls-cert", TLS_CERT,
                                       "--tls-key", TLS_KEY],
    },
    "lws-writeable": {
        "label": "lws C, libuv, WRITEABLE only",
        "echo": lambda port, tmp: ["bench/build/lws_echo", "--port", str(port), "--writeable"],
    },
    "node-ws": {
        "label": "node ws",
        "echo": lambda port, tmp: ["node", "bench/peers/node_echo.js", str(port)],
        "broadcast": lambda port, tmp: ["node", "bench/peers/node_echo.js", str(port), "broadcast"],
        "wss-echo": lambda port, tmp: ["node", "bench/peers/node_echo.js", str(port), "--tls-cert", TLS_CERT,
                                       "--tls-key", TLS_KEY],
    },
    "nginx-lua": {
        "label": "nginx + lua-resty-websocket",
        "echo": nginx_cmd,
        # ngx_lua cannot write to another request's socket: no broadcast
    },
    "lua-http": {
        "label": "lua-http (cqueues, Lua 5.4)",
        "echo": lambda port, tmp: ["lua5.4", "bench/peers/luahttp_echo.lua", str(port)],
        "broadcast": lambda port, tmp: ["lua5.4", "bench/peers/luahttp_echo.lua", str(port), "broadcast"],
        "env": luahttp_env,
    },
}
PEERS = ["lws", "node-ws", "nginx-lua", "lua-http"]  # ratio columns

# --------------------------------------------------------------------------
# scenarios
#
# Each scenario: name, kind (server kind), loadgen args, metric (the JSON key
# compared), better ("higher"/"lower"), servers (None: every server offering
# the kind).


def echo_scenarios(quick, dur, warm):
    out = []
    if quick:
        combos = [(1, 16), (10, 1024), (10, 65536)]
    else:
        combos = [(c, s) for c in (1, 100) for s in (16, 1024, 65536)]
    for conns, size in combos:
        servers = None
        if size != 16:  # the WRITEABLE-only variant is shown at 16 B only
            servers = [s for s in SERVERS if s != "lws-writeable"]
        out.append({
            "name": f"echo {conns}c {fmt_size(size)}",
            "kind": "echo",
            "args": ["--mode", "echo", "--conns", str(conns), "--inflight", "1", "--size", str(size),
                     "--duration", str(dur), "--warmup", str(warm)],
            "metric": "msgs_per_s", "unit": "msg/s", "better": "higher", "servers": servers,
        })
    return out


def broadcast_scenarios(quick, dur, warm):
    out = []
    for n in ((100,) if quick else (1000, 10000)):
        out.append({
            "name": f"broadcast {n:,} recv",
            "kind": "broadcast",
            "args": ["--mode", "broadcast-recv", "--conns", str(n), "--inflight", "4", "--size", "16",
                     "--duration", str(dur), "--warmup", str(warm)],
            "metric": "deliveries_per_s", "unit": "deliveries/s", "better": "higher", "servers": None,
            "timeout": 120,
        })
    return out


def fanout_scenarios(quick, dur, warm):
    """Publish fan-out across the mesh against the local ws_broadcast, same
    run, interleaved: `relaynet` is bench/peers/rn_broadcast.lua (one
    process, srv:ws_broadcast to every connection); `relaynet-mesh3` is
    three bench/peers/rn_fanout.lua nodes in a line (fan-b dials fan-a,
    fan-c dials fan-b), every connection subscribed with server:subscribe,
    the receivers spread over the three nodes in turn and the sender on
    fan-a, whose messages are published (rn.publish). Both: the same number
    of receivers plus the sender, 16 B messages, 4 in flight; every node on
    the server core; server CPU summed over the nodes."""
    n = 300 if quick else 10000
    frame = len('{"topic":"%s","from":"%s","message":"%s"}' % (FANOUT_TOPIC, FANOUT_NODES[0], "x" * 16))
    return [{
        "name": f"fanout {n:,} recv",
        "kind": "fanout",
        "args": ["--mode", "broadcast-recv", "--conns", str(n), "--inflight", "4", "--size", "16",
                 "--duration", str(dur), "--warmup", str(warm)],
        "frame_size": frame,
        "metric": "deliveries_per_s", "unit": "deliveries/s", "better": "higher",
        "servers": ["relaynet", "relaynet-mesh3"], "timeout": 180,
    }]


def idle_scenarios(quick, dur, warm):
    n = 200 if quick else 10000
    return [{
        "name": f"idle {n:,} conns",
        "kind": "echo",
        "args": ["--mode", "idle", "--conns", str(n), "--duration", "0.5" if quick else "1"],
        "metric": "bytes_per_conn", "unit": "bytes/conn", "better": "lower",
        "servers": [s for s in SERVERS if s != "lws-writeable"], "timeout": 120,
    }]


def churn_scenarios(quick, dur, warm):
    n = 500 if quick else 10000
    return [{
        "name": f"churn {n:,} cycles",
        "kind": "echo",
        "args": ["--mode", "churn", "--conns", "4", "--count", str(n), "--warmup", "0.2" if quick else "0.5"],
        "metric": "cycles_per_s", "unit": "cycles/s", "better": "higher",
        "servers": [s for s in SERVERS if s != "lws-writeable"], "timeout": 180,
    }]


TLS_SERVERS = ["relaynet", "lws", "node-ws"]


def tls_scenarios(quick, dur, warm):
    """Echo over wss (TLS 1.3, RSA 2048 certificate, loadgen verifying it
    against the bench CA), and the cost of opening a connection: churn over
    wss with 4 slots (handshakes/s, server CPU per handshake) and with one
    slot (connect-to-open latency, unloaded), and the same one-slot churn
    over plain ws for the difference TLS makes."""
    out = []
    if quick:
        combos = [(1, 16), (10, 1024), (10, 65536)]
    else:
        combos = [(c, s) for c in (1, 100) for s in (16, 1024, 65536)]
    for conns, size in combos:
        out.append({
            "name": f"wss echo {conns}c {fmt_size(size)}",
            "kind": "wss-echo", "tls": True,
            "args": ["--mode", "echo", "--conns", str(conns), "--inflight", "1", "--size", str(size),
                     "--duration", str(dur), "--warmup", str(warm)],
            "metric": "msgs_per_s", "unit": "msg/s", "better": "higher", "servers": TLS_SERVERS,
        })
    n4, n1 = (200, 100) if quick else (3000, 1000)
    out.append({
        "name": f"wss churn {n4:,} cycles",
        "kind": "wss-echo", "tls": True,
        "args": ["--mode", "churn", "--conns", "4", "--count", str(n4), "--warmup", "0.2" if quick else "0.5"],
        "metric": "cycles_per_s", "unit": "cycles/s", "better": "higher", "servers": TLS_SERVERS, "timeout": 180,
    })
    for tls in (True, False):
        out.append({
            "name": f"{'wss' if tls else 'ws'} handshake 1c",
            "kind": "wss-echo" if tls else "echo", "tls": tls,
            "args": ["--mode", "churn", "--conns", "1", "--count", str(n1), "--warmup", "0.2" if quick else "0.5"],
            "metric": "cycles_per_s", "unit": "cycles/s", "better": "higher", "servers": TLS_SERVERS,
            "timeout": 180,
        })
    return out


def remote_call_scenarios(quick, dur, warm):
    """rn.remote_call through a chain of mesh nodes, and its floor.

    Not loadgen: a Lua caller (bench/peers/rn_rpc_bench.lua, on the client
    core) keeps `conc` calls in flight, one per coroutine, 16 B string
    payload, each call bench.echo(payload) on node bench-target. "N hops"
    counts the relays between caller and target: 0 = the caller links to the
    target directly (1 hop in rn.routes() terms), 1 = caller - relay1 -
    target, 3 = caller - relay1 - relay2 - relay3 - target. Every node is
    `bin/relaynet rn_rpc_bench.lua node` on the server core; each dials the
    node before it, the caller dials the first. The floor ("rpc echo") is the
    same Lua caller with one rn.ws_connect client per coroutine doing
    send + receive round trips against examples/echo.lua.
    """
    out = []
    for conc in ((16,) if quick else (16, 1)):
        args = ["--conc", str(conc), "--size", "16", "--duration", str(dur), "--warmup", str(warm),
                "--timeout", "5"]
        out.append({
            "name": f"rpc echo {conc}c 16 B",
            "kind": "rpc-echo", "caller": "echo-caller", "relays": None, "conc": conc, "args": args,
            "metric": "msgs_per_s", "unit": "calls/s", "better": "higher", "servers": ["relaynet"],
            "timeout": 60,
        })
        for relays in (0, 1, 3):
            out.append({
                "name": f"remote_call {relays} hop{'' if relays == 1 else 's'} {conc}c",
                "kind": "remote_call", "caller": "caller", "relays": relays, "conc": conc, "args": args,
                "metric": "msgs_per_s", "unit": "calls/s", "better": "higher", "servers": ["relaynet"],
                "timeout": 90,
            })
    return out


def fmt_size(n):
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


# --------------------------------------------------------------------------
# running


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    if hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot(server_pid):
    """(server + loadgen CPU seconds so far, busy CPU seconds of the whole
    machine, wall time). server_pid may be a list (every node of a chain)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(v[:8]) - v[3] - v[4]) / CLK_TCK  # all but idle and iowait
    server = 0.0
    for pid in (server_pid if isinstance(server_pid, (list, tuple)) else [server_pid]):
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            server += (int(st[11]) + int(st[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)  # loadgen, once it has exited
    return server + ch.ru_utime + ch.ru_stime, busy, time.time()


def wait_port(port, proc, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Runner:
    def __init__(self, args):
        self.args = args
        # below the ephemeral range (32768-60999), where client sockets live
        self.port = 10000 + (os.getpid() % 500) * 40
        self.tmp = tempfile.mkdtemp(prefix="relaynet-bench-")
        os.makedirs(RESULTS, exist_ok=True)
        self.log = open(os.path.join(RESULTS, "servers.log"), "w")

    def next_port(self):
        self.port += 1
        if self.port >= 32000:
            self.port = 10000
        return self.port

    def run_one(self, scen, server):
        if scen.get("caller"):
            return self.run_rpc(scen, server)
        if scen["kind"] == "fanout" and server == "relaynet-mesh3":
            return self.run_fanout(scen, server)
        spec = SERVERS[server]
        port = self.next_port()
        cmd = spec[scen["kind"]](port, self.tmp)
        env = spec["env"]() if "env" in spec else dict(os.environ)
        self.log.write(f"--- {scen['name']}: {server}: {' '.join(cmd)}\n")
        self.log.flush()
        proc = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, cwd=ROOT, env=env,
                                stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        try:
            if not wait_port(port, proc):
                return {"error": f"{server} did not start (see {self.log.name})"}
            time.sleep(0.2)
            scheme = "wss" if scen.get("tls") else "ws"
            lg = ["taskset", "-c", CLIENT_CPU, LOADGEN, "--url", f"{scheme}://127.0.0.1:{port}/",
                  "--server-pid", str(proc.pid)] + (["--ca", TLS_CA] if scen.get("tls") else []) + scen["args"]
            c0, s0, w0 = cpu_snapshot(proc.pid)
            try:
                r = subprocess.run(lg, cwd=ROOT, capture_output=True, text=True,
                                   timeout=scen.get("timeout", 60))
            except subprocess.TimeoutExpired:
                return {"error": "loadgen timed out"}
            c1, s1, w1 = cpu_snapshot(proc.pid)
            line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
            try:
                res = json.loads(line)
            except ValueError:
                return {"error": f"loadgen failed ({r.returncode}): {r.stderr.strip()[-300:]}"}
            if r.stderr.strip():
                res["stderr"] = r.stderr.strip()[-300:]
            # CPU used by everything but this server and this loadgen while
            # loadgen ran (kernel threads and softirq included), in % of one core
            res["other_cpu_pct"] = round(100.0 * ((s1 - s0) - (c1 - c0)) / max(1e-9, w1 - w0), 1)
            return res
        finally:
            proc.kill()
            proc.wait()

    def run_rpc(self, scen, server):
        """A remote_call scenario (or its echo floor): starts the node chain
        (or the echo server) pinned to the server core, runs the Lua caller
        pinned to the client core, kills every node afterwards."""
        spec = SERVERS[server]
        env = spec["env"]() if "env" in spec else dict(os.environ)
        if scen["caller"] == "echo-caller":
            port = self.next_port()
            nodes = [("echo", port, spec[scen["kind"]](port, self.tmp))]
            target = ["--url", f"ws://127.0.0.1:{port}/"]
        else:
            # caller -> relay1 -> ... -> relayN -> target; each node dials the
            # one before it, the caller dials the first
            ids = [f"bench-relay{i}" for i in range(1, scen["relays"] + 1)] + ["bench-target"]
            ports = [self.next_port() for _ in ids]
            nodes = []
            for i, (nid, port) in enumerate(zip(ids, ports)):
                peer = f"ws://127.0.0.1:{ports[i - 1]}/ws/p2p" if i > 0 else None
                nodes.append((nid.replace("bench-", ""), port, spec[scen["kind"]](port, self.tmp, nid, peer)))
            target = ["--peer", f"ws://127.0.0.1:{ports[0]}/ws/p2p", "--target", "bench-target",
                      "--hops", str(len(ids))]
        procs = []
        try:
            for role, port, cmd in nodes:
                self.log.write(f"--- {scen['name']}: {server}: {role}: {' '.join(cmd)}\n")
                self.log.flush()
                proc = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, cwd=ROOT, env=env,
                                        stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
                procs.append(proc)
                if not wait_port(port, proc):
                    return {"error": f"{server} {role} did not start (see {self.log.name})"}
            time.sleep(0.2)
            pids = [p.pid for p in procs]
            cmd = (["taskset", "-c", CLIENT_CPU, "lua5.4", RPC_SCRIPT, scen["caller"]] + target + scen["args"]
                   + ["--server-pids", ",".join(map(str, pids)), "--roles", ",".join(n[0] for n in nodes),
                      "--clk-tck", str(CLK_TCK)])
            self.log.write(f"--- {scen['name']}: caller: {' '.join(cmd)}\n")
            self.log.flush()
            c0, s0, w0 = cpu_snapshot(pids)
            try:
                r = subprocess.run(cmd, cwd=ROOT, env=rn_env(), capture_output=True, text=True,
                                   timeout=scen.get("timeout", 60))
            except subprocess.TimeoutExpired:
                return {"error": "the Lua caller timed out"}
            c1, s1, w1 = cpu_snapshot(pids)
            line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
            try:
                res = json.loads(line)
            except ValueError:
                return {"error": f"the Lua caller failed ({r.returncode}): {r.stderr.strip()[-300:]}"}
            if r.stderr.strip():
                res["stderr"] = r.stderr.strip()[-300:]
            if r.returncode != 0 and "error" not in res:
                res["error"] = f"the Lua caller exited with {r.returncode}"
            dead = [n[0] for n, p in zip(nodes, procs) if p.poll() is not None]
            if dead and "error" not in res:
                res["error"] = f"node(s) exited during the run: {', '.join(dead)} (see {self.log.name})"
            res["other_cpu_pct"] = round(100.0 * ((s1 - s0) - (c1 - c0)) / max(1e-9, w1 - w0), 1)
            return res
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()

    def run_fanout(self, scen, server):
        """The mesh fan-out: three nodes in a line on the server core,
        loadgen's receivers spread over them, its sender on the first."""
        spec = SERVERS[server]
        env = spec["env"]()
        env["RN_FANOUT_EXPECT"] = str(len(FANOUT_NODES))
        ports = [self.next_port() for _ in FANOUT_NODES]
        procs = []
        try:
            for i, (nid, port) in enumerate(zip(FANOUT_NODES, ports)):
                peer = f"ws://127.0.0.1:{ports[i - 1]}/ws/p2p" if i > 0 else None
                cmd = spec["fanout"](port, self.tmp, nid, peer)
                self.log.write(f"--- {scen['name']}: {server}: {nid}: {' '.join(cmd)}\n")
                self.log.flush()
                proc = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, cwd=ROOT, env=env,
                                        stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
                procs.append(proc)
                if not wait_port(port, proc):
                    return {"error": f"{server} {nid} did not start (see {self.log.name})"}
            time.sleep(0.5)
            pids = [p.pid for p in procs]
            urls = ",".join(f"ws://127.0.0.1:{p}/" for p in ports)
            lg = (["taskset", "-c", CLIENT_CPU, LOADGEN, "--url", f"ws://127.0.0.1:{ports[0]}/",
                   "--recv-urls", urls, "--recv-size", str(scen["frame_size"]),
                   "--server-pids", ",".join(map(str, pids))] + scen["args"])
            c0, s0, w0 = cpu_snapshot(pids)
            try:
                r = subprocess.run(lg, cwd=ROOT, capture_output=True, text=True, timeout=scen.get("timeout", 60))
            except subprocess.TimeoutExpired:
                return {"error": "loadgen timed out"}
            c1, s1, w1 = cpu_snapshot(pids)
            line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
            try:
                res = json.loads(line)
            except ValueError:
                return {"error": f"loadgen failed ({r.returncode}): {r.stderr.strip()[-300:]}"}
            if r.stderr.strip():
                res["stderr"] = r.stderr.strip()[-300:]
            dead = [n for n, p in zip(FANOUT_NODES, procs) if p.poll() is not None]
            if dead and "error" not in res:
                res["error"] = f"node(s) exited during the run: {', '.join(dead)} (see {self.log.name})"
            res["other_cpu_pct"] = round(100.0 * ((s1 - s0) - (c1 - c0)) / max(1e-9, w1 - w0), 1)
            return res
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()

    def close(self):
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def git_describe():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "csrc", "lua"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes in csrc/ or lua/" if dirty else "")
    except OSError:
        return "?"


def other_load():
    """Share of both cores used by other processes during one second."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t0, i0 = snap()
    time.sleep(1.0)
    t1, i1 = snap()
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))


def median_run(runs, metric):
    ok = [r for r in runs if "error" not in r and metric in r]
    if not ok:
        return None
    ok.sort(key=lambda r: r[metric])
    return ok[(len(ok) - 1) // 2]  # the median run (the lower one of two)


def spread_pct(runs, metric):
    vals = [r[metric] for r in runs or [] if "error" not in r and r.get(metric) is not None]
    if len(vals) < 2:
        return None
    med = statistics.median(vals)
    return 100.0 * (max(vals) - min(vals)) / med if med else None


def fmt_num(v):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def per_msg_us(r, scen):
    """Server CPU microseconds per message (or delivery / cycle)."""
    n = {"msgs_per_s": "msgs", "deliveries_per_s": "deliveries", "cycles_per_s": "cycles"}.get(scen["metric"])
    if not n or not r.get(n) or r.get("server_cpu_s") is None:
        return None
    return r["server_cpu_s"] / r[n] * 1e6


def rpc_table(scenarios, med, allruns):
    """The remote_call scenarios against their floor (the plain Lua echo
    round trip at the same concurrency), one row per scenario."""
    lines = ["### remote_call vs plain echo round trip (relaynet only)", ""]
    lines.append("One Lua caller process (client core) keeps N calls in flight, one per coroutine, 16 B string "
                 "payload. rpc echo = the floor: the same caller with one `rn.ws_connect` client per coroutine, "
                 "send + `receive()` round trips against `examples/echo.lua`. remote_call H hops = "
                 "`rn.remote_call(target, \"bench\", \"echo\", {payload})` with H relay nodes between caller "
                 "and target (0 hops: linked directly, route hops 1 in /routes). Every node runs on the server "
                 "core, so throughput falls with each relay partly because one core serves them all: server "
                 "CPU us/call (summed over all nodes, and per node) is the cost that does not depend on that. "
                 "/ floor: calls/s over the floor's at the same concurrency; / previous: over the previous hop "
                 "count; per added hop: (/ previous) ^ (1 / relays added).")
    lines.append("")
    lines.append("| scenario | calls/s | spread % | / floor | / previous | per added hop | p50 us | p99 us | "
                 "max us | server CPU % | server CPU us/call | per node us/call (relays..., target) | "
                 "client CPU % | errors |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    checks = []  # per concurrency: (what, ratio)
    for conc in sorted({s["conc"] for s in scenarios}, reverse=True):
        checks.append((conc, []))
        group = [s for s in scenarios if s["conc"] == conc]
        floor = next((s for s in group if s["relays"] is None), None)
        fr = (med.get(floor["name"]) or {}).get("relaynet") if floor else None
        fv = fr.get("msgs_per_s") if fr else None
        prev = None  # (relays, calls/s) of the previous remote_call row
        for scen in group:
            if not med.get(scen["name"]):
                continue  # not run (--servers without relaynet)
            r = med[scen["name"]].get("relaynet")
            if r is None:
                runs = allruns.get(scen["name"], {}).get("relaynet") or []
                why = next((x.get("error") for x in runs if x.get("error")), "no run")
                lines.append(f"| {scen['name']} | failed: {why} |" + " |" * 12)
                prev = None
                continue
            v = r.get("msgs_per_s")
            name = scen["name"] + (" (disturbed)" if r.get("disturbed") else "")
            vs_prev = per_hop = "-"
            if scen["relays"] is not None and prev and prev[1]:
                vs_prev = ratio(v, prev[1])
                added = scen["relays"] - prev[0]
                if added > 0 and v:
                    per_hop = f"{(v / prev[1]) ** (1.0 / added):.2f}x"
                    checks[-1][1].append((f"per added hop to {scen['relays']}", (v / prev[1]) ** (1.0 / added)))
            if scen["relays"] == 0 and fv:
                checks[-1][1].append(("0 hops / floor", v / fv))
            if scen["relays"] is not None:
                prev = (scen["relays"], v)
            secs = r.get("seconds") or 1
            per_node = []
            for n in r.get("nodes") or []:
                us = n["cpu_s"] / r["msgs"] * 1e6 if r.get("msgs") and n.get("cpu_s") is not None else None
                per_node.append(fmt_num(us))
            errs = str(r.get("errors", "?"))
            if r.get("errors"):
                errs += " (" + ", ".join(f"{k} {n}" for k, n in sorted((r.get("error_codes") or {}).items())) + ")"
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                name, fmt_num(v), fmt_num(spread_pct(allruns.get(scen["name"], {}).get("relaynet"), "msgs_per_s")),
                ratio(v, fv) if scen["relays"] is not None else "1.00x", vs_prev, per_hop,
                fmt_num(r.get("lat_p50_us")), fmt_num(r.get("lat_p99_us")), fmt_num(r.get("lat_max_us")),
                fmt_num(r.get("server_cpu_pct")), fmt_num(per_msg_us(r, scen)), " / ".join(per_node) or "-",
                fmt_num(100 * r.get("client_cpu_s", 0) / secs), errs))
    lines.append("")
    # Issue 12: a relay's CPU per forwarded message (a call and its response
    # are two messages, so half its CPU per call) against the target's CPU
    # per served call, from the per-node figures of each chain.
    relay_lines = []
    for scen in scenarios:
        r = (med.get(scen["name"]) or {}).get("relaynet")
        if not r or not scen.get("relays") or not r.get("msgs") or not r.get("nodes"):
            continue
        us = [n["cpu_s"] / r["msgs"] * 1e6 if n.get("cpu_s") is not None else None for n in r["nodes"]]
        if None in us or len(us) < 2:
            continue
        relay = sum(us[:-1]) / len(us[:-1])
        relay_lines.append(f"{scen['name']}: relay {relay:.1f} us/call = {relay / 2:.1f} us per forwarded "
                           f"message, target {us[-1]:.1f} us/call, ratio {relay / 2 / us[-1]:.2f}x per message "
                           f"({relay / us[-1]:.2f}x per call)")
    if relay_lines:
        lines.append("Relay CPU per forwarded message (a call and its response: half the relay's us per call) "
                     "against the target's CPU per served call; target <= 0.30x. " + "; ".join(relay_lines) + ".")
        lines.append("")
    checks = [(c, x) for c, x in checks if x]
    if checks:
        lines.append("Targets: remote_call 0 hops >= 0.50x the floor's calls/s; each added hop keeps >= 0.75x "
                     "of the throughput (costs <= 25%). Measured: " + "; ".join(
                         f"{c} in flight: " + ", ".join(f"{n} {x:.2f}x" for n, x in xs) for c, xs in checks) + ".")
        lines.append("")
    return lines


def tls_table(scenarios, med):
    """relaynet over wss against the lws C floor over TLS (and node ws over
    https), from the same run; the handshake rows; and the target line."""
    echo = [s for s in scenarios if s.get("tls") and s["metric"] == "msgs_per_s" and med.get(s["name"])]
    churn = [s for s in scenarios if s["name"].endswith("handshake 1c") or
             (s.get("tls") and s["metric"] == "cycles_per_s")]
    churn = [s for s in churn if med.get(s["name"])]
    if not echo and not churn:
        return []
    lines = ["### TLS: relaynet over wss against the lws TLS floor (same run)", ""]
    if echo:
        lines.append("msg/s and server CPU us per message. wss / ws: relaynet's wss msg/s over its plain ws msg/s "
                     "in the same run (when the plain row ran).")
        lines.append("")
        lines.append("| scenario | relaynet msg/s | lws msg/s | relaynet / lws | node-ws msg/s | relaynet / node-ws | "
                     "relaynet us/msg | lws us/msg | CPU relaynet / lws | relaynet wss / ws |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        ratios = []
        for scen in echo:
            m = med[scen["name"]]
            rn, lws, node = m.get("relaynet"), m.get("lws"), m.get("node-ws")
            rv = rn.get("msgs_per_s") if rn else None
            lv = lws.get("msgs_per_s") if lws else None
            nv = node.get("msgs_per_s") if node else None
            ru = per_msg_us(rn, scen) if rn else None
            lu = per_msg_us(lws, scen) if lws else None
            plain = (med.get(scen["name"][len("wss "):]) or {}).get("relaynet")
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                scen["name"], fmt_num(rv), fmt_num(lv), ratio(rv, lv), fmt_num(nv), ratio(rv, nv),
                fmt_num(ru), fmt_num(lu), ratio(ru, lu), ratio(rv, plain.get("msgs_per_s") if plain else None)))
            if rv and lv:
                ratios.append((scen["name"][len("wss echo "):], rv / lv))
        lines.append("")
        if ratios:
            met = [n for n, x in ratios if x >= 0.9]
            lines.append("Target: relaynet >= 0.90x the lws TLS floor's msg/s. Measured: " +
                         ", ".join(f"{n} {x:.2f}x" for n, x in ratios) +
                         f"; met in {len(met)} of {len(ratios)} rows.")
            lines.append("")
    if churn:
        lines.append("Opening a connection: connect() to the 101 response read (TCP, then the TLS handshake, "
                     "then the HTTP upgrade), one slot at a time for the latency (handshake 1c), four slots for "
                     "the server CPU per handshake (churn); each cycle also closes the connection.")
        lines.append("")
        lines.append("| scenario | server | cycles/s | open p50 us | open p99 us | server CPU us/cycle | "
                     "client CPU us/cycle |")
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        for scen in churn:
            for name, r in med[scen["name"]].items():
                if r is None:
                    lines.append(f"| {scen['name']} | {name} | failed | | | | |")
                    continue
                ccpu = (r["client_cpu_s"] / r["cycles"] * 1e6 if r.get("cycles") and r.get("client_cpu_s") is not None
                        else None)
                lines.append("| {} | {} | {} | {} | {} | {} | {} |".format(
                    scen["name"], name, fmt_num(r.get("cycles_per_s")), fmt_num(r.get("open_p50_us")),
                    fmt_num(r.get("open_p99_us")), fmt_num(per_msg_us(r, scen)), fmt_num(ccpu)))
        lines.append("")
    return lines


def build_tables(scenarios, med, allruns):
    rpc = [s for s in scenarios if s.get("caller") and med.get(s["name"])]  # remote_call: a table of their own
    scenarios = [s for s in scenarios if not s.get("caller")]
    if not scenarios:
        return "\n".join(rpc_table(rpc, med, allruns))
    lines = []
    lines.append("### Summary: relaynet / peer, same run (median of the runs)")
    lines.append("")
    lines.append("For msg/s, deliveries/s and cycles/s above 1.00x means relaynet is faster; "
                 "for bytes/conn below 1.00x means relaynet uses less memory. "
                 "Spread % (in the tables per scenario) is (max - min) / median of the runs.")
    lines.append("")
    hdr = "| scenario | metric | relaynet | " + " | ".join(f"vs {p}" for p in PEERS) + " |"
    lines.append(hdr)
    lines.append("|" + "---|" * (3 + len(PEERS)))
    for scen in scenarios:
        m = med.get(scen["name"], {})
        rn = m.get("relaynet")
        rv = rn.get(scen["metric"]) if rn else None
        cells = []
        for p in PEERS:
            pr = m.get(p)
            cells.append(ratio(rv, pr.get(scen["metric"]) if pr else None))
        lines.append(f"| {scen['name']} | {scen['unit']} | {fmt_num(rv)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Server CPU time per message (per delivery, per cycle), relaynet / peer: below 1.00x means "
                 "relaynet spends less CPU. This one does not depend on which side saturates first.")
    lines.append("")
    lines.append("| scenario | relaynet us | " + " | ".join(f"vs {p}" for p in PEERS) + " |")
    lines.append("|" + "---|" * (2 + len(PEERS)))
    for scen in scenarios:
        if scen["metric"] == "bytes_per_conn":
            continue
        m = med.get(scen["name"], {})
        rn = m.get("relaynet")
        rv = per_msg_us(rn, scen) if rn else None
        cells = [ratio(rv, per_msg_us(m[p], scen) if m.get(p) else None) for p in PEERS]
        lines.append(f"| {scen['name']} | {fmt_num(rv)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += tls_table(scenarios, med)
    for scen in scenarios:
        m = med.get(scen["name"], {})
        if not m:
            continue
        lines.append(f"### {scen['name']}")
        lines.append("")
        metric = scen["metric"]
        if metric in ("msgs_per_s", "deliveries_per_s"):
            lat = "lat" if metric == "msgs_per_s" else "fanout"
            lines.append(f"| server | {scen['unit']} | spread % | this / relaynet | p50 us | p99 us | server CPU % | "
                         "server CPU us/msg | client CPU % | peak RSS MiB |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for name, r in m.items():
                if r is None:
                    lines.append(f"| {name} | failed | | | | | | | | |")
                    continue
                if r.get("disturbed"):
                    name += " (disturbed)"
                secs = r.get("seconds") or 1
                sp = spread_pct(allruns.get(scen["name"], {}).get(name.split(" ")[0]), metric)
                lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    name, fmt_num(r.get(metric)), fmt_num(sp),
                    ratio(r.get(metric), (m.get("relaynet") or {}).get(metric)),
                    fmt_num(r.get(f"{lat}_p50_us")), fmt_num(r.get(f"{lat}_p99_us")),
                    fmt_num(r.get("server_cpu_pct")), fmt_num(per_msg_us(r, scen)),
                    fmt_num(100 * r.get("client_cpu_s", 0) / secs),
                    fmt_num((r.get("server_hwm_kb") or 0) / 1024)))
        elif metric == "bytes_per_conn":
            lines.append("| server | bytes/conn | RSS before MiB | RSS after MiB | connect s |")
            lines.append("|---|---:|---:|---:|---:|")
            for name, r in m.items():
                if r is None:
                    lines.append(f"| {name} | failed | | | |")
                    continue
                lines.append("| {} | {} | {} | {} | {} |".format(
                    name, fmt_num(r.get("bytes_per_conn")), fmt_num(r.get("rss_before_kb", 0) / 1024),
                    fmt_num(r.get("rss_after_kb", 0) / 1024), fmt_num(r.get("connect_s"))))
        elif metric == "cycles_per_s":
            lines.append("| server | cycles/s | spread % | server CPU % | server CPU us/cycle | open p50 us | "
                         "open p99 us | client CPU us/cycle | RSS before KiB | RSS after KiB | RSS max KiB | errors |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for name, r in m.items():
                if r is None:
                    lines.append(f"| {name} | failed | | | | | | | | | | |")
                    continue
                ccpu = (r["client_cpu_s"] / r["cycles"] * 1e6 if r.get("cycles") and r.get("client_cpu_s") is not None
                        else None)
                lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    name, fmt_num(r.get("cycles_per_s")),
                    fmt_num(spread_pct(allruns.get(scen["name"], {}).get(name), "cycles_per_s")),
                    fmt_num(r.get("server_cpu_pct")),
                    fmt_num(per_msg_us(r, scen)), fmt_num(r.get("open_p50_us")), fmt_num(r.get("open_p99_us")),
                    fmt_num(ccpu), r.get("rss_before_kb"), r.get("rss_after_kb"),
                    r.get("rss_max_kb"), r.get("errors")))
        lines.append("")
    if rpc:
        lines += rpc_table(rpc, med, allruns)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short smoke run of every scenario")
    ap.add_argument("--reps", type=int, default=None, help="runs per measurement (default 3, quick 1)")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per echo/broadcast run")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds per echo/broadcast run")
    ap.add_argument("--only", default="", help="comma-separated scenario name prefixes")
    ap.add_argument("--servers", default="", help="comma-separated server names")
    ap.add_argument("--json", default=None,
                    help="where to save (default bench/results/latest.json; quick.json with --quick)")
    ap.add_argument("--tables-from", metavar="JSON", help="only print the tables of a saved run")
    args = ap.parse_args()
    if args.tables_from:
        with open(args.tables_from) as f:
            saved = json.load(f)
        print(build_tables(saved["scenarios"], saved["median"], saved["runs"]))
        return

    if not args.json:
        args.json = os.path.join(RESULTS, "quick.json" if args.quick else "latest.json")
    reps = args.reps or (1 if args.quick else 3)
    dur = args.duration or (0.3 if args.quick else 3.0)
    warm = args.warmup if args.warmup is not None else (0.1 if args.quick else 1.0)

    for tool in ("taskset", "lua5.4", "node", "nginx", LOADGEN):
        if not shutil.which(tool) and not os.path.exists(tool):
            sys.exit(f"bench: {tool} is missing: run bench/setup.sh first")
    if not os.path.exists(os.path.join(ROOT, "build", "relaynet", "core.so")):
        sys.exit("bench: relaynet is not built: run `make build` first")
    if not all(os.path.exists(f) for f in (TLS_CA, TLS_CERT, TLS_KEY)):
        sys.exit(f"bench: the TLS files in {TLS_DIR} are missing: run bench/setup.sh first")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs at least 2 cores (server and client pinned apart)")

    nofile = raise_nofile()
    scenarios = (echo_scenarios(args.quick, dur, warm) + broadcast_scenarios(args.quick, dur, warm)
                 + fanout_scenarios(args.quick, dur, warm)
                 + idle_scenarios(args.quick, dur, warm) + churn_scenarios(args.quick, dur, warm)
                 + tls_scenarios(args.quick, dur, warm)
                 + remote_call_scenarios(args.quick, dur, warm))  # HOOK: remote_call (0/1/3 hops)
    if args.only:
        pref = [p.strip() for p in args.only.split(",") if p.strip()]
        scenarios = [s for s in scenarios if any(s["name"].startswith(p) for p in pref)]
    want = [s.strip() for s in args.servers.split(",") if s.strip()]
    for w in want:
        if w not in SERVERS:
            sys.exit(f"bench: unknown server {w} (known: {', '.join(SERVERS)})")

    busy = other_load()
    machine = {
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "cores": os.cpu_count(),
        "kernel": os.uname().release,
        "nofile": nofile,
        "other_load_pct_before": round(busy, 1),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "relaynet": git_describe(),
    }
    print(f"bench: relaynet {machine['relaynet']}; {machine['cores']} cores ({machine['cpu']}), server on core {SERVER_CPU}, "
          f"client on core {CLIENT_CPU}, {reps} run(s) each, RLIMIT_NOFILE {nofile}")
    if busy > 10:
        print(f"bench: WARNING: {busy:.0f}% of the CPU was busy with other work before the run; "
              "numbers will be noisy")
    runner = Runner(args)
    allruns = {}
    med = {}
    t0 = time.time()
    try:
        for scen in scenarios:
            names = scen["servers"] or [s for s in SERVERS if scen["kind"] in SERVERS[s]]
            names = [n for n in names if scen["kind"] in SERVERS[n] and (not want or n in want)]
            if not names:
                continue  # none of --servers offers this scenario
            runs = {n: [] for n in names}
            for rep in range(reps):
                order = names[rep % len(names):] + names[:rep % len(names)]
                for n in order:
                    for attempt in range(MAX_RETRIES + 1):
                        r = runner.run_one(scen, n)
                        other = r.get("other_cpu_pct", 0)
                        if other <= OTHER_LIMIT or attempt == MAX_RETRIES:
                            break
                        print(f"  [{time.time() - t0:6.0f}s] {scen['name']:<22} run {rep + 1}/{reps} "
                              f"{n:<14} disturbed ({other:.0f}% of a core used by other processes): again",
                              flush=True)
                        time.sleep(2)
                    if r.get("other_cpu_pct", 0) > OTHER_LIMIT:
                        r["disturbed"] = True
                    runs[n].append(r)
                    status = r.get("error") or f"{fmt_num(r.get(scen['metric']))} {scen['unit']}"
                    if r.get("errors") and not r.get("error"):
                        status += f" ({r['errors']} errors: {str(r.get('first_error') or '?')[:80]})"
                    print(f"  [{time.time() - t0:6.0f}s] {scen['name']:<22} run {rep + 1}/{reps} "
                          f"{n:<14} {status}", flush=True)
            allruns[scen["name"]] = runs
            med[scen["name"]] = {n: median_run(runs[n], scen["metric"]) for n in names}
    finally:
        runner.close()
    machine["seconds"] = round(time.time() - t0, 1)
    machine["other_load_pct_after"] = round(other_load(), 1)
    table = build_tables(scenarios, med, allruns)
    print()
    print(table)
    print(f"\nbench: {machine['seconds']:.0f} s; other load before/after: "
          f"{machine['other_load_pct_before']}% / {machine['other_load_pct_after']}%")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine, "quick": args.quick, "reps": reps, "duration": dur, "warmup": warm,
                   "scenarios": scenarios and [{k: v for k, v in s.items()} for s in scenarios],
                   "median": med, "runs": allruns}, f, indent=1, default=str)
    with open(os.path.splitext(args.json)[0] + ".md", "w") as f:
        f.write(f"relaynet {machine['relaynet']}. "
                f"Machine: {machine['cores']} cores ({machine['cpu']}), kernel {machine['kernel']}; "
                f"{reps} run(s) per cell, median shown; started {machine['started']}; "
                f"other load before/after {machine['other_load_pct_before']}% / "
                f"{machine['other_load_pct_after']}%.\n\n")
        f.write(table + "\n")
    print(f"bench: results in {args.json} and {os.path.splitext(args.json)[0]}.md")


if __name__ == "__main__":
    main()

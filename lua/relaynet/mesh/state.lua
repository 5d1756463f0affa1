-- relaynet.mesh.state: the mesh's shared state, in one table.
--
-- Every mesh file (ident, wire, routes, serve, calls, link, transport,
-- init) requires this module and reads and writes the fields below through
-- it; none keeps a copy of a per-run table in a local of its own, because
-- reset() replaces those tables. What persists across runs (config, node
-- identity, exposed servers, configured peers, the message handler, the
-- counters of other layers) is never replaced.

local S = {}

--- Tunables (seconds unless noted). Documented in README.md. The mesh's
--- public table exports this very table as `config`; callers change fields
--- in place.
S.config = {
  ping_interval = 5,      -- mesh ping on every link
  link_timeout = 15,      -- a link silent this long is dropped
  hello_timeout = 5,      -- an accepted link must say hello within this
  advert_interval = 10,   -- a route_request is answered at most this often per link
  advert_delay = 0.02,    -- triggered adverts are batched this long
  max_ttl = 16,           -- hops; also the longest accepted path
  default_timeout = 10,   -- remote_call timeout when none is given
  startup_route_wait = 5, -- a script's call with no route waits this long at most while links come up
  max_timeout = 300,      -- the longest timeout a call may carry
  backoff_min = 0.2,      -- reconnect backoff start
  backoff_max = 5,        -- reconnect backoff cap
  connect_timeout = 5,    -- dialing a peer
  max_pending_links = 64, -- accepted links still waiting for hello
  max_routes = 4096,      -- entries accepted in one advert
  max_servers = 256,      -- server names per node in an advert
  -- Routing and link bounds (counts unless noted; README "limits"). Past a
  -- bound what is over is dropped and counted in mesh_status().stats; an
  -- advert refused whole or a link refused gets a close code (PROTOCOL.md).
  max_links = 128,              -- links up or waiting for hello; an inbound link past it: close 4503
  max_pending_per_address = 16, -- inbound links from one address waiting for hello; past it: close 4429
  max_advert_bytes = 524288,    -- bytes of one advert message; more: refused whole, close 4413
  max_routes_per_link = 4096,   -- destinations held from one neighbour; new ones past it dropped
  max_destinations = 8192,      -- distinct destinations held; new ones past it dropped
  max_route_entries = 16384,    -- routes held over all neighbours; new ones past it dropped
  max_registry_entries = 16384, -- server names held over all routes; names past it dropped
  advert_min_interval = 0.25,   -- seconds; at most one change advert per link this often
  dedup_window = 300,     -- at most this many seconds a served call id is remembered
  max_dedup = 65536,      -- served call ids remembered at most (oldest half forgotten first)
  -- Calls in flight (counts, not seconds). Past each bound the call is
  -- refused at once with EBUSY; nothing waits for a free slot.
  max_calls = 2048,            -- remote calls this node waits for at once (all callers)
  max_served = 4096,           -- served calls that suspended and have not answered yet
  max_forwards = 8192,         -- relayed calls awaiting their response, whole node
  max_forwards_per_link = 2048, -- relayed calls awaiting their response, per incoming link
  forward_slack = 2,           -- a forward is forgotten this long after the call's own deadline
  -- Load-balanced calls (mesh/balance.lua; README "Load-balanced calls").
  max_failovers = 2,           -- call_any: other nodes tried after the first one failed (0: none)
  failover_route_wait = 2,     -- seconds call_any waits after ELINKLOST for the node's route to go
  balance_rtt_slack = 0.005,   -- seconds; RTT estimates this close to the lowest count as equal
  -- An accepted link may receive this many times its server's ws_msg_rate
  -- and ws_byte_rate (and bursts): one link carries many callers' calls.
  link_rate_scale = 64,
  -- Authentication (protocol version 2, mesh/auth.lua): a node with a key
  -- signs its own route entry with an expiry this many seconds ahead, and
  -- signs it again (with the next seq) when half of that time is left.
  entry_ttl = 600,
  -- Pub/sub (mesh/pubsub.lua; README "Pub/sub"). Counts unless noted.
  max_topic_length = 256,       -- bytes of a topic or pattern; longer: EINVAL
  max_subscriptions = 1024,     -- subscriptions on this node (Lua and WebSocket); past it: ELIMIT
  max_subscriptions_per_connection = 100, -- server:subscribe patterns or JSON-RPC subscriptions per WebSocket: ELIMIT
  max_patterns = 256,           -- distinct patterns one node advertises; a receiver keeps this many per route
  max_interest_entries = 16384, -- patterns held over all routes; past it dropped (topics_dropped)
  max_publish_bytes = 65536,    -- bytes of one published message once encoded; more: EINVAL
  -- JSON-RPC publish (relaynet.rpc_pubsub): a token bucket per WebSocket
  -- connection, and per peer address for HTTP; past it: ELIMIT (-32010).
  -- Either one 0: no bound.
  max_publish_rate = 1000,      -- publishes per second
  max_publish_burst = 2000,     -- publishes at once after a quiet spell
}

-- Persistent state (survives reset()) ---------------------------------------------

S.exposed = {}          -- server name -> methods table
S.peer_urls = {}        -- url -> peer record { url, active, running, link }
S.enabled = true        -- false once M.disable() was called
S.message_handler = nil -- fn(from, payload) for route_message payloads
S.my_seq = 1            -- this node's advert sequence number (bumped by expose/unexpose)
S.started_at = os.time()
S.run_started = -math.huge -- sched.now() when rn.run last started (mesh.start)
S.counters = {}         -- status prefix -> counter table of a layer above (M.add_counters)
-- Credentials (mesh/auth.lua; nil: none, protocol version 1):
-- { priv, pub, pub_b64 (this node's Ed25519 key, or nil), trust (node id ->
-- public key, or nil), secret (the cluster secret, or nil) }.
S.auth = nil
S.access = nil          -- compiled access rules (mesh/auth.lua), nil: every caller may call everything
-- Pub/sub (mesh/pubsub.lua): my_topics is the sorted list of the distinct
-- patterns this node's subscriptions use (advertised in its route entry).
S.my_topics = {}

-- Per-run state (replaced by reset()) ---------------------------------------------
--
-- Links (mesh/link.lua): links[peer id] = the Link that is up to that
-- peer; pending_links[link] = true (waiting for hello), counted by n_pending
-- and, for inbound ones, pending_by_addr[addr].
--
-- Routing (mesh/routes.lua): rib[neighbour][dest] = { path, seq, servers }
-- is what that neighbour advertised; cands[dest] the set of neighbours that
-- offer dest; best[dest] = { next, path, seq, servers } the selected route;
-- dirty the destinations whose selection changed since the last advert.
-- rib_n[neighbour], n_dests, n_entries and n_names count routes per
-- neighbour, destinations, routes and server names (for the bounds).
--
-- Calls (mesh/calls.lua): calls[call id] = { co, wid, first_hop, node, owner }
-- for remote calls this node waits for; forwards[call_key] = { from, link,
-- to, deadline, caller, id } for relayed calls awaiting their response;
-- n_calls and n_forwards count them.
--
-- Served calls (mesh/serve.lua): n_served counts the suspended ones;
-- dedup_new / dedup_old are the two generations of served call ids
-- (call_key -> expiry), with their counts and the birth time of the new one.
--
-- gc_due (not per-run: reset() leaves it) is set when much state was
-- dropped at once; the health loop then collects garbage and trims memory.

local function zero_stats()
  S.stats = {
    bad_messages = 0, dropped_loops = 0, unknown_replies = 0, hello_rejected = 0,
    ttl_expired = 0, duplicate_calls = 0, no_route = 0, calls_sent = 0, calls_served = 0,
    forwarded = 0, links_up = 0, links_down = 0, links_refused = 0, dedup_evicted = 0,
    adverts_sent = 0, adverts_refused = 0, routes_dropped = 0, servers_dropped = 0,
    route_requests_limited = 0, links_refused_address = 0,
    calls_refused = 0, served_refused = 0, forwards_refused = 0, forwards_expired = 0,
    calls_canceled = 0, unencodable = 0,
    -- authentication (protocol version 2; PROTOCOL.md, "Authentication")
    auth_ok = 0, auth_malformed = 0, auth_bad_signature = 0, auth_bad_secret = 0, auth_untrusted = 0,
    auth_early = 0, auth_required = 0, auth_impostor = 0, auth_refused_by_peer = 0, hello_timeouts = 0,
    spoofed_messages = 0, calls_denied = 0,
    entries_verified = 0, entries_unsigned = 0, entries_bad_signature = 0, entries_expired = 0,
    entries_untrusted = 0,
    -- pub/sub (mesh/pubsub.lua; README "Pub/sub")
    topics_dropped = 0, pubsub_published = 0, pubsub_sent = 0, pubsub_relayed = 0, pubsub_received = 0,
    pubsub_delivered = 0, pubsub_no_interest = 0, pubsub_out_of_order = 0, pubsub_no_route = 0,
    pubsub_refused = 0,
  }
end

--- Sets every per-run field to its empty value and zeroes the stats.
--- `t` is the birth time of the first dedup generation.
function S.reset(t)
  S.links, S.pending_links, S.n_pending, S.pending_by_addr = {}, {}, 0, {}
  S.rib, S.best, S.cands, S.rib_n, S.dirty = {}, {}, {}, {}, {}
  S.n_dests, S.n_entries, S.n_names = 0, 0, 0
  S.n_topics = 0          -- patterns held in rib routes (mesh/pubsub.lua's bound)
  S.pub_last, S.n_pub_last = {}, 0 -- publisher id -> { run, seq } last delivered here
  S.last_flush, S.advert_timer = -math.huge, nil
  S.calls, S.forwards = {}, {}
  S.n_calls, S.n_forwards, S.n_served = 0, 0, 0
  S.dedup_new, S.dedup_old, S.dedup_new_n, S.dedup_old_n, S.dedup_born = {}, {}, 0, 0, t
  S.health_started = false
  S.entries_checked = -math.huge -- when the health loop last dropped expired route entries
  zero_stats()
end

S.reset(0)
S.gc_due = false

return S

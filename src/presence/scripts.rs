//! The presence Lua scripts (SPEC §6). Each touches only the keys of one user, all
//! in one Redis Cluster slot: the design document's `presence:{u}` hash, and the
//! gateway's own `xcord:{presence:u}:sessions` / `:servers`, whose hash tag
//! `{presence:u}` puts them in the slot of `presence:u` itself. So each script runs
//! atomically on a standalone Redis and on a cluster (no CROSSSLOT), and that
//! atomicity is what makes "online at the first session anywhere, offline after the
//! last" and "exactly one node claims a dead node's user" hold without locks. The
//! writes to other slots (the alive key, the online sets, the sweep index) follow
//! each script as plain commands. Those may be lost (Redis went away between the
//! two), so the remembered servers of an offline user are kept until `FORGET`
//! runs after the online sets were cleaned, and every later script hands back what
//! is left over: the cleaning is repeated until it is done.
//!
//! KEYS of every script: `presence:u`, `xcord:{presence:u}:sessions` (node →
//! count), `xcord:{presence:u}:servers` (the servers the user was added to online).

/// Set this node's count for a user; decide online/offline from the sum over nodes.
/// ARGV: node, count, now, then (when count > 0) the user's servers now (claims ∪
/// `user:{u}:servers`), which replace the remembered ones.
/// Returns `{1, gone}` went online, `{0, gone}` still online (`gone`: servers the
/// user left), `{2, servers}` went offline, `{3, servers}` was offline already
/// (`servers`: online sets still to clean, usually none).
pub const SYNC: &str = r#"
local pk, sk, srv = KEYS[1], KEYS[2], KEYS[3]
local node, count, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if count > 0 then redis.call('HSET', sk, node, count) else redis.call('HDEL', sk, node) end
local total = 0
local s = redis.call('HGETALL', sk)
for i = 2, #s, 2 do total = total + tonumber(s[i]) end
local st = redis.call('HGET', pk, 'status')
local online = st ~= false and st ~= 'offline'
if total > 0 then
  local gone = {}
  if count > 0 then
    local keep = {}
    for i = 4, #ARGV do keep[ARGV[i]] = true end
    for _, sid in ipairs(redis.call('SMEMBERS', srv)) do
      if not keep[sid] then table.insert(gone, sid) end
    end
    redis.call('DEL', srv)
    for i = 4, #ARGV do redis.call('SADD', srv, ARGV[i]) end
  end
  if not online then
    redis.call('HSET', pk, 'status', 'online', 'last_seen', now)
    return {1, gone}
  end
  return {0, gone}
end
local servers = redis.call('SMEMBERS', srv)
if online then
  redis.call('HSET', pk, 'status', 'offline', 'last_seen', now)
  return {2, servers}
end
return {3, servers}
"#;

/// Claim a user whose alive key lapsed: offline unless a live node still holds a
/// session. Fields of nodes not in the live list are dropped. Exactly one caller
/// gets `{2, servers}`; `{0}`: a live node holds it (re-arm, check again later);
/// `{3, servers}`: already offline (`servers` left to clean). ARGV: now, then the
/// live node ids.
pub const CLAIM: &str = r#"
local pk, sk, srv = KEYS[1], KEYS[2], KEYS[3]
local live = {}
for i = 2, #ARGV do live[ARGV[i]] = true end
local total = 0
local s = redis.call('HGETALL', sk)
for i = 1, #s, 2 do
  if live[s[i]] then total = total + tonumber(s[i + 1]) else redis.call('HDEL', sk, s[i]) end
end
if total > 0 then return {0} end
local servers = redis.call('SMEMBERS', srv)
local st = redis.call('HGET', pk, 'status')
if st == false or st == 'offline' then return {3, servers} end
redis.call('HSET', pk, 'status', 'offline', 'last_seen', ARGV[1])
return {2, servers}
"#;

/// After an offline user's online sets were cleaned: forget its servers, unless it
/// came back online meanwhile (then they are its servers again).
pub const FORGET: &str = r#"
if redis.call('HGET', KEYS[1], 'status') == 'offline' then redis.call('DEL', KEYS[3]) end
return 0
"#;

/// SET_PRESENCE: ARGV status, now, then the user's servers now. `{0}`: the status
/// did not change (nothing is published); `{1, gone}`: changed, `gone` the servers
/// the user left.
pub const SET: &str = r#"
local pk, sk, srv = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', pk, 'status') == ARGV[1] then return {0} end
redis.call('HSET', pk, 'status', ARGV[1], 'last_seen', ARGV[2])
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local gone = {}
for _, sid in ipairs(redis.call('SMEMBERS', srv)) do
  if not keep[sid] then table.insert(gone, sid) end
end
redis.call('DEL', srv)
for i = 3, #ARGV do redis.call('SADD', srv, ARGV[i]) end
return {1, gone}
"#;

//! The presence Lua scripts (SPEC §6). Each runs atomically in Redis, which is what
//! makes "online at the first session anywhere, offline after the last" and
//! "exactly one node claims a dead node's user" hold without locks.

/// Set this node's count for a user and decide online/offline over all live nodes.
/// KEYS: none (single-instance Redis). ARGV: user, node, count, now, ttl, claim servers…
/// Returns {1, servers} when the user went online, {2, servers} offline, {0} otherwise.
pub const SYNC: &str = r#"
local u, node, count, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local pk, sk, srv = 'presence:'..u, 'presence:'..u..':sessions', 'presence:'..u..':servers'
if count > 0 then redis.call('HSET', sk, node, count) else redis.call('HDEL', sk, node) end
local total = 0
local s = redis.call('HGETALL', sk)
for i = 1, #s, 2 do
  if redis.call('EXISTS', 'xcord:node:'..s[i]) == 1 or s[i] == node then
    total = total + tonumber(s[i + 1])
  else
    redis.call('HDEL', sk, s[i])
  end
end
local st = redis.call('HGET', pk, 'status')
if total > 0 then
  redis.call('SETEX', pk..':alive', ttl, 1)
  redis.call('ZADD', 'xcord:presence:expiry', tonumber(now) + ttl, u)
  for i = 6, #ARGV do redis.call('SADD', srv, ARGV[i]) end
  redis.call('SUNIONSTORE', srv, srv, 'user:'..u..':servers')
  local servers = redis.call('SMEMBERS', srv)
  for _, sid in ipairs(servers) do redis.call('SADD', 'server:'..sid..':online', u) end
  if st == false or st == 'offline' then
    redis.call('HSET', pk, 'status', 'online', 'last_seen', now)
    return {1, servers}
  end
  return {0}
end
if st ~= false and st ~= 'offline' then
  redis.call('HSET', pk, 'status', 'offline', 'last_seen', now)
  redis.call('DEL', pk..':alive')
  redis.call('ZREM', 'xcord:presence:expiry', u)
  local servers = redis.call('SMEMBERS', srv)
  for _, sid in ipairs(servers) do redis.call('SREM', 'server:'..sid..':online', u) end
  return {2, servers}
end
redis.call('ZREM', 'xcord:presence:expiry', u)
return {0}
"#;

/// Claim a user whose alive key lapsed: offline unless a live node still holds a
/// session. Exactly one caller gets {2, servers}; the others get {0}.
/// ARGV: user, now.
pub const CLAIM: &str = r#"
local u, now = ARGV[1], ARGV[2]
local pk, sk = 'presence:'..u, 'presence:'..u..':sessions'
if redis.call('EXISTS', pk..':alive') == 1 then return {0} end
local live = 0
local s = redis.call('HGETALL', sk)
for i = 1, #s, 2 do
  if redis.call('EXISTS', 'xcord:node:'..s[i]) == 1 then live = live + tonumber(s[i + 1]) else redis.call('HDEL', sk, s[i]) end
end
if live > 0 then return {0} end
redis.call('ZREM', 'xcord:presence:expiry', u)
local st = redis.call('HGET', pk, 'status')
if st == false or st == 'offline' then return {0} end
redis.call('HSET', pk, 'status', 'offline', 'last_seen', now)
local servers = redis.call('SMEMBERS', pk..':servers')
for _, sid in ipairs(servers) do redis.call('SREM', 'server:'..sid..':online', u) end
return {2, servers}
"#;

/// SET_PRESENCE: ARGV user, status, now. Returns the user's servers.
pub const SET: &str = r#"
local u = ARGV[1]
redis.call('HSET', 'presence:'..u, 'status', ARGV[2], 'last_seen', ARGV[3])
return redis.call('SMEMBERS', 'presence:'..u..':servers')
"#;

-- Newer-only writes of entities' values of one feature view, in Feast's Redis layout (FeastRedisSink).
-- KEYS     the entities' Redis keys (one per entity; on Redis Cluster one per call, as keys of one call
--          must share a hash slot)
-- ARGV[1]  "_ts:<view>"   ARGV[2]  key TTL in seconds (0: none)   ARGV[3]  n, the number of features
-- ARGV[4 .. 3+n]  the features' hash fields
-- then per entity, in KEYS order: the serialized google.protobuf.Timestamp, its seconds, its nanos, and
-- the n serialized feast.types.Value
-- Returns how many entities were written; an entity whose stored value is as new or newer is skipped
-- (what Feast's own writer skips too). Atomic, so no writer (this job, a replay, Feast's
-- write_to_online_store, a backfill) can slip in between a comparison and its write.

local function varint(s, i)
  local value, scale = 0, 1
  while true do
    local b = string.byte(s, i)
    i = i + 1
    value = value + (b % 128) * scale
    if b < 128 then return value, i end
    scale = scale * 128
  end
end

-- seconds (field 1) and nanos (field 2) of a serialized Timestamp; a missing field is 0
local function decode(ts)
  local seconds, nanos, i = 0, 0, 1
  while i <= #ts do
    local tag = string.byte(ts, i)
    local v
    v, i = varint(ts, i + 1)
    if tag == 8 then seconds = v elseif tag == 16 then nanos = v end
  end
  return seconds, nanos
end

local ts_field, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local written = 0
local a = 4 + n
for k = 1, #KEYS do
  local key = KEYS[k]
  local new_s, new_n = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local newer = true
  local stored = redis.call('HGET', key, ts_field)
  if stored then
    local s, ns = decode(stored)
    newer = not ((s > 0 or ns > 0) and (new_s < s or (new_s == s and new_n <= ns)))
  end
  if newer then
    local hash = {ts_field, ARGV[a]}
    for f = 1, n do
      hash[2 * f + 1] = ARGV[3 + f]
      hash[2 * f + 2] = ARGV[a + 2 + f]
    end
    redis.call('HSET', key, unpack(hash))
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    written = written + 1
  end
  a = a + 3 + n
end
return written

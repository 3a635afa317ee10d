-- Newer-only write of one entity's values of one feature view, in Feast's Redis layout (FeastRedisSink).
-- KEYS[1]  the entity's Redis key
-- ARGV[1]  "_ts:<view>"          ARGV[2]  the new serialized google.protobuf.Timestamp
-- ARGV[3]  its seconds           ARGV[4]  its nanos
-- ARGV[5]  key TTL in seconds (0: none)
-- ARGV[6…] hash field, serialized feast.types.Value, …
-- Returns 1 if written, 0 if the stored value is as new or newer (what Feast's own writer skips too).
-- Atomic, so no writer (this job, a replay, Feast's write_to_online_store, a backfill) can slip in between
-- the comparison and the write.

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

local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored then
  local s, n = decode(stored)
  local new_s, new_n = tonumber(ARGV[3]), tonumber(ARGV[4])
  if (s > 0 or n > 0) and (new_s < s or (new_s == s and new_n <= n)) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 6))
local ttl = tonumber(ARGV[5])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1

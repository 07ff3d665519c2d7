//! The Lua scripts of the redis backend. Each runs atomically on the one node owning its
//! keys' slot, which is what makes a line's last write win without a client-side lock.

/// Merges new entries into a generation's buckets and updates its metadata.
///
/// KEYS: meta, then one bucket key per bucket. ARGV: now (ms), the batch's highest line
/// number (decimal), the channel to publish on ("" for none), the message; then per bucket
/// its number of new entries, their encoding (sorted by offset), and their earliest and
/// latest time (ms): the bucket's header spans its lines' times and its last write. A bucket all of whose
/// 128 lines are new is replaced without reading the old value (only its 17-byte header, for
/// the line count); a partial one is merged entry by entry. Returns the lines that were not
/// stored before, or the error `NOGEN` when the generation is gone (retention dropped it).
pub(super) const WRITE: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'live' then return redis.error_reply('NOGEN generation is gone') end
local now = tonumber(ARGV[1])
local function parse(s, from, into)
  local p, n = from, #s
  while p <= n do
    local off = string.byte(s, p)
    local q, v, mult = p + 1, 0, 1
    while true do
      local b = string.byte(s, q)
      q = q + 1
      if b < 128 then v = v + b * mult break end
      v = v + (b - 128) * mult
      mult = mult * 128
    end
    if off >= 128 then
      -- the line's time follows its length (bucket.rs): skipped, kept in the entry's bytes
      off = off - 128
      while string.byte(s, q) >= 128 do q = q + 1 end
      q = q + 1
    end
    local e = q + math.floor(v / 2)
    into[off] = string.sub(s, p, e - 1)
    p = e
  end
end
local added, dbytes = 0, 0
for i = 2, #KEYS do
  local key = KEYS[i]
  local base = 4 * i - 4
  local count = tonumber(ARGV[base + 1])
  local blob = ARGV[base + 2]
  local tmin, tmax = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local head = redis.call('GETRANGE', key, 0, 16)
  local first, last, oldcount, oldlen = math.min(now, tmin), math.max(now, tmax), 0, 0
  if #head == 17 then
    oldcount = string.byte(head, 1)
    first = math.min(struct.unpack('>d', head, 2), tmin)
    last = math.max(struct.unpack('>d', head, 10), last)
    oldlen = redis.call('STRLEN', key)
  end
  local body, newcount = blob, count
  if count < 128 and oldcount > 0 then
    local t = {}
    parse(redis.call('GET', key), 18, t)
    parse(blob, 1, t)
    local parts, c = {}, 0
    for off = 0, 127 do
      local e = t[off]
      if e then c = c + 1 parts[c] = e end
    end
    body, newcount = table.concat(parts), c
  end
  local value = string.char(newcount) .. struct.pack('>dd', first, last) .. body
  redis.call('SET', key, value)
  added = added + newcount - oldcount
  dbytes = dbytes + #value - oldlen
end
redis.call('HINCRBY', KEYS[1], 'lines', added)
redis.call('HINCRBY', KEYS[1], 'bytes', dbytes)
local max = redis.call('HGET', KEYS[1], 'max_line')
local new = ARGV[2]
if (not max) or max == '' or #new > #max or (#new == #max and new > max) then max = new end
redis.call('HSET', KEYS[1], 'max_line', max, 'last', ARGV[1])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return added
"#;

/// Indexes a new generation under its host unless another process indexed one of the same
/// name first. KEYS: gens, files. ARGV: name, id, file. Returns the id in force.
pub(super) const CREATE: &str = r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[2], 0, ARGV[3])
  return ARGV[2]
end
return redis.call('HGET', KEYS[1], ARGV[1])
"#;

/// Marks a generation as being dropped, unless it was written at or after the cutoff
/// (ARGV[1]; "" drops regardless, for the memory budget). KEYS: meta. Returns
/// `{'keep', last}`, `{'drop', host, file, name, max_line}`, or nil when it is already gone.
/// From the mark on, writes to it fail with NOGEN and the writer starts a new generation, so
/// a write racing the drop is never acknowledged into data about to be deleted.
pub(super) const MARK_DROP: &str = r#"
local m = redis.call('HMGET', KEYS[1], 'state', 'last', 'host', 'file', 'name', 'max_line')
if not m[1] then return nil end
if m[1] == 'live' then
  if ARGV[1] ~= '' and tonumber(m[2]) >= tonumber(ARGV[1]) then return {'keep', m[2]} end
  redis.call('HSET', KEYS[1], 'state', 'dropping')
end
return {'drop', m[3], m[4], m[5], m[6] or ''}
"#;

/// Removes a dropped generation from its host's index. KEYS: gens, files. ARGV: name, id,
/// file. Returns how many files the host still has.
pub(super) const UNINDEX: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[3]) end
return redis.call('ZCARD', KEYS[2])
"#;

/// Trims a live generation's oldest buckets older than the retention (issue 32.6).
///
/// KEYS: meta, then consecutive bucket keys from ARGV[2]. ARGV: the cutoff (ms), the first
/// bucket's number. Walks the buckets in order and deletes each whose header's last time is
/// before the cutoff (a missing one is passed over), stopping at the first younger one;
/// moves the meta's `trim` (the first bucket not trimmed) and takes the removed lines and
/// bytes off its counts. Atomic on the generation's slot: a write either lands before (its
/// bucket is younger and stops the walk) or after (it starts a bucket anew). Returns
/// `{lines removed, next bucket, 1 if it stopped at a younger bucket}`, or nil when the
/// generation is not live.
pub(super) const TRIM: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'live' then return nil end
local cutoff = tonumber(ARGV[1])
local b = tonumber(ARGV[2])
local lines, bytes, stopped = 0, 0, 0
for i = 2, #KEYS do
  local head = redis.call('GETRANGE', KEYS[i], 0, 16)
  if #head == 17 then
    local last = struct.unpack('>d', head, 10)
    if last >= cutoff then stopped = 1 break end
    lines = lines + string.byte(head, 1)
    bytes = bytes + redis.call('STRLEN', KEYS[i])
    redis.call('DEL', KEYS[i])
  end
  b = b + 1
end
redis.call('HSET', KEYS[1], 'trim', b)
-- (0 - n, not -n: Lua writes -0 as "-0", which HINCRBY refuses)
redis.call('HINCRBY', KEYS[1], 'lines', 0 - lines)
redis.call('HINCRBY', KEYS[1], 'bytes', 0 - bytes)
return {lines, b, stopped}
"#;

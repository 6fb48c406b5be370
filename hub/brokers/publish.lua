-- ssehub publish script: number events in the channel's Redis stream and
-- announce them to every hub node, atomically.
--
-- Every hub node and every producer that wants replayable ids calls this
-- script, so that the id a client sees live is the id it can resume from.
--
--   EVALSHA <sha1 of this file> 1 <prefix>:<channel>:log <maxlen> [ttl=<ms>] [idem=<key>] [idemttl=<ms>] \
--       [<max event bytes>] <kind> <data> <event> <retry>  [<kind> <data> <event> <retry> ...]
--
-- KEYS[1]  the channel's stream, "<prefix>:<channel>:log"; the pub/sub
--          channel is the same name without ":log". On a Redis Cluster the
--          stream is "<prefix>:{<channel>}:log" and the announcement goes out
--          with SPUBLISH on "<prefix>:{<channel>}", its shard channel.
-- ARGV[1]  approximate MAXLEN of the stream (HUB_HISTORY_SIZE).
-- then, optional and in this order:
--   ttl=<ms>  how long history is kept, in milliseconds (HUB_HISTORY_TTL * 1000),
--             0 to 31536000000; told apart by its "ttl=" (never a number nor a
--             kind). Without it: 3600000 (an hour), so that no caller, old ones
--             included, leaves a stream behind forever. ttl=0: no age limit (the
--             stream is kept, PERSISTed, and trimmed by MAXLEN only).
--   idem=<key>  an idempotency key (1-255 of the visible ASCII characters,
--             ! to ~): a call with the key of an earlier call on the same
--             channel, within idemttl, stores nothing and returns that call's
--             ids; with other events than that call's, it is refused. The
--             record is the key "<prefix>:<channel>:idem#<key>" (it shares the
--             stream's hash slot when the stream key has a hash tag).
--   idemttl=<ms>  how long that record is kept, 1 to 604800000 (HUB_IDEMPOTENCY_SECONDS
--             * 1000); without it 300000 (five minutes).
--   (ttl=, idem= and idemttl= come in any order, each at most once.)
--   the largest data of an event in bytes (HUB_MAX_EVENT_BYTES); told apart
--             by the number of values that follow (not a multiple of four).
-- then four values per event, at most 1000 events:
--   kind   "json" (data is JSON text) or "text" (data is plain text)
--   data   the event's data: UTF-8; JSON text, or non-empty text
--   event  the SSE event type, or "" for none
--   retry  the SSE retry in milliseconds (0 to 86400000), or "" for none
--
-- With a TTL, each call also drops the entries older than it (XTRIM MINID
-- <now - ttl>, exact, "now" being Redis's TIME) and sets the stream to expire
-- that long after this publish (PEXPIRE): an idle channel's stream goes by
-- itself. The TTL is the caller's: give every producer the hub's.
--
-- Returns the new stream ids, in order. Everything is checked before the
-- first XADD: a script that fails half way would leave half a batch.
-- What it refuses, the HTTP API refuses too: every hub node reads these
-- entries back and would have to skip them.

local MAX_EVENTS = 1000
local MAX_RETRY = 86400000
local DEFAULT_TTL = 3600000
local MAX_TTL = 31536000000 -- 365 days, as HUB_HISTORY_TTL
local DEFAULT_IDEM_TTL = 300000
local MAX_IDEM_TTL = 604800000 -- 7 days, as HUB_IDEMPOTENCY_SECONDS

-- Strict UTF-8 as Python decodes it: no overlong forms, no surrogates, nothing
-- past U+10FFFF. ASCII runs are skipped by one string.find each.
local function valid_utf8(s)
  local i, n = 1, #s
  while true do
    i = string.find(s, "[\128-\255]", i)
    if i == nil then
      return true
    end
    local c = string.byte(s, i)
    local need, lo, hi = 0, 128, 191
    if c >= 194 and c <= 223 then
      need = 1
    elseif c == 224 then
      need, lo = 2, 160
    elseif (c >= 225 and c <= 236) or c == 238 or c == 239 then
      need = 2
    elseif c == 237 then
      need, hi = 2, 159
    elseif c == 240 then
      need, lo = 3, 144
    elseif c >= 241 and c <= 243 then
      need = 3
    elseif c == 244 then
      need, hi = 3, 143
    else
      return false
    end
    if i + need > n then
      return false
    end
    local b = string.byte(s, i + 1)
    if b < lo or b > hi then
      return false
    end
    for j = i + 2, i + need do
      b = string.byte(s, j)
      if b < 128 or b > 191 then
        return false
      end
    end
    i = i + need + 1
  end
end

local stream = KEYS[1]
if #KEYS ~= 1 or #stream < 5 or string.sub(stream, -4) ~= ":log" then
  return redis.error_reply("ERR ssehub: KEYS[1] must be <prefix>:<channel>:log")
end
local maxlen = tonumber(ARGV[1])
if maxlen == nil or maxlen < 1 or maxlen ~= math.floor(maxlen) then
  return redis.error_reply("ERR ssehub: ARGV[1] must be the stream's MAXLEN, a positive integer")
end
local first = 2
local ttl = DEFAULT_TTL
local idem = nil
local idem_ttl = DEFAULT_IDEM_TTL
local seen = {}
while true do
  local option = ARGV[first]
  local name = option and string.match(option, "^(%l+)=")
  if name ~= "ttl" and name ~= "idem" and name ~= "idemttl" then
    break
  end
  if seen[name] then
    return redis.error_reply("ERR ssehub: " .. name .. "= given twice")
  end
  seen[name] = true
  local value = string.sub(option, #name + 2)
  if name == "ttl" then
    if #value > 11 or not string.find(value, "^%d+$") or tonumber(value) > MAX_TTL then
      return redis.error_reply("ERR ssehub: ttl=<ms> is 0 (no age limit) to " .. MAX_TTL .. " milliseconds")
    end
    ttl = tonumber(value)
  elseif name == "idem" then
    if #value < 1 or #value > 255 or not string.find(value, "^[!-~]+$") then
      return redis.error_reply("ERR ssehub: idem=<key> is 1-255 of the visible ASCII characters (! to ~)")
    end
    idem = value
  else
    if #value > 9 or not string.find(value, "^%d+$") or tonumber(value) < 1 or tonumber(value) > MAX_IDEM_TTL then
      return redis.error_reply("ERR ssehub: idemttl=<ms> is 1 to " .. MAX_IDEM_TTL .. " milliseconds")
    end
    idem_ttl = tonumber(value)
  end
  first = first + 1
end
local max_bytes = nil
if (#ARGV - first + 1) % 4 == 1 then
  max_bytes = tonumber(ARGV[first])
  if max_bytes == nil or max_bytes < 1 or max_bytes ~= math.floor(max_bytes) then
    return redis.error_reply("ERR ssehub: ARGV[" .. first .. "] must be the largest event data, a positive integer")
  end
  first = first + 1
end
local count = (#ARGV - first + 1) / 4
if count < 1 or count ~= math.floor(count) then
  return redis.error_reply("ERR ssehub: after MAXLEN, give kind, data, event, retry per event")
end
if count > MAX_EVENTS then
  return redis.error_reply("ERR ssehub: at most " .. MAX_EVENTS .. " events per call")
end

-- A call with the key of an earlier one: that call's ids, nothing stored again.
local record, fingerprint = nil, nil
if idem ~= nil then
  record = string.sub(stream, 1, -5) .. ":idem#" .. idem
  local parts = {}
  for at = first, #ARGV do
    parts[#parts + 1] = #ARGV[at] .. ":" .. ARGV[at]
  end
  fingerprint = table.concat(parts, ",")
  if redis.sha1hex then -- in every Redis since 3.2 (not in every test double)
    fingerprint = redis.sha1hex(fingerprint)
  end
  -- The record: the ids, a line break, the fingerprint of the events.
  local earlier = redis.call("GET", record)
  if earlier then
    local cut = string.find(earlier, "\n", 1, true)
    if cut == nil or string.sub(earlier, cut + 1) ~= fingerprint then
      return redis.error_reply("ERR ssehub: idempotency key reused with other events (within its time)")
    end
    local ids = {}
    for id in string.gmatch(string.sub(earlier, 1, cut - 1), "%S+") do
      ids[#ids + 1] = id
    end
    return ids
  end
end

for i = 0, count - 1 do
  local at = first + i * 4
  local kind, data, etype, retry = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  if kind ~= "json" and kind ~= "text" then
    return redis.error_reply("ERR ssehub: kind must be json or text")
  end
  if not valid_utf8(data) then
    return redis.error_reply("ERR ssehub: data must be valid UTF-8")
  end
  if max_bytes ~= nil and #data > max_bytes then
    return redis.error_reply("ERR ssehub: data is over the limit of " .. max_bytes .. " bytes")
  end
  if kind == "text" and data == "" then
    return redis.error_reply("ERR ssehub: a text event's data must not be empty")
  end
  if kind == "json" and not pcall(cjson.decode, data) then
    return redis.error_reply("ERR ssehub: a json event's data must be valid JSON")
  end
  -- An event type goes on its own line of the SSE frame: no line breaks.
  if etype ~= "" and (#etype > 64 or not string.find(etype, "^[A-Za-z0-9_%.:%-]+$")
      or string.sub(etype, 1, 4) == "hub.") then
    return redis.error_reply("ERR ssehub: event is 1-64 of A-Z a-z 0-9 _ . : - and not hub.*")
  end
  if retry ~= "" and (#retry > 9 or not string.find(retry, "^%d+$") or tonumber(retry) > MAX_RETRY) then
    return redis.error_reply("ERR ssehub: retry is milliseconds, 0 to " .. MAX_RETRY)
  end
end

local ids = {}
local parts = {}
for i = 0, count - 1 do
  local at = first + i * 4
  local kind, data, etype, retry = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  if retry ~= "" then
    retry = string.format("%d", tonumber(retry)) -- "0042" would not be JSON
  end
  local fields = { "k", kind, "d", data }
  if etype ~= "" then
    fields[#fields + 1] = "e"
    fields[#fields + 1] = etype
  end
  if retry ~= "" then
    fields[#fields + 1] = "r"
    fields[#fields + 1] = retry
  end
  local id = redis.call("XADD", stream, "MAXLEN", "~", string.format("%d", maxlen), "*", unpack(fields))
  ids[#ids + 1] = id
  local envelope = '{"id":"' .. id .. '","kind":"' .. kind .. '","data":' .. cjson.encode(data)
  if etype ~= "" then
    envelope = envelope .. ',"event":"' .. etype .. '"'
  end
  if retry ~= "" then
    envelope = envelope .. ',"retry":' .. retry
  end
  parts[#parts + 1] = envelope .. "}"
end

if ttl > 0 then
  -- Redis's clock, as the ids: an entry is older than the TTL by the server's time.
  local now = redis.call("TIME")
  local horizon = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - ttl
  if horizon > 0 then
    -- Exact: "~" would only drop whole nodes (100 entries), keeping older ones.
    -- Redis before 6.2 has no MINID: there the expiry alone bounds the age.
    redis.pcall("XTRIM", stream, "MINID", string.format("%d", horizon))
  end
  redis.call("PEXPIRE", stream, string.format("%d", ttl))
else
  redis.call("PERSIST", stream)
end

if record ~= nil then
  redis.call("SET", record, table.concat(ids, " ") .. "\n" .. fingerprint, "PX", string.format("%d", idem_ttl))
end
-- A key with a hash tag ("<prefix>:{<channel>}:log", a cluster's layout; names hold no
-- braces otherwise) is announced on its shard channel, in the same slot (Redis 7).
local announce = "PUBLISH"
if string.find(stream, "{", 1, true) then
  announce = "SPUBLISH"
end
redis.call(announce, string.sub(stream, 1, -5), '{"hub":1,"events":[' .. table.concat(parts, ",") .. "]}")
return ids

-- ssehub publish script: number events in the channel's Redis stream and
-- announce them to every hub node, atomically.
--
-- Every hub node and every producer that wants replayable ids calls this
-- script, so that the id a client sees live is the id it can resume from.
--
--   EVALSHA <sha1 of this file> 1 <prefix>:<channel>:log <maxlen> \
--       <kind> <data> <event> <retry>  [<kind> <data> <event> <retry> ...]
--
-- KEYS[1]  the channel's stream, "<prefix>:<channel>:log"; the pub/sub
--          channel is the same name without ":log".
-- ARGV[1]  approximate MAXLEN of the stream (HUB_HISTORY_SIZE).
-- then four values per event:
--   kind   "json" (data is JSON text) or "text" (data is plain text)
--   data   the event's data
--   event  the SSE event type, or "" for none
--   retry  the SSE retry in milliseconds, or "" for none
--
-- Returns the new stream ids, in order. Everything is checked before the
-- first XADD: a script that fails half way would leave half a batch.

local stream = KEYS[1]
if #KEYS ~= 1 or #stream < 5 or string.sub(stream, -4) ~= ":log" then
  return redis.error_reply("ERR ssehub: KEYS[1] must be <prefix>:<channel>:log")
end
local maxlen = tonumber(ARGV[1])
if maxlen == nil or maxlen < 1 or maxlen ~= math.floor(maxlen) then
  return redis.error_reply("ERR ssehub: ARGV[1] must be the stream's MAXLEN, a positive integer")
end
local count = (#ARGV - 1) / 4
if count < 1 or count ~= math.floor(count) then
  return redis.error_reply("ERR ssehub: after MAXLEN, give kind, data, event, retry per event")
end

for i = 0, count - 1 do
  local at = 2 + i * 4
  local kind, etype, retry = ARGV[at], ARGV[at + 2], ARGV[at + 3]
  if kind ~= "json" and kind ~= "text" then
    return redis.error_reply("ERR ssehub: kind must be json or text")
  end
  -- An event type goes on its own line of the SSE frame: no line breaks.
  if etype ~= "" and (#etype > 64 or not string.find(etype, "^[%w_%.:%-]+$")
      or string.sub(etype, 1, 4) == "hub.") then
    return redis.error_reply("ERR ssehub: event is 1-64 of A-Z a-z 0-9 _ . : - and not hub.*")
  end
  if retry ~= "" and (#retry > 8 or not string.find(retry, "^%d+$")) then
    return redis.error_reply("ERR ssehub: retry is milliseconds, at most 8 digits")
  end
end

local ids = {}
local parts = {}
for i = 0, count - 1 do
  local at = 2 + i * 4
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

redis.call("PUBLISH", string.sub(stream, 1, -5), '{"hub":1,"events":[' .. table.concat(parts, ",") .. "]}")
return ids

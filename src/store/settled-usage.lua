--[[
settled-usage.lua: what billing may report for a period, per endpoint: the counter and the reservations
still pending, read together.

Why it is one script: a Check adds a unit to the counter and an entry to the pending set in one step, and a
refund removes one of each; reading the two in separate commands could see one change without the other
and report a unit that is then refunded. Read-only.

KEYS[1]         usage:<tenant>:<YYYY-MM>
KEYS[2 .. 1+m]  usage_pending:<tenant>:<endpoint>:<YYYY-MM>, one per field below, same order

ARGV[1]         horizon, epoch ms: pending entries scored after it are still pending; older ones are settled
ARGV[2 .. 1+m]  hash fields, `op:<endpoint>`

Reply: { 0 } when the hash does not exist; else { 1, used_1, pending_1, ..., used_m, pending_m }
]]

if redis.call('EXISTS', KEYS[1]) == 0 then return { 0 } end

local function count(raw)
  local n = tonumber(raw)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return 0 end
  n = math.floor(n)
  if n < 0 then return 0 end
  return n
end

local reply = { 1 }
for i = 2, #KEYS do
  reply[#reply + 1] = count(redis.call('HGET', KEYS[1], ARGV[i]))
  reply[#reply + 1] = redis.call('ZCOUNT', KEYS[i], '(' .. ARGV[1], '+inf')
end
return reply

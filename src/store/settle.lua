--[[
settle.lua: settles one reservation from its access-log entry.

Why it is atomic: the pending entry is removed and, only if this call removed it, its unit is given back,
in one script. Two copies of one log entry (Envoy retrying a stream, two replicas receiving it) race for
the ZREM; exactly one wins, so a failed request refunds exactly once. Billing reads "counter minus pending",
and both change together here, so a refund never changes the settled (billable) count: it removes a unit
that was never billable.

An entry older than the settlement window is settled by definition (billing may already have counted it),
so it is pruned and nothing is given back, whatever the log says. Threshold flags are not touched: an
alert that fired stays fired for the period. A missing hash (or field) stays missing; counters never go
below zero (an operator may have lowered them by hand meanwhile).

Time is the caller's clock (ARGV[4]), as in check-and-reserve.lua.

KEYS[1]  usage:<tenant>:<YYYY-MM>                         hash with `__total__` and `op:<endpoint>`
KEYS[2]  usage_pending:<tenant>:<endpoint>:<YYYY-MM>      sorted set: request id -> time of its Check

ARGV[1]  request id
ARGV[2]  1 when the upstream failed the request (5xx or no response), else 0
ARGV[3]  the endpoint's hash field, `op:<endpoint>`
ARGV[4]  now, epoch ms
ARGV[5]  settlement window, ms

Reply: 0 nothing pending under that id, 1 settled (kept), 2 refunded, 3 older than the window (kept)
]]

local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(score) <= tonumber(ARGV[4]) - tonumber(ARGV[5]) then return 3 end
if ARGV[2] ~= '1' then return 1 end

-- Same reading as check-and-reserve.lua: junk counts as 0, fractions round down, negatives are 0.
local function count(raw)
  local n = tonumber(raw)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return 0 end
  n = math.floor(n)
  if n < 0 then return 0 end
  return n
end

local function give_back(field)
  local raw = redis.call('HGET', KEYS[1], field)
  if not raw then return end
  redis.call('HSET', KEYS[1], field, math.max(0, count(raw) - 1))
end

give_back(ARGV[3])
give_back('__total__')
return 2

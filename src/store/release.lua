--[[
release.lua: give back units reserved on one endpoint (and on the total) of a period, e.g. when the
upstream failed the request that reserved them.

Why it is atomic: the read and the write of each field happen inside one script, so a concurrent
check-and-reserve cannot slip in between and have its unit overwritten. The floor at zero also holds
when an operator has lowered the counters by hand meanwhile.

Threshold flags are not touched on purpose: an alert that fired stays fired for the period, so usage
that climbs again after a release does not alert twice.

A missing hash (or field) is left missing: creating it here would leave a key without an expiry.

KEYS[1]  usage:<tenant>:<YYYY-MM>   hash with `__total__` and `op:<endpoint>`
ARGV[1]  the endpoint's hash field, `op:<endpoint>`
ARGV[2]  units to give back (> 0)

Reply: { endpoint used, total used } after the release (0 for a missing field).
]]

local units = tonumber(ARGV[2])

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
  if not raw then return 0 end
  local left = math.max(0, count(raw) - units)
  redis.call('HSET', KEYS[1], field, left)
  return left
end

return { give_back(ARGV[1]), give_back('__total__') }

--[[
restore-usage.lua: recreates a period's usage hash that Redis lost (flush, restart, failover), from the
counts the caller rebuilt (what was reported to Stripe), or opens a new period at zero.

Why it is atomic and conditional: several replicas may rebuild the same period at once, and Checks resume
as soon as the hash exists. Only the first restore writes; a later one must not overwrite units reserved
since. The pending sets of the restored endpoints are dropped in the same step: their reservations were
counted in the lost hash, not in the restored one, so a refund for them must not take a unit off the
rebuilt count.

KEYS[1]         usage:<tenant>:<YYYY-MM>
KEYS[2 .. 1+m]  usage_pending:<tenant>:<endpoint>:<YYYY-MM>, one per endpoint field below, same order

ARGV[1]         TTL, ms (period end + grace - now, at least 1)
ARGV[2]         `__total__`
ARGV[3 .. 2+m]  the endpoint counts, in the order of ARGV[3+m .. 2+2m] (a count of 0 writes no field)
ARGV[3+m ..]    the endpoint fields, `op:<endpoint>`

Reply: 1 restored, 0 the hash already existed (nothing changed)
]]

if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local m = #KEYS - 1
redis.call('HSET', KEYS[1], '__total__', ARGV[2])
for i = 1, m do
  -- A zero is left out, as in a period nobody used yet; its lost reservations are dropped all the same.
  if ARGV[2 + i] ~= '0' then redis.call('HSET', KEYS[1], ARGV[2 + m + i], ARGV[2 + i]) end
  redis.call('DEL', KEYS[1 + i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1

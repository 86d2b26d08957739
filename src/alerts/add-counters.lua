--[[
add-counters.lua: adds each delta to its violation counter and sets the counter's lifetime, for a chunk of
the counters one flush carries (src/alerts/violations.ts).

Why a script: a flush carries a counter per tenant denied since the last one, thousands under load. As an
INCRBY and a PEXPIRE each, that was two client commands per tenant every second on every replica; here it is
one call per chunk. The caller keeps chunks small, so no call holds Redis for long.

Standalone Redis only: the counters are different tenants', so on a Cluster they lie in different slots, and
there each goes in a pipeline of its own.

Why pcall: a script's writes are not undone when it fails part way, so one counter that cannot be added (a
key holding something else) must not fail the others, or they would be counted again on the next flush.

KEYS[1 .. n]    the counters, violations:<tenant>:<window start, epoch s>
ARGV[2i - 1]    KEYS[i]'s delta
ARGV[2i]        KEYS[i]'s lifetime, ms

Reply: the new total of each counter, in order; nil for a counter that could not be added (unchanged)
]]
local totals = {}
for i, key in ipairs(KEYS) do
  local total = redis.pcall('INCRBY', key, ARGV[2 * i - 1])
  if type(total) == 'number' then
    redis.call('PEXPIRE', key, ARGV[2 * i])
    totals[i] = total
  else
    totals[i] = false
  end
end
return totals

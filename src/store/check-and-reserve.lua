--[[
check-and-reserve.lua: the whole counter decision of one Check, in one script (one round trip).

Why it is atomic: Redis runs a script to completion with no other command in between, so reading a
counter and reserving a unit on it cannot be split by a concurrent Check from this or any other replica.
That is what makes "no tenant ever passes its quota, however many requests race" hold, and why each
threshold flag (SET NX inside the same script) fires exactly once. The reservation is recorded in the
pending set in the same step as the counter, so "counter minus pending" (what billing reads) never sees one
without the other. Every key is passed in KEYS, none is built here, so in Redis Cluster the script is
routed to the one slot that the `{tenant}` hash tag gives all of a tenant's keys.

Time is the caller's clock (ARGV[1]); the script never calls TIME, and every expiry is a TTL measured from
that clock, so a Redis server whose clock differs (or a test with a fixed clock) changes nothing.

KEYS[1]            read_rate:<tenant>                       sorted set: member per allowed read, score = time
KEYS[2]            read_rate:<tenant>:seq                   counter that keeps members unique
KEYS[3]            usage:<tenant>:<YYYY-MM>                 hash (present only when a quota is requested)
KEYS[4]            usage_pending:<tenant>:<endpoint>:<YYYY-MM>   sorted set: request id -> time (same)
KEYS[5 .. 4+n]     usage_threshold:<tenant>:<endpoint>:<YYYY-MM>:<p>    one per ARGV percent, same order
KEYS[5+n .. 4+2n]  usage_threshold:<tenant>:__total__:<YYYY-MM>:<p>     only when a total limit is given

ARGV[1]  now, epoch ms
ARGV[2]  read-rate limit, or -1 when no read-rate limit is requested
ARGV[3]  read-rate window, ms (> 0)
ARGV[4]  1 when a quota is requested, else 0
ARGV[5]  the endpoint's hash field, `op:<endpoint>`
ARGV[6]  endpoint limit
ARGV[7]  total limit, or -1 for none
ARGV[8]  expire-at, epoch ms: period end + grace (the hash and the flags live until then)
ARGV[9]  request id: the reservation's member in the pending set
ARGV[10] settlement window, ms (> 0): older pending entries count as settled and are pruned
ARGV[11] 1: report a missing usage hash instead of creating it; 0: create it
ARGV[12] n, the number of threshold percents
ARGV[13 .. 12+n]  the percents, integers, ascending

Reply, a flat array of integers (Lua ends an array at its first nil, so there are none):
  [1] read rate: 0 not requested (or not evaluated), 1 allowed, 2 denied
  [2] requests in the window (after recording this one: a read is recorded when neither the window nor
      the quota denied it)
  [3] oldest score in the window, or -1 when it is empty
  [4] quota: 0 not evaluated, 1 allowed, 2 denied by the endpoint limit, 3 denied by the total limit,
      4 the usage hash is missing and ARGV[11] asked to report it: nothing else was looked at or written
  [5] endpoint used   [6] total used
  [7] m, thresholds crossed, then m groups of 4: scope (0 endpoint, 1 total), percent, usage, limit
]]

local now = tonumber(ARGV[1])
local rrLimit = tonumber(ARGV[2])
local windowMs = tonumber(ARGV[3])

-- Before anything is recorded (not even the read): the caller rebuilds the hash and asks again, and that
-- second Check must not find a read or a reservation of its own already in place.
if ARGV[4] == '1' and ARGV[11] == '1' and redis.call('EXISTS', KEYS[3]) == 0 then
  return { 0, 0, -1, 4, 0, 0, 0 }
end

-- Operators edit the hash with redis-cli. A junk, fractional or negative value must not make every
-- Check of the tenant fail, so it reads as the nearest count enforcement can use (junk is 0).
local function count(raw)
  local n = tonumber(raw)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return 0 end
  n = math.floor(n)
  if n < 0 then return 0 end
  return n
end

-- Lua's tostring would print large numbers in exponent form; scores and TTLs must stay exact integers.
local function int(n)
  return string.format('%.0f', n)
end

local function oldestRead()
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if first[2] == nil then return -1 end
  return tonumber(first[2])
end

local rrStatus, rrCount, rrOldest = 0, 0, -1
if rrLimit >= 0 then
  -- An entry exactly windowMs old has left the window, so the cutoff is inclusive.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - windowMs))
  rrCount = redis.call('ZCARD', KEYS[1])
  -- A denied read reserves nothing: quota and thresholds are not even looked at.
  if rrCount >= rrLimit then
    return { 2, rrCount, rrCount > 0 and oldestRead() or -1, 0, 0, 0, 0 }
  end
  -- Admitted by the window; recorded below, once the quota has not refused it.
  rrStatus = 1
end

local qStatus, used, total = 0, 0, 0
local crossed = {}
if ARGV[4] == '1' then
  local field = ARGV[5]
  local endpointLimit = tonumber(ARGV[6])
  local totalLimit = tonumber(ARGV[7])
  local ttl = int(math.max(1, tonumber(ARGV[8]) - now))
  used = count(redis.call('HGET', KEYS[3], field))
  total = count(redis.call('HGET', KEYS[3], '__total__'))
  if used + 1 > endpointLimit then
    qStatus = 2
  elseif totalLimit >= 0 and total + 1 > totalLimit then
    qStatus = 3
  else
    used = used + 1
    total = total + 1
    -- HSET of the computed values rather than HINCRBY, which would fail on a junk value.
    redis.call('HSET', KEYS[3], field, used, '__total__', total)
    redis.call('PEXPIRE', KEYS[3], ttl)
    qStatus = 1

    -- Pending until its access-log entry settles it or it ages out of the settlement window. Entries
    -- older than the window are settled by definition, so they are pruned here, which keeps the set at
    -- about (metered requests per window). NX: a repeated request id keeps its first time.
    local settleWindow = tonumber(ARGV[10])
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', int(now - settleWindow))
    redis.call('ZADD', KEYS[4], 'NX', ARGV[1], ARGV[9])
    -- Everything in the set is younger than this reservation, so after twice the window it is all settled.
    redis.call('PEXPIRE', KEYS[4], int(2 * settleWindow))

    local n = tonumber(ARGV[12])
    local function check(keyIndex, scope, percent, usage, limit)
      -- Integer arithmetic: percent * limit never goes through a fraction like 0.7 * 10.
      if usage * 100 >= percent * limit then
        -- SET NX succeeds once per key, so a threshold fires once per tenant, endpoint and period,
        -- even when an operator's edit jumps past several at once.
        if redis.call('SET', KEYS[keyIndex], '1', 'NX', 'PX', ttl) then
          crossed[#crossed + 1] = scope
          crossed[#crossed + 1] = percent
          crossed[#crossed + 1] = usage
          crossed[#crossed + 1] = limit
        end
      end
    end
    for i = 1, n do
      check(4 + i, 0, tonumber(ARGV[12 + i]), used, endpointLimit)
    end
    if totalLimit >= 0 then
      for i = 1, n do
        check(4 + n + i, 1, tonumber(ARGV[12 + i]), total, totalLimit)
      end
    end
  end
end

-- A read is recorded only when nothing denied it: a read the quota refuses does not use up the window.
if rrStatus == 1 then
  if qStatus ~= 2 and qStatus ~= 3 then
    local seq = redis.call('INCR', KEYS[2])
    -- The time in the member keeps it unique even if an operator deletes only the :seq key.
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1] .. ':' .. seq)
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    rrCount = rrCount + 1
  end
  if rrCount > 0 then rrOldest = oldestRead() end
end

local reply = { rrStatus, rrCount, rrOldest, qStatus, used, total, #crossed / 4 }
for i = 1, #crossed do
  reply[#reply + 1] = crossed[i]
end
return reply

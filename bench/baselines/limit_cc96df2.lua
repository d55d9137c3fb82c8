-- The limiter script as shipped at cc96df2, kept only as the baseline of
-- bench/test_limiter.py::test_sliding_log_naming_*: its sliding_log members
-- (now_us .. ":" .. count) could collide; do not use it.
--[[
RateGuard limiter: every limit of one policy, evaluated atomically in one call.

KEYS[i]   the counter of limit i: rg:{<workspace>}:rl:<policy>:<scope value>:<window>
          (one hash tag per workspace, so a policy's keys share a Redis Cluster slot)
ARGV[1]   algorithm: "sw" (sliding window, weighted two-window counter) or "log" (sliding log)
ARGV[2]   cost of this request (normally 1)
ARGV[2+2i-1], ARGV[2+2i]   limit i: maximum count, window length in milliseconds

Time is the server's (TIME), never a proxy's clock. The request is admitted only if
every limit admits it; when any limit rejects, nothing is written (nothing consumed).

Returns {allowed (1/0), index of the deciding limit (1-based), remaining,
         reset in ms, retry-after in ms (0 when allowed)}.
The deciding limit is the rejecting one with the longest wait, or, when admitted,
the one with the fewest remaining requests.
]]

local algorithm = ARGV[1]
local cost = tonumber(ARGV[2])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = now_us / 1000  -- milliseconds, with microsecond fraction

local n = #KEYS
local allowed = 1
local best = 1
local best_remaining = nil
local best_reset = 0
local best_retry = -1
-- per-limit state computed in phase 1, written in phase 2
local state = {}

for i = 1, n do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  local key = KEYS[i]
  local used, reset, retry

  if algorithm == 'sw' then
    -- one hash per limit: idx = current window number, cur/prev = counts
    local index = math.floor(now / window)
    local h = redis.call('HMGET', key, 'i', 'c', 'p')
    local stored = tonumber(h[1])
    local cur, prev = 0, 0
    if stored == index then
      cur, prev = tonumber(h[2]) or 0, tonumber(h[3]) or 0
    elseif stored == index - 1 then
      prev = tonumber(h[2]) or 0
    end
    local elapsed = now - index * window
    local weight = (window - elapsed) / window
    used = prev * weight + cur
    state[i] = {index, cur, prev, window}
    reset = window - elapsed
    if used + cost > limit then
      -- wait until the weighted count has room for this request
      if cur + cost <= limit and prev > 0 then
        -- prev * (window - e) / window + cur + cost <= limit
        local e = window - (limit - cur - cost) * window / prev
        retry = e - elapsed
      else
        -- not within this window: in the next one, cur becomes prev
        local e = 0
        if cur > 0 then e = window * (1 - (limit - cost) / cur) end
        if e < 0 then e = 0 end
        retry = (window - elapsed) + e
      end
    end
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    used = redis.call('ZCARD', key)
    state[i] = {used, window}
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if oldest[2] then reset = tonumber(oldest[2]) + window - now else reset = window end
    if used + cost > limit then
      -- the entry whose expiry leaves room for this request
      local pos = used + cost - limit - 1
      local entry = redis.call('ZRANGE', key, pos, pos, 'WITHSCORES')
      retry = tonumber(entry[2]) + window - now
    end
  end

  local remaining = limit - used - cost
  if retry then
    allowed = 0
    if retry > best_retry then
      best, best_retry, best_reset, best_remaining = i, retry, reset, 0
    end
  elseif allowed == 1 and (best_remaining == nil or remaining < best_remaining) then
    best, best_reset, best_remaining = i, reset, remaining
  end
end

if allowed == 1 then
  for i = 1, n do
    local key = KEYS[i]
    local s = state[i]
    if algorithm == 'sw' then
      redis.call('HSET', key, 'i', s[1], 'c', s[2] + cost, 'p', s[3])
      redis.call('PEXPIRE', key, 2 * s[4])
    else
      for c = 1, cost do
        redis.call('ZADD', key, now, now_us .. ':' .. (s[1] + c))
      end
      redis.call('PEXPIRE', key, s[2])
    end
  end
  best_retry = 0
end

if best_remaining < 0 then best_remaining = 0 end
return {allowed, best, math.floor(best_remaining), math.ceil(best_reset), math.ceil(best_retry)}

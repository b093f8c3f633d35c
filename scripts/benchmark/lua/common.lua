-- The part of every wrk script of the bench (scripts/benchmark/wrk.py): each thread counts the
-- answers outside 2xx, and done() prints one line, BENCH_JSON {...}, that the bench reads. The bench
-- writes the number of seeded users after `local users =` below and appends one of get.lua, put.lua or
-- mix.lua, which set `request` from the functions below.

local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end
function init(args)
  non2xx = 0
  math.randomseed(os.time() * 1000 + id)
end
function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end
function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end

local lower = "abcdefghijklmnopqrstuvwxyz"
local letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
local users = __USERS__
local json_headers = {["Content-Type"] = "application/json"}

local function seeded_name(i)
  local t = {}
  for k = 5, 1, -1 do
    local d = i % 26
    t[k] = lower:sub(d + 1, d + 1)
    i = math.floor(i / 26)
  end
  return "u" .. table.concat(t)
end

local function random_name()
  local t = {}
  for k = 1, math.random(6, 16) do
    local j = math.random(1, 52)
    t[k] = letters:sub(j, j)
  end
  return table.concat(t)
end

local function get_request()
  return wrk.format("GET", "/hello/" .. seeded_name(math.random(0, users - 1)))
end

local function put_request()
  local body = string.format('{"dateOfBirth": "%04d-%02d-%02d"}',
    math.random(1940, 2015), math.random(1, 12), math.random(1, 28))
  return wrk.format("PUT", "/hello/" .. random_name(), json_headers, body)
end

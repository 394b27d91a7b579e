--[[ wrk script: SDK-shaped triggers (bench/wrk.py runs it; read that module first).

One connection per wrk thread (wrk.py starts as many threads as connections), so a thread's
request() and response() alternate: the script times each request itself and stops a thread after
exactly its share of a burst.

args (after wrk's `--`; args[0] is the URL):
  1  template: a file holding one whole HTTP request, written by wrk.py in the SDK's header order,
     with the slots {request_key} (36 characters) and {idempotency_key} (64) where every request
     gets a fresh value; Content-Length already counts the values' lengths
  2  run: 15 random hex digits of this run, so that two runs never send the same key
  3  when each thread stops, always after a response, so that no request is left unanswered:
     "requests:share:extra", after share responses, the first extra threads after one more (a
     burst of exactly share * threads + extra); "seconds:s", after its first response s seconds
     after it started
  4  ids: "1" to keep the run id of every 200 answer (for exactly-once checks)
  5  sink: a loopback port where wrk.py listens and nothing is served (see response())
  6  records: "1" to keep, per response, when its request was sent (CLOCK_MONOTONIC, ms), its
     status, whether it was buffered and its latency, for figures over time

A thread that stops writes "sdk.lua: thread done" to stderr: wrk's main thread sleeps for its whole
--duration whatever its threads do, so wrk.py interrupts it (SIGINT) when all are done.
done() prints one line, "sdk.lua summary: " and a JSON object (wrk's totals and each thread's
figures), after wrk's own report.
]]

local ffi = require("ffi")
ffi.cdef([[
  typedef struct { long tv_sec; long tv_nsec; } sdk_timespec;
  int clock_gettime(int clock, sdk_timespec *now);
]])
local CLOCK_MONOTONIC = 1
local clock = ffi.new("sdk_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

-- Main state: one entry per thread, read back in done().
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

-- Thread state -----------------------------------------------------------------------------------

local parts = {} -- the template cut at its slots: literal strings and slot names, in order
local slots = { ["{request_key}"] = true, ["{idempotency_key}"] = true }
local run_hex, quota, deadline, keep_ids, sink, keep_records
local sent, started = 0, nil
local statuses, latencies, ids, records, buffered, answered = {}, {}, {}, {}, 0, 0
report = nil -- the thread's figures, for done(): see thread_report()

local function cut(template)
  local at = 1
  while true do
    local first, last, slot = nil, nil, nil
    for name in pairs(slots) do
      local s, e = string.find(template, name, at, true)
      if s and (not first or s < first) then
        first, last, slot = s, e, name
      end
    end
    if not first then
      table.insert(parts, string.sub(template, at))
      return
    end
    table.insert(parts, string.sub(template, at, first - 1))
    table.insert(parts, slot)
    at = last + 1
  end
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  cut(file:read("*a"))
  file:close()
  run_hex = args[2]
  local share, extra = string.match(args[3], "^requests:(%d+):(%d+)$")
  if share then
    quota = tonumber(share) + (thread_id <= tonumber(extra) and 1 or 0)
  else
    deadline = now_ms() + 1000 * tonumber(assert(string.match(args[3], "^seconds:([%d.]+)$")))
  end
  keep_ids = args[4] == "1"
  sink = wrk.lookup("127.0.0.1", args[5])[1]
  keep_records = args[6] == "1"
end

function request()
  sent = sent + 1
  -- Unique across threads (thread id) and requests (counter), and across runs (run_hex); shaped as
  -- the SDK's randomUUID() (version 4, variant 8) and its sha256 hex idempotency key.
  local request_key = string.format(
    "%s-%s-4%s-%04x-%012x",
    string.sub(run_hex, 1, 8),
    string.sub(run_hex, 9, 12),
    string.sub(run_hex, 13, 15),
    0x8000 + thread_id,
    sent
  )
  local values = {
    ["{request_key}"] = request_key,
    ["{idempotency_key}"] = string.format("%s%s%04x%012x", run_hex, string.rep("0", 33), thread_id, sent),
  }
  local out = {}
  for i, part in ipairs(parts) do
    out[i] = values[part] or part
  end
  started = now_ms()
  return table.concat(out)
end

-- What this thread measured, as one JSON string: done() reads it with thread:get(), which copies
-- strings between Lua states soundly but not tables (wrk 4.1's copy pops one value too many from
-- the thread's stack for every table; reading four tables corrupted the strings they held).
local function thread_report()
  local out, codes = {}, {}
  for i, latency in ipairs(latencies) do
    out[i] = string.format("%.3f", latency)
  end
  for status, count in pairs(statuses) do
    codes[#codes + 1] = string.format('"%d":%d', status, count)
  end
  return string.format(
    '{"statuses":{%s},"buffered":%d,"latencies_ms":[%s],"ids":[%s],"records":[%s]}',
    table.concat(codes, ","),
    buffered,
    table.concat(out, ","),
    table.concat(ids, ","),
    table.concat(records, ",")
  )
end

function response(status, headers, body)
  answered = answered + 1
  if started then
    latencies[answered] = now_ms() - started
  end
  statuses[status] = (statuses[status] or 0) + 1
  local was_buffered = (headers["x-mollifier"] or headers["X-Mollifier"]) == "buffered"
  if was_buffered then
    buffered = buffered + 1
  end
  if keep_records then
    records[answered] = string.format("[%.3f,%d,%d,%.3f]", started, status, was_buffered and 1 or 0, latencies[answered])
  end
  if keep_ids and status == 200 then
    local id = string.match(body, '"id"%s*:%s*"([^"]+)"')
    if id then
      ids[#ids + 1] = '"' .. id .. '"' -- run ids: letters and digits only
    end
  end
  if (quota and answered >= quota) or (deadline and now_ms() >= deadline) then
    -- A server that closes every connection (gunicorn's sync workers) makes wrk reconnect right
    -- after this response, stopped or not. On the server, a connection that never sends holds a
    -- sync worker until its timeout, and the other threads' requests wait behind it; so the last
    -- reconnect goes to wrk.py's sink instead.
    wrk.thread.addr = sink
    wrk.thread:stop()
    report = thread_report()
    io.stderr:write("sdk.lua: thread done\n")
    io.stderr:flush()
  end
end

-- Main state, after every thread stopped --------------------------------------------------------

function done(summary, latency, requests)
  local reports = {}
  for i, thread in ipairs(threads) do
    -- nil when wrk.py's backstop stopped the thread: wrk.py says so
    reports[i] = thread:get("report") or "null"
  end
  local e = summary.errors
  io.write(
    "sdk.lua summary: {",
    string.format('"requests":%d,"duration_us":%d,', summary.requests, summary.duration),
    string.format(
      '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"status_errors":%d,',
      e.connect,
      e.read,
      e.write,
      e.timeout,
      e.status
    ),
    -- wrk's own histogram (microseconds), after its coordinated-omission correction
    string.format(
      '"wrk_latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},',
      latency:percentile(50),
      latency:percentile(90),
      latency:percentile(99),
      latency.max,
      latency.mean
    ),
    '"threads":[',
    table.concat(reports, ","),
    "]}\n"
  )
end

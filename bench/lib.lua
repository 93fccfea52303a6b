-- lib.lua - shared by the wrk scripts of bench/: numbers each wrk thread, counts the
-- answers ({"status":true}, {"status":false}, other statuses) and prints one
-- machine-readable line at the end for bench/report.py:
--   BENCH {"requests":..,"duration_us":..,"rps":..,"p50_us":..,"p99_us":..,...}
-- Load it first with: dofile((os.getenv("BENCH_DIR") or "bench") .. "/lib.lua")

local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

-- per-thread globals (each wrk thread has its own Lua state)
n_true, n_false, n_other = 0, 0, 0

function response(status, headers, body)
   -- compat answers {"status":true|false}; native {"verified":true|false}, and a native
   -- send a pending verification
   if status == 200 and (body:find('"status":true', 1, true) or
                         body:find('"verified":true', 1, true) or
                         (body:find('"status":"pending"', 1, true) and
                          not body:find('"verified":false', 1, true))) then
      n_true = n_true + 1
   elseif status == 200 and (body:find('"status":false', 1, true) or
                             body:find('"verified":false', 1, true)) then
      n_false = n_false + 1
   else
      n_other = n_other + 1
      if n_other <= 3 then
         io.stderr:write(string.format("bench: unexpected answer %d: %s\n", status, body:sub(1, 200)))
      end
   end
end

function done(summary, latency, requests)
   local t, f, o = 0, 0, 0
   for _, th in ipairs(threads) do
      t = t + th:get("n_true")
      f = f + th:get("n_false")
      o = o + th:get("n_other")
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH {"requests":%d,"duration_us":%d,"rps":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"socket_errors":%d,"timeouts":%d,"status_true":%d,"status_false":%d,"other":%d}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect + e.read + e.write, e.timeout, t, f, o))
end

-- A number that differs between the runs of one `make bench`, so sends never reuse a
-- phone (bench/run.sh sets BENCH_RUN).
bench_run = tonumber(os.getenv("BENCH_RUN") or "0") % 1000

-- The pre-seeded phones of the check scenario and their codes (bench/seed.py makes the
-- same ones).
function seeded_phone(i) return string.format("7999%08d", i) end
function seeded_code(i) return string.format("%05d", (i * 7919 + 13) % 100000) end

-- send.lua - POST /sms with a JSON body, a new phone on every request (run, thread and
-- a per-thread counter make it unique), so every request stores a new code.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/lib.lua")

local counter = 0
local headers = { ["Content-Type"] = "application/json" }

function request()
   counter = counter + 1
   local phone = string.format("7%03d%d%08d", bench_run, tid, counter)
   local code = string.format("%05d", (counter * 7919) % 100000)
   local body = string.format(
      '{"phone":"%s","password":"%s","message":"Your code is %s","lifetime":300}',
      phone, code, code)
   return wrk.format("POST", "/sms", headers, body)
end

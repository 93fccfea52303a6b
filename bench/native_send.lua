-- native_send.lua - POST /otp/send with a JSON body and the app key of BENCH_TOKEN, a new
-- phone on every request, so every request makes, stores and queues a new code (the
-- native counterpart of send.lua).
dofile((os.getenv("BENCH_DIR") or "bench") .. "/lib.lua")

local counter = 0
local headers = {
   ["Content-Type"] = "application/json",
   ["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or ""),
}

function request()
   counter = counter + 1
   local phone = string.format("+7%03d%d%08d", bench_run, tid, counter)
   local body = string.format('{"recipient":"%s","channel":"sms"}', phone)
   return wrk.format("POST", "/otp/send", headers, body)
end

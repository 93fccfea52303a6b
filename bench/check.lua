-- check.lua - GET /sms/check?phone=..&password=.. over the phones bench/seed.py stored:
-- every other request has the right code, the others a wrong one, so about half the
-- answers are {"status":true}. otpd must run with OTPD_MAX_CHECK_ATTEMPTS=0 here:
-- otherwise the wrong codes would void each phone's code after 5 tries.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/lib.lua")

local phones = tonumber(os.getenv("BENCH_CHECK_PHONES") or "1000")
local counter = 0

function request()
   counter = counter + 1
   -- threads start at different phones and walk the set; the right/wrong parity flips
   -- on every lap so each phone sees both
   local lap = math.floor(counter / phones)
   local i = (counter + tid * 500) % phones
   local code = seeded_code(i)
   if (counter + lap) % 2 == 1 then
      code = string.format("%05d", (tonumber(code) + 1) % 100000) -- wrong
   end
   return wrk.format("GET", "/sms/check?phone=" .. seeded_phone(i) .. "&password=" .. code)
end

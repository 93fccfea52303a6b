-- native_verify.lua - POST /otp/verify by recipient (its newest live verification) over
-- the phones bench/seed_native.py stored with their own codes: every other request has
-- the right code, the others a wrong one (the native counterpart of check.lua). The app
-- keeps codes reusable and attempts unlimited, as check.lua's otpd does.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/lib.lua")

local phones = tonumber(os.getenv("BENCH_CHECK_PHONES") or "1000")
local counter = 0
local headers = {
   ["Content-Type"] = "application/json",
   ["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or ""),
}

function request()
   counter = counter + 1
   local lap = math.floor(counter / phones)
   local i = (counter + tid * 500) % phones
   local code = seeded_code(i)
   if (counter + lap) % 2 == 1 then
      code = string.format("%05d", (tonumber(code) + 1) % 100000) -- wrong
   end
   local body = string.format('{"recipient":"+%s","otp_code":"%s"}', seeded_phone(i), code)
   return wrk.format("POST", "/otp/verify", headers, body)
end

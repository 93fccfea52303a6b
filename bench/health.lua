-- health.lua - GET /health: the HTTP edge alone (no database).
dofile((os.getenv("BENCH_DIR") or "bench") .. "/lib.lua")
wrk.method = "GET"
wrk.path = "/health"

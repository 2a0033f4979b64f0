-- wrk script: POST the body in $BODY_FILE to the URL given on the command line, as
-- $CONTENT_TYPE (default JSON), with one more header from $EXTRA_HEADER ("Name: value").
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/json"
local extra = os.getenv("EXTRA_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end
f:close()

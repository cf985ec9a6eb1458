-- wrk script: every request is a new device pushing 5 purchase requests (unique ids).
-- Set LISTINGS (comma-separated ids) and TOKEN in the environment.
local counter = 0
local thread_tag = ""
local listings = {}

function setup(thread)
  thread:set("thread_tag", tostring(math.random(1, 1e9)))
end

function init(args)
  for id in string.gmatch(os.getenv("LISTINGS"), "[^,]+") do table.insert(listings, id) end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

function request()
  counter = counter + 1
  local tag = thread_tag .. "x" .. counter
  local mutations = {}
  for i = 1, 5 do
    local listing = listings[((counter + i) % #listings) + 1]
    mutations[i] = string.format(
      '{"id":%d,"name":"purchase_request","args":{"order_id":"o%sm%d","payment_method":"cod",' ..
      '"items":[{"item_id":"i%sm%d","listing_id":"%s","quantity":1}]}}',
      i, tag, i, tag, i, listing)
  end
  local body = '{"client_id":"bench-device-' .. tag .. '","mutations":[' .. table.concat(mutations, ",") .. ']}'
  return wrk.format(nil, "/api/sync/push", nil, body)
end

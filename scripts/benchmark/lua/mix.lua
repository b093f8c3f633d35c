-- 90% GETs of seeded users, 10% PUTs (appended to common.lua).
request = function()
  if math.random() < 0.1 then return put_request() end
  return get_request()
end

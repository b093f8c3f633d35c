-- GETs of seeded users drawn at random (appended to common.lua).
request = get_request

-- PUTs under random names of 6 to 16 letters, with random dates of birth (appended to common.lua).
request = put_request

-- Users and their dates of birth. The name is the key, compared byte for byte (BINARY), so
-- "Alice" and "alice" are two users. Dates are ISO 8601 text (YYYY-MM-DD), checked by the service.
CREATE TABLE users (
    username      TEXT NOT NULL PRIMARY KEY COLLATE BINARY
                  CHECK (length(username) BETWEEN 1 AND 64),
    date_of_birth TEXT NOT NULL
                  CHECK (date_of_birth GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    updated_at    TEXT NOT NULL
) STRICT, WITHOUT ROWID;

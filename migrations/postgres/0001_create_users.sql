-- Users and their dates of birth. The name is the key, compared byte for byte (collation "C"), so
-- "Alice" and "alice" are two users. updated_at is set by the service (UTC, milliseconds).
CREATE TABLE users (
    username      text COLLATE "C" NOT NULL PRIMARY KEY
                  CHECK (length(username) BETWEEN 1 AND 64),
    date_of_birth date NOT NULL,
    updated_at    timestamp(3) with time zone NOT NULL
);

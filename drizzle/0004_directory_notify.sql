-- Cross-replica invalidation without waiting for the poll: the directory_version triggers also NOTIFY
-- usage_limiter_directory. Each replica LISTENs on it (postgres driver only) and refreshes its key cache at
-- once; NOTIFY is delivered on commit and collapsed per transaction, so a bulk change is one notification.
-- The version poll (DIRECTORY_POLL_MS) stays as the fallback for a replica whose listening connection is down.
CREATE OR REPLACE FUNCTION "directory_version_bump_if_changed"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM changed_rows) THEN
    UPDATE "directory_version" SET "version" = "version" + 1 WHERE "id" = 1;
    PERFORM pg_notify('usage_limiter_directory', '');
  END IF;
  RETURN NULL;
END;
$$;
--> statement-breakpoint
CREATE OR REPLACE FUNCTION "directory_version_bump"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE "directory_version" SET "version" = "version" + 1 WHERE "id" = 1;
  PERFORM pg_notify('usage_limiter_directory', '');
  RETURN NULL;
END;
$$;

-- Every replica caches tiers, tenants and keys and polls directory_version.version (about once a second) to
-- learn that its cache is stale. The triggers fire per statement, not per row, so a bulk change costs one bump;
-- the transition tables let a statement that changed no rows (an upsert that found nothing to do, an UPDATE
-- matching nothing) skip the bump, so idle no-op writes do not make every replica refetch.
INSERT INTO "directory_version" ("id", "version") VALUES (1, 0) ON CONFLICT ("id") DO NOTHING;
--> statement-breakpoint
CREATE OR REPLACE FUNCTION "directory_version_bump_if_changed"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM changed_rows) THEN
    UPDATE "directory_version" SET "version" = "version" + 1 WHERE "id" = 1;
  END IF;
  RETURN NULL;
END;
$$;
--> statement-breakpoint
-- TRUNCATE has no transition table; it always counts as a change.
CREATE OR REPLACE FUNCTION "directory_version_bump"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE "directory_version" SET "version" = "version" + 1 WHERE "id" = 1;
  RETURN NULL;
END;
$$;
--> statement-breakpoint
CREATE TRIGGER "tiers_directory_version_insert" AFTER INSERT ON "tiers" REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump_if_changed"();
--> statement-breakpoint
CREATE TRIGGER "tiers_directory_version_update" AFTER UPDATE ON "tiers" REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump_if_changed"();
--> statement-breakpoint
CREATE TRIGGER "tiers_directory_version_delete" AFTER DELETE ON "tiers" REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump_if_changed"();
--> statement-breakpoint
CREATE TRIGGER "tiers_directory_version_truncate" AFTER TRUNCATE ON "tiers" FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump"();
--> statement-breakpoint
CREATE TRIGGER "tenants_directory_version_insert" AFTER INSERT ON "tenants" REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump_if_changed"();
--> statement-breakpoint
CREATE TRIGGER "tenants_directory_version_update" AFTER UPDATE ON "tenants" REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump_if_changed"();
--> statement-breakpoint
CREATE TRIGGER "tenants_directory_version_delete" AFTER DELETE ON "tenants" REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump_if_changed"();
--> statement-breakpoint
CREATE TRIGGER "tenants_directory_version_truncate" AFTER TRUNCATE ON "tenants" FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump"();
--> statement-breakpoint
CREATE TRIGGER "api_keys_directory_version_insert" AFTER INSERT ON "api_keys" REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump_if_changed"();
--> statement-breakpoint
CREATE TRIGGER "api_keys_directory_version_update" AFTER UPDATE ON "api_keys" REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump_if_changed"();
--> statement-breakpoint
CREATE TRIGGER "api_keys_directory_version_delete" AFTER DELETE ON "api_keys" REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump_if_changed"();
--> statement-breakpoint
CREATE TRIGGER "api_keys_directory_version_truncate" AFTER TRUNCATE ON "api_keys" FOR EACH STATEMENT EXECUTE FUNCTION "directory_version_bump"();

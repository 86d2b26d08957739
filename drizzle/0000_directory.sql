CREATE TABLE "api_keys" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"key_hash" text NOT NULL,
	"key_prefix" text NOT NULL,
	"tenant_id" text NOT NULL,
	"name" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"revoked_at" timestamp with time zone,
	"expires_at" timestamp with time zone,
	CONSTRAINT "api_keys_key_hash_key" UNIQUE("key_hash"),
	CONSTRAINT "api_keys_key_hash_sha256_hex" CHECK (key_hash ~ '^[0-9a-f]{64}$')
);
--> statement-breakpoint
CREATE TABLE "directory_version" (
	"id" integer PRIMARY KEY NOT NULL,
	"version" bigint DEFAULT 0 NOT NULL,
	CONSTRAINT "directory_version_single_row" CHECK (id = 1)
);
--> statement-breakpoint
CREATE TABLE "tenants" (
	"id" text PRIMARY KEY NOT NULL,
	"tier_id" text NOT NULL,
	"status" text DEFAULT 'active' NOT NULL,
	"stripe_customer_id" text,
	"billing_anchor" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "tenants_status" CHECK (status IN ('active', 'suspended'))
);
--> statement-breakpoint
CREATE TABLE "tiers" (
	"id" text PRIMARY KEY NOT NULL,
	"read_rate_requests" integer,
	"read_rate_per_seconds" integer,
	"quota_total" integer,
	"quota_endpoints" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"alert_thresholds" jsonb DEFAULT '[0.8,0.9,1]'::jsonb NOT NULL,
	"failure_policy" text DEFAULT 'allow' NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "tiers_read_rate_both_or_neither" CHECK ((read_rate_requests IS NULL) = (read_rate_per_seconds IS NULL)),
	CONSTRAINT "tiers_read_rate_positive" CHECK (read_rate_requests > 0 AND read_rate_per_seconds > 0),
	CONSTRAINT "tiers_quota_total_positive" CHECK (quota_total > 0),
	CONSTRAINT "tiers_quota_endpoints_object" CHECK (jsonb_typeof(quota_endpoints) = 'object'),
	CONSTRAINT "tiers_alert_thresholds_array" CHECK (jsonb_typeof(alert_thresholds) = 'array'),
	CONSTRAINT "tiers_failure_policy" CHECK (failure_policy IN ('allow', 'deny'))
);
--> statement-breakpoint
ALTER TABLE "api_keys" ADD CONSTRAINT "api_keys_tenant_id_tenants_id_fk" FOREIGN KEY ("tenant_id") REFERENCES "public"."tenants"("id") ON DELETE cascade ON UPDATE cascade;--> statement-breakpoint
ALTER TABLE "tenants" ADD CONSTRAINT "tenants_tier_id_tiers_id_fk" FOREIGN KEY ("tier_id") REFERENCES "public"."tiers"("id") ON DELETE restrict ON UPDATE cascade;--> statement-breakpoint
CREATE INDEX "api_keys_tenant_id_idx" ON "api_keys" USING btree ("tenant_id");--> statement-breakpoint
CREATE INDEX "tenants_tier_id_idx" ON "tenants" USING btree ("tier_id");--> statement-breakpoint
CREATE UNIQUE INDEX "tenants_stripe_customer_id_key" ON "tenants" USING btree ("stripe_customer_id");
CREATE TABLE "alert_outbox" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"dedupe_key" text NOT NULL,
	"tenant_id" text NOT NULL,
	"kind" text NOT NULL,
	"target" text NOT NULL,
	"payload" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"attempts" integer DEFAULT 0 NOT NULL,
	"next_attempt_at" timestamp with time zone DEFAULT now() NOT NULL,
	"delivered_at" timestamp with time zone,
	"last_error" text,
	CONSTRAINT "alert_outbox_dedupe_key_key" UNIQUE("dedupe_key"),
	CONSTRAINT "alert_outbox_target" CHECK (target IN ('global', 'tenant'))
);
--> statement-breakpoint
CREATE TABLE "stripe_events" (
	"id" text PRIMARY KEY NOT NULL,
	"type" text NOT NULL,
	"stripe_created_at" timestamp with time zone NOT NULL,
	"received_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "usage_reports" (
	"tenant_id" text NOT NULL,
	"endpoint" text NOT NULL,
	"period" text NOT NULL,
	"reported_units" bigint DEFAULT 0 NOT NULL,
	"pending_identifier" text,
	"pending_units" bigint,
	"pending_since" timestamp with time zone,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "usage_reports_tenant_id_endpoint_period_pk" PRIMARY KEY("tenant_id","endpoint","period"),
	CONSTRAINT "usage_reports_units_non_negative" CHECK (reported_units >= 0 AND (pending_units IS NULL OR pending_units > 0))
);
--> statement-breakpoint
ALTER TABLE "tenants" ADD COLUMN "stripe_subscription_id" text;--> statement-breakpoint
ALTER TABLE "tenants" ADD COLUMN "alert_webhook_url" text;--> statement-breakpoint
ALTER TABLE "tiers" ADD COLUMN "stripe_prices" jsonb DEFAULT '[]'::jsonb NOT NULL;--> statement-breakpoint
CREATE INDEX "alert_outbox_due_idx" ON "alert_outbox" USING btree ("next_attempt_at") WHERE delivered_at IS NULL;--> statement-breakpoint
ALTER TABLE "tiers" ADD CONSTRAINT "tiers_stripe_prices_array" CHECK (jsonb_typeof(stripe_prices) = 'array');
ALTER TABLE "stripe_events" ADD COLUMN "tenant_id" text;--> statement-breakpoint
CREATE INDEX "stripe_events_tenant_created_idx" ON "stripe_events" USING btree ("tenant_id","stripe_created_at");
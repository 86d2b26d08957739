// Tiers, tenants and API keys: the directory every replica caches. Limits are checked here as well as in
// `usage-limiter apply`, so a hand-written SQL statement cannot store a tier that the Check cannot enforce.
import { sql } from 'drizzle-orm';
import {
  bigint,
  bigserial,
  boolean,
  primaryKey,
  check,
  index,
  integer,
  jsonb,
  pgTable,
  text,
  timestamp,
  uniqueIndex,
  uuid,
} from 'drizzle-orm/pg-core';

const createdAt = () => timestamp('created_at', { withTimezone: true }).notNull().defaultNow();
const updatedAt = () => timestamp('updated_at', { withTimezone: true }).notNull().defaultNow();

export const tiers = pgTable(
  'tiers',
  {
    id: text('id').primaryKey(),
    // Both null: the tier has no read-rate limit.
    readRateRequests: integer('read_rate_requests'),
    readRatePerSeconds: integer('read_rate_per_seconds'),
    quotaTotal: integer('quota_total'),
    /** Endpoint (`/verify`, `/files/*`) → monthly limit. */
    quotaEndpoints: jsonb('quota_endpoints').$type<Record<string, number>>().notNull().default({}),
    alertThresholds: jsonb('alert_thresholds').$type<number[]>().notNull().default([0.8, 0.9, 1.0]),
    failurePolicy: text('failure_policy', { enum: ['allow', 'deny'] }).notNull().default('allow'),
    /** Stripe price lookup keys or price ids that map a subscription to this tier (webhook sync). */
    stripePrices: jsonb('stripe_prices').$type<string[]>().notNull().default([]),
    createdAt: createdAt(),
    updatedAt: updatedAt(),
  },
  () => [
    check('tiers_read_rate_both_or_neither', sql`(read_rate_requests IS NULL) = (read_rate_per_seconds IS NULL)`),
    check('tiers_read_rate_positive', sql`read_rate_requests > 0 AND read_rate_per_seconds > 0`),
    check('tiers_quota_total_positive', sql`quota_total > 0`),
    check('tiers_quota_endpoints_object', sql`jsonb_typeof(quota_endpoints) = 'object'`),
    check('tiers_alert_thresholds_array', sql`jsonb_typeof(alert_thresholds) = 'array'`),
    check('tiers_failure_policy', sql`failure_policy IN ('allow', 'deny')`),
    check('tiers_stripe_prices_array', sql`jsonb_typeof(stripe_prices) = 'array'`),
  ],
);

export const tenants = pgTable(
  'tenants',
  {
    id: text('id').primaryKey(),
    tierId: text('tier_id')
      .notNull()
      .references(() => tiers.id, { onDelete: 'restrict', onUpdate: 'cascade' }),
    status: text('status', { enum: ['active', 'suspended'] }).notNull().default('active'),
    stripeCustomerId: text('stripe_customer_id'),
    stripeSubscriptionId: text('stripe_subscription_id'),
    // Null: the billing period is the UTC calendar month.
    billingAnchor: timestamp('billing_anchor', { withTimezone: true }),
    /** Where this tenant's own alerts are POSTed (besides the global ALERT_WEBHOOK_URL). */
    alertWebhookUrl: text('alert_webhook_url'),
    createdAt: createdAt(),
    updatedAt: updatedAt(),
  },
  (t) => [
    index('tenants_tier_id_idx').on(t.tierId),
    // Stripe webhooks find the tenant by customer; two tenants on one customer would be ambiguous.
    uniqueIndex('tenants_stripe_customer_id_key').on(t.stripeCustomerId),
    check('tenants_status', sql`status IN ('active', 'suspended')`),
  ],
);

export const apiKeys = pgTable(
  'api_keys',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    /** SHA-256 hex of the plaintext key; the plaintext is never stored. */
    keyHash: text('key_hash').notNull().unique('api_keys_key_hash_key'),
    keyPrefix: text('key_prefix').notNull(),
    tenantId: text('tenant_id')
      .notNull()
      .references(() => tenants.id, { onDelete: 'cascade', onUpdate: 'cascade' }),
    name: text('name'),
    createdAt: createdAt(),
    revokedAt: timestamp('revoked_at', { withTimezone: true }),
    expiresAt: timestamp('expires_at', { withTimezone: true }),
  },
  (t) => [
    index('api_keys_tenant_id_idx').on(t.tenantId),
    check('api_keys_key_hash_sha256_hex', sql`key_hash ~ '^[0-9a-f]{64}$'`),
  ],
);

/** A single row (id = 1) whose version triggers bump on any change to the three tables above. */
export const directoryVersion = pgTable(
  'directory_version',
  {
    id: integer('id').primaryKey(),
    version: bigint('version', { mode: 'bigint' }).notNull().default(sql`0`),
  },
  () => [check('directory_version_single_row', sql`id = 1`)],
);

/** Stripe webhook events already processed, so a replayed delivery changes nothing. */
export const stripeEvents = pgTable(
  'stripe_events',
  {
    id: text('id').primaryKey(),
    type: text('type').notNull(),
    /** The event's own `created` (Stripe may deliver out of order). */
    stripeCreatedAt: timestamp('stripe_created_at', { withTimezone: true }).notNull(),
    receivedAt: timestamp('received_at', { withTimezone: true }).notNull().defaultNow(),
    /**
     * The tenant a subscription event was about (no foreign key: the record outlives the tenant). A late
     * subscription event is judged stale against some of the tenant's newer ones (see `setsSubscription`).
     */
    tenantId: text('tenant_id'),
    /** The subscription the event was about (null on rows recorded before this column). */
    subscriptionId: text('subscription_id'),
    /**
     * The event set that subscription's tier on the tenant (applied, or found already in place). Together with
     * the subscription it decides what a late event is stale against: any newer event of its own
     * subscription, or a newer one that put the tenant on another subscription; not the ending of another.
     */
    setsSubscription: boolean('sets_subscription').notNull().default(false),
  },
  (t) => [index('stripe_events_tenant_created_idx').on(t.tenantId, t.stripeCreatedAt)],
);

/**
 * Durable usage-reporting progress per tenant, endpoint and period: units confirmed as sent to Stripe, and
 * the batch in flight (written before sending, so a crash between sending and recording re-sends the same
 * identifier, which Stripe de-duplicates). No foreign key: billing history outlives a deleted tenant.
 */
export const usageReports = pgTable(
  'usage_reports',
  {
    tenantId: text('tenant_id').notNull(),
    endpoint: text('endpoint').notNull(),
    period: text('period').notNull(),
    reportedUnits: bigint('reported_units', { mode: 'number' }).notNull().default(0),
    pendingIdentifier: text('pending_identifier'),
    pendingUnits: bigint('pending_units', { mode: 'number' }),
    pendingSince: timestamp('pending_since', { withTimezone: true }),
    updatedAt: updatedAt(),
  },
  (t) => [
    primaryKey({ columns: [t.tenantId, t.endpoint, t.period] }),
    check('usage_reports_units_non_negative', sql`reported_units >= 0 AND (pending_units IS NULL OR pending_units > 0)`),
  ],
);

/**
 * Alerts waiting for (or done with) webhook delivery: one row per alert and target, written before any
 * attempt, so a restart or a receiver outage loses none. `dedupe_key` makes enqueueing idempotent.
 */
export const alertOutbox = pgTable(
  'alert_outbox',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    dedupeKey: text('dedupe_key').notNull().unique('alert_outbox_dedupe_key_key'),
    tenantId: text('tenant_id').notNull(),
    kind: text('kind').notNull(),
    /** `global` (ALERT_WEBHOOK_URL) or `tenant` (tenants.alert_webhook_url). */
    target: text('target', { enum: ['global', 'tenant'] }).notNull(),
    payload: jsonb('payload').$type<Record<string, unknown>>().notNull(),
    createdAt: createdAt(),
    attempts: integer('attempts').notNull().default(0),
    nextAttemptAt: timestamp('next_attempt_at', { withTimezone: true }).notNull().defaultNow(),
    deliveredAt: timestamp('delivered_at', { withTimezone: true }),
    lastError: text('last_error'),
  },
  (t) => [
    index('alert_outbox_due_idx').on(t.nextAttemptAt).where(sql`delivered_at IS NULL`),
    check('alert_outbox_target', sql`target IN ('global', 'tenant')`),
  ],
);

export type TierRow = typeof tiers.$inferSelect;
export type TenantRow = typeof tenants.$inferSelect;
export type ApiKeyRow = typeof apiKeys.$inferSelect;

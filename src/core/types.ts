// Plain data shared by every layer. Nothing here knows about gRPC, Redis, Postgres or Stripe.

/** GET and HEAD requests a tenant may make within a rolling window. */
export interface ReadRateLimit {
  readonly requests: number;
  readonly perSeconds: number;
}

/** Monthly (billing-period) caps. `endpoints` keys are normalised paths, e.g. `/verify` or `/files/*`. */
export interface MonthlyQuota {
  readonly total: number | null;
  readonly endpoints: Readonly<Record<string, number>>;
}

/**
 * What the Check does when Redis or Postgres cannot answer in time:
 * `allow` lets the request through marked degraded; `deny` answers 503 USAGE_CHECK_UNAVAILABLE.
 */
export type FailurePolicy = 'allow' | 'deny';

export interface Tier {
  readonly id: string;
  readonly readRateLimit: ReadRateLimit | null;
  readonly monthlyQuota: MonthlyQuota;
  /** Fractions of a quota, e.g. [0.8, 0.9, 1]. Each fires once per tenant, endpoint and period. */
  readonly alertThresholds: readonly number[];
  readonly failurePolicy: FailurePolicy;
}

export type TenantStatus = 'active' | 'suspended';

export interface Tenant {
  readonly id: string;
  readonly tierId: string;
  readonly status: TenantStatus;
  readonly stripeCustomerId: string | null;
  /**
   * Start of one billing period (epoch ms), when a subscription anchors the tenant's cycle.
   * Null: the period is the UTC calendar month.
   */
  readonly billingAnchorMs: number | null;
}

/** What an API key resolves to. Revocation and expiry are judged by the core against its clock. */
export interface ResolvedKey {
  readonly keyId: string;
  /** Short, non-secret display prefix, safe to log. */
  readonly keyPrefix: string;
  readonly expiresAtMs: number | null;
  readonly revokedAtMs: number | null;
  readonly tenant: Tenant;
  readonly tier: Tier;
}

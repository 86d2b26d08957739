// Tenants and tiers as plain data, mirroring config/demo-tenants.yaml, for tests that need no database.
import type { ResolvedKey, Tenant, Tier } from '../../src/core/types.js';

export const FREE: Tier = {
  id: 'free',
  readRateLimit: { requests: 10, perSeconds: 60 },
  monthlyQuota: { total: null, endpoints: { '/verify': 100 } },
  alertThresholds: [0.8, 0.9, 1],
  failurePolicy: 'allow',
};

export const PRO: Tier = {
  id: 'pro',
  readRateLimit: { requests: 1000, perSeconds: 60 },
  monthlyQuota: { total: null, endpoints: { '/verify': 10 } },
  alertThresholds: [0.8, 0.9, 1],
  failurePolicy: 'deny',
};

export function tenant(id: string, tierId: string, extra: Partial<Tenant> = {}): Tenant {
  return { id, tierId, status: 'active', stripeCustomerId: null, billingAnchorMs: null, ...extra };
}

export function resolved(t: Tenant, tier: Tier, extra: Partial<ResolvedKey> = {}): ResolvedKey {
  return { keyId: `key-${t.id}`, keyPrefix: 'vk_live_', expiresAtMs: null, revokedAtMs: null, tenant: t, tier, ...extra };
}

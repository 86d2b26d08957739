// TenantDirectory over the drizzle handle (Postgres or PGlite). Called by the KeyCache off the hot path, so it
// favours one round trip per batch over anything clever.
import { desc, eq, inArray } from 'drizzle-orm';
import { withDeadlines, type DatabaseHandle } from '../db/client.js';
import { apiKeys, directoryVersion, tenants, tiers, type ApiKeyRow, type TenantRow, type TierRow } from '../db/schema.js';
import type { ResolvedKey, Tenant, Tier } from '../core/types.js';
import type { TenantDirectory } from './types.js';

export interface PgDirectoryOptions {
  /**
   * Whether `close()` also closes the database handle. Off by default: the handle is usually shared (billing,
   * alerts, admin commands) and is closed by whoever opened it.
   */
  closeHandle?: boolean;
}

export function createPgDirectory(handle: DatabaseHandle, opts: PgDirectoryOptions = {}): TenantDirectory {
  const { db } = handle;
  // Keys of one tenant share one Tenant object and tenants of one tier one Tier object, as long as what the
  // Check reads of the row is unchanged: the core derives per-tier data once per Tier object, the deny memory
  // holds a denial only while its Tier object is the live one, and 20,000 keys cost 20,000 small entries
  // rather than 20,000 copies of their tier. The objects are compared by content, not by `updated_at`:
  // hand-written SQL changes a row without touching `updated_at` (no trigger sets it), and must still reach
  // the Check; a change to a column the Check does not read (Stripe prices) keeps the object.
  const tierObjects = new Map<string, { stamp: string; tier: Tier }>();
  const tenantObjects = new Map<string, { stamp: string; tenant: Tenant }>();
  const internTier = (row: TierRow): Tier => {
    const tier = toTier(row);
    const stamp = JSON.stringify(tier);
    const hit = tierObjects.get(row.id);
    if (hit !== undefined && hit.stamp === stamp) return hit.tier;
    tierObjects.set(row.id, { stamp, tier });
    return tier;
  };
  const internTenant = (row: TenantRow): Tenant => {
    const tenant = toTenant(row);
    const stamp = JSON.stringify(tenant);
    const hit = tenantObjects.get(row.id);
    if (hit !== undefined && hit.stamp === stamp) return hit.tenant;
    tenantObjects.set(row.id, { stamp, tenant });
    return tenant;
  };
  const select = () =>
    db
      .select({ key: apiKeys, tenant: tenants, tier: tiers })
      .from(apiKeys)
      .innerJoin(tenants, eq(apiKeys.tenantId, tenants.id))
      .innerJoin(tiers, eq(tenants.tierId, tiers.id));
  const toMap = (rows: Array<{ key: ApiKeyRow; tenant: TenantRow; tier: TierRow }>) => {
    const out = new Map<string, ResolvedKey>();
    for (const { key, tenant, tier } of rows) {
      // Revoked and expired keys are returned as they are: the core judges them against its own clock.
      out.set(key.keyHash, {
        keyId: key.id,
        keyPrefix: key.keyPrefix,
        expiresAtMs: key.expiresAt?.getTime() ?? null,
        revokedAtMs: key.revokedAt?.getTime() ?? null,
        tenant: internTenant(tenant),
        tier: internTier(tier),
      });
    }
    return out;
  };
  const directory: TenantDirectory = {
    async resolveMany(keyHashes) {
      const unique = [...new Set(keyHashes)];
      if (unique.length === 0) return new Map();
      return toMap(await select().where(inArray(apiKeys.keyHash, unique)));
    },

    async resolveAll(limit) {
      return toMap(await select().orderBy(desc(apiKeys.createdAt)).limit(limit));
    },

    async version() {
      const rows = await db.select({ version: directoryVersion.version }).from(directoryVersion).where(eq(directoryVersion.id, 1));
      // No row means migrations have not run; 0 keeps pollers quiet until they do.
      return rows[0]?.version ?? 0n;
    },

    async ping() {
      await handle.ping();
    },

    async close() {
      if (opts.closeHandle) await handle.close();
    },
  };
  // The key cache runs one version poll at a time and shares one load per key: a lookup the driver never
  // settles would freeze the cache (revocations never applied, a new key never loadable). With a deadline
  // the poll or load fails, is logged, and the next one tries again.
  return withDeadlines(directory, ['resolveMany', 'resolveAll', 'version'], handle.deadlineMs, 'directory');
}

/** A tenant and its tier by tenant id (GET /v1/usage behind Envoy, which identifies the tenant, not the key). */
export async function loadTenant(handle: DatabaseHandle, tenantId: string): Promise<{ tenant: Tenant; tier: Tier } | null> {
  const rows = await handle.db
    .select({ tenant: tenants, tier: tiers })
    .from(tenants)
    .innerJoin(tiers, eq(tenants.tierId, tiers.id))
    .where(eq(tenants.id, tenantId));
  const row = rows[0];
  return row ? { tenant: toTenant(row.tenant), tier: toTier(row.tier) } : null;
}

function toTenant(tenant: TenantRow): Tenant {
  return {
    id: tenant.id,
    tierId: tenant.tierId,
    status: tenant.status,
    stripeCustomerId: tenant.stripeCustomerId,
    billingAnchorMs: tenant.billingAnchor?.getTime() ?? null,
  };
}

function toTier(tier: TierRow): Tier {
  return {
    id: tier.id,
    readRateLimit:
      tier.readRateRequests !== null && tier.readRatePerSeconds !== null
        ? { requests: tier.readRateRequests, perSeconds: tier.readRatePerSeconds }
        : null,
    monthlyQuota: { total: tier.quotaTotal, endpoints: numericRecord(tier.quotaEndpoints) },
    alertThresholds: numericList(tier.alertThresholds),
    failurePolicy: tier.failurePolicy,
  };
}

// jsonb written by hand (psql) could hold strings or junk; the core must only ever see finite numbers.
function numericRecord(value: unknown): Record<string, number> {
  const out: Record<string, number> = {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return out;
  for (const [k, v] of Object.entries(value)) {
    const n = Number(v);
    if (Number.isFinite(n) && n > 0) out[k] = n;
  }
  return out;
}

function numericList(value: unknown): number[] {
  if (!Array.isArray(value)) return [];
  return value
    .map(Number)
    .filter((n) => Number.isFinite(n) && n > 0 && n <= 1)
    .sort((a, b) => a - b);
}

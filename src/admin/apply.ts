// `usage-limiter apply -f FILE.yaml`: upserts tiers, then tenants, then keys, in one transaction. Every row is
// compared before it is written, so re-applying an unchanged file writes nothing: no updated_at churn and no
// directory_version bump that would make every replica refetch its cache.
import { readFile } from 'node:fs/promises';
import { eq, inArray, sql } from 'drizzle-orm';
import { AppError } from '../errors.js';
import type { AppDatabase, DatabaseHandle } from '../db/client.js';
import { apiKeys, tenants, tiers, type TenantRow, type TierRow } from '../db/schema.js';
import { parseApplyFile, type ApplyDocument, type ApplyKey, type ApplyTenant, type ApplyTier } from './apply-schema.js';

export { parseApplyFile } from './apply-schema.js';
export type { ApplyDocument, ParseResult } from './apply-schema.js';

export interface ApplySummary {
  tiers: { created: number; updated: number; unchanged: number };
  tenants: { created: number; updated: number; unchanged: number };
  keys: { imported: number; updated: number; unchanged: number };
  /** One line per change, e.g. `key vk_live (tenant tenant_C_789): imported`. Keys appear by display prefix only. */
  changes: string[];
}

type Tx = Parameters<Parameters<AppDatabase['transaction']>[0]>[0];

// Serialises concurrent applies, so the checks made against the database still hold when the writes land.
const APPLY_LOCK_ID = 7_345_092_118_204_332n;
const INSERT_CHUNK = 500;

/** Reads, validates and applies a file. Throws AppError APPLY_INVALID (message: one problem a line) if it is bad. */
export async function applyFile(handle: DatabaseHandle, path: string): Promise<ApplySummary> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code ?? (err instanceof Error ? err.message : String(err));
    throw invalid([`${path}: cannot read file (${reason})`], err);
  }
  const parsed = parseApplyFile(text, path);
  if (!parsed.ok) throw invalid(parsed.problems);
  return applyDocument(handle, parsed.doc);
}

export async function applyDocument(handle: DatabaseHandle, doc: ApplyDocument): Promise<ApplySummary> {
  return handle.db.transaction(async (tx) => {
    await tx.execute(sql`select pg_advisory_xact_lock(${APPLY_LOCK_ID.toString()}::bigint)`);
    const summary: ApplySummary = {
      tiers: { created: 0, updated: 0, unchanged: 0 },
      tenants: { created: 0, updated: 0, unchanged: 0 },
      keys: { imported: 0, updated: 0, unchanged: 0 },
      changes: [],
    };
    const existing = await loadExisting(tx, doc);
    const problems = checkAgainstDatabase(doc, existing);
    if (problems.length > 0) throw invalid(problems);

    await applyTiers(tx, doc.tiers, existing.tiers, summary);
    await applyTenants(tx, doc.tenants, existing.tenants, summary);
    await applyKeys(tx, doc.tenants, existing.keys, summary);
    return summary;
  });
}

interface Existing {
  tiers: Map<string, TierRow>;
  /** Tiers the file does not define but its tenants reference. */
  referencedTierIds: Set<string>;
  tenants: Map<string, TenantRow>;
  /** Stripe customer → tenant, for the customers the file assigns. */
  customers: Map<string, string>;
  keys: Map<string, { tenantId: string; name: string | null; expiresAt: Date | null }>;
  /** Every tier's Stripe prices (a price names one tier across the directory). */
  pricesByTier: Map<string, readonly string[]>;
}

async function loadExisting(tx: Tx, doc: ApplyDocument): Promise<Existing> {
  const fileTierIds = doc.tiers.map((t) => t.id);
  const referenced = [...new Set(doc.tenants.map((t) => t.tierId))].filter((id) => !fileTierIds.includes(id));
  const tierIds = [...fileTierIds, ...referenced];
  const tenantIds = doc.tenants.map((t) => t.id);
  const customers = doc.tenants.flatMap((t) => (t.stripeCustomerId ? [t.stripeCustomerId] : []));
  const hashes = doc.tenants.flatMap((t) => t.apiKeys.map((k) => k.keyHash));

  const tierRows = tierIds.length ? await tx.select().from(tiers).where(inArray(tiers.id, tierIds)) : [];
  const tenantRows = tenantIds.length ? await tx.select().from(tenants).where(inArray(tenants.id, tenantIds)) : [];
  const customerRows = customers.length
    ? await tx
        .select({ id: tenants.id, customer: tenants.stripeCustomerId })
        .from(tenants)
        .where(inArray(tenants.stripeCustomerId, customers))
    : [];
  const priceRows = await tx.select({ id: tiers.id, prices: tiers.stripePrices }).from(tiers);
  const keyRows = hashes.length
    ? await tx
        .select({ hash: apiKeys.keyHash, tenantId: apiKeys.tenantId, name: apiKeys.name, expiresAt: apiKeys.expiresAt })
        .from(apiKeys)
        .where(inArray(apiKeys.keyHash, hashes))
    : [];
  return {
    tiers: new Map(tierRows.map((r) => [r.id, r])),
    referencedTierIds: new Set(referenced.filter((id) => tierRows.some((r) => r.id === id))),
    tenants: new Map(tenantRows.map((r) => [r.id, r])),
    customers: new Map(customerRows.flatMap((r) => (r.customer ? [[r.customer, r.id] as const] : []))),
    keys: new Map(keyRows.map((r) => [r.hash, { tenantId: r.tenantId, name: r.name, expiresAt: r.expiresAt }])),
    pricesByTier: new Map(priceRows.map((r) => [r.id, Array.isArray(r.prices) ? r.prices.map(String) : []])),
  };
}

function checkAgainstDatabase(doc: ApplyDocument, existing: Existing): string[] {
  const problems: string[] = [];
  const at = (path: string, message: string) => problems.push(`${doc.fileName}: ${path}: ${message}`);
  const fileTiers = new Set(doc.tiers.map((t) => t.id));
  const fileTenants = new Map(doc.tenants.map((t) => [t.id, t]));
  for (const tenant of doc.tenants) {
    if (!fileTiers.has(tenant.tierId) && !existing.referencedTierIds.has(tenant.tierId)) {
      at(`${tenant.path}.tier`, `tier "${tenant.tierId}" is not defined in this file or in the database`);
    }
    const customer = tenant.stripeCustomerId;
    const holder = customer ? existing.customers.get(customer) : undefined;
    if (customer && holder !== undefined && holder !== tenant.id) {
      // Allowed only if the file moves the customer off its current holder in the same apply.
      const holderInFile = fileTenants.get(holder);
      if (!holderInFile || holderInFile.stripeCustomerId === undefined || holderInFile.stripeCustomerId === customer) {
        at(`${tenant.path}.stripeCustomerId`, `Stripe customer already belongs to tenant "${holder}"`);
      }
    }
    for (const key of tenant.apiKeys) {
      const owner = existing.keys.get(key.keyHash)?.tenantId;
      if (owner !== undefined && owner !== tenant.id) {
        at(key.path, `key ${key.keyPrefix}… already belongs to tenant "${owner}"`);
      }
    }
  }
  // A Stripe price names one tier across the whole directory, not just this file: the webhook would map a
  // price held by two tiers to whichever comes first by id. Judged on the state after this apply.
  const pricesAfter = new Map(existing.pricesByTier);
  for (const tier of doc.tiers) if (tier.stripePrices !== undefined) pricesAfter.set(tier.id, tier.stripePrices);
  for (const tier of doc.tiers) {
    (tier.stripePrices ?? []).forEach((price, j) => {
      const other = [...pricesAfter].find(([id, prices]) => id !== tier.id && prices.includes(price))?.[0];
      if (other !== undefined) at(`${tier.path}.stripePrices[${j}]`, `Stripe price "${price}" already belongs to tier "${other}"`);
    });
  }
  return problems;
}

async function applyTiers(tx: Tx, fileTiers: readonly ApplyTier[], existing: Map<string, TierRow>, s: ApplySummary) {
  const created: (typeof tiers.$inferInsert)[] = [];
  for (const tier of fileTiers) {
    const values = tierValues(tier);
    const row = existing.get(tier.id);
    if (!row) {
      created.push({ id: tier.id, ...values, stripePrices: values.stripePrices ?? [] });
      s.tiers.created++;
      s.changes.push(`tier ${tier.id}: created`);
    } else if (tierDiffers(row, values)) {
      await tx.update(tiers).set({ ...values, updatedAt: sql`now()` }).where(eq(tiers.id, tier.id));
      s.tiers.updated++;
      s.changes.push(`tier ${tier.id}: updated`);
    } else {
      s.tiers.unchanged++;
    }
  }
  if (created.length) await tx.insert(tiers).values(created);
}

function tierValues(tier: ApplyTier) {
  return {
    readRateRequests: tier.readRateLimit?.requests ?? null,
    readRatePerSeconds: tier.readRateLimit?.perSeconds ?? null,
    quotaTotal: tier.monthlyQuota.total,
    quotaEndpoints: { ...tier.monthlyQuota.endpoints },
    alertThresholds: [...tier.alertThresholds],
    failurePolicy: tier.failurePolicy,
    // Undefined leaves the stored list alone (drizzle skips undefined fields in an update).
    stripePrices: tier.stripePrices === undefined ? undefined : [...tier.stripePrices],
  };
}

function tierDiffers(row: TierRow, v: ReturnType<typeof tierValues>): boolean {
  return (
    row.readRateRequests !== v.readRateRequests ||
    row.readRatePerSeconds !== v.readRatePerSeconds ||
    row.quotaTotal !== v.quotaTotal ||
    row.failurePolicy !== v.failurePolicy ||
    !sameRecord(row.quotaEndpoints, v.quotaEndpoints) ||
    !sameList(row.alertThresholds, v.alertThresholds) ||
    (v.stripePrices !== undefined && !sameList(row.stripePrices, v.stripePrices))
  );
}

async function applyTenants(
  tx: Tx,
  fileTenants: readonly ApplyTenant[],
  existing: Map<string, TenantRow>,
  s: ApplySummary,
) {
  const created: (typeof tenants.$inferInsert)[] = [];
  const updates: { id: string; set: Partial<typeof tenants.$inferInsert> }[] = [];
  for (const tenant of fileTenants) {
    const row = existing.get(tenant.id);
    if (!row) {
      created.push({
        id: tenant.id,
        tierId: tenant.tierId,
        status: tenant.status ?? 'active',
        stripeCustomerId: tenant.stripeCustomerId ?? null,
      });
      s.tenants.created++;
      s.changes.push(`tenant ${tenant.id}: created`);
      continue;
    }
    const set: Partial<typeof tenants.$inferInsert> = {};
    if (row.tierId !== tenant.tierId) set.tierId = tenant.tierId;
    if (tenant.status !== undefined && row.status !== tenant.status) set.status = tenant.status;
    if (tenant.stripeCustomerId !== undefined && row.stripeCustomerId !== tenant.stripeCustomerId) {
      set.stripeCustomerId = tenant.stripeCustomerId;
    }
    if (Object.keys(set).length === 0) {
      s.tenants.unchanged++;
      continue;
    }
    updates.push({ id: tenant.id, set });
    s.tenants.updated++;
    s.changes.push(`tenant ${tenant.id}: updated (${Object.keys(set).join(', ')})`);
  }
  // Customers may move between tenants in one file; the unique index would reject the intermediate state.
  const releasing = updates.filter((u) => 'stripeCustomerId' in u.set && existing.get(u.id)?.stripeCustomerId);
  if (releasing.length) {
    await tx
      .update(tenants)
      .set({ stripeCustomerId: null })
      .where(inArray(tenants.id, releasing.map((u) => u.id)));
  }
  for (const u of updates) {
    await tx.update(tenants).set({ ...u.set, updatedAt: sql`now()` }).where(eq(tenants.id, u.id));
  }
  if (created.length) await tx.insert(tenants).values(created);
}

async function applyKeys(tx: Tx, fileTenants: readonly ApplyTenant[], existing: Existing['keys'], s: ApplySummary) {
  const created: (typeof apiKeys.$inferInsert)[] = [];
  for (const tenant of fileTenants) {
    for (const key of tenant.apiKeys) {
      const row = existing.get(key.keyHash);
      const label = `key ${key.keyPrefix}… (tenant ${tenant.id})`;
      if (!row) {
        created.push({
          keyHash: key.keyHash,
          keyPrefix: key.keyPrefix,
          tenantId: tenant.id,
          name: key.name ?? null,
          expiresAt: toDate(key.expiresAtMs ?? null),
        });
        s.keys.imported++;
        s.changes.push(`${label}: imported`);
        continue;
      }
      const set = keyChanges(row, key);
      if (!set) {
        s.keys.unchanged++;
        continue;
      }
      await tx.update(apiKeys).set(set).where(eq(apiKeys.keyHash, key.keyHash));
      s.keys.updated++;
      s.changes.push(`${label}: updated (${Object.keys(set).join(', ')})`);
    }
  }
  for (let i = 0; i < created.length; i += INSERT_CHUNK) {
    await tx.insert(apiKeys).values(created.slice(i, i + INSERT_CHUNK));
  }
}

// Revocation is deliberately not touched: listing a revoked key in a file does not bring it back.
function keyChanges(row: { name: string | null; expiresAt: Date | null }, key: ApplyKey) {
  const set: { name?: string | null; expiresAt?: Date | null } = {};
  if (key.name !== undefined && row.name !== key.name) set.name = key.name;
  if (key.expiresAtMs !== undefined && (row.expiresAt?.getTime() ?? null) !== key.expiresAtMs) {
    set.expiresAt = toDate(key.expiresAtMs);
  }
  return Object.keys(set).length ? set : null;
}

function toDate(ms: number | null): Date | null {
  return ms === null ? null : new Date(ms);
}

function sameRecord(a: Record<string, number>, b: Record<string, number>): boolean {
  const ak = Object.keys(a);
  return ak.length === Object.keys(b).length && ak.every((k) => a[k] === b[k]);
}

function sameList<T>(a: readonly T[], b: readonly T[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function invalid(problems: string[], cause?: unknown): AppError {
  return new AppError('APPLY_INVALID', problems.join('\n'), { context: { problems }, cause });
}

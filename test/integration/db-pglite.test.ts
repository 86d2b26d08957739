// The embedded default: the same migrations, apply and directory on PGlite in a temporary folder.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyFile } from '../../src/admin/apply.js';
import { hashApiKey } from '../../src/core/api-key.js';
import { openDatabase, type DatabaseHandle } from '../../src/db/client.js';
import { runMigrations } from '../../src/db/migrate.js';
import { apiKeys } from '../../src/db/schema.js';
import { createPgDirectory } from '../../src/directory/pg-directory.js';
import { isAppError } from '../../src/errors.js';

const DEMO = fileURLToPath(new URL('../../config/demo-tenants.yaml', import.meta.url));
const FIXTURES = fileURLToPath(new URL('../fixtures/apply/', import.meta.url));

describe('PGlite directory', () => {
  let dir: string;
  let dataDir: string;
  let handle: DatabaseHandle;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ul-pglite-'));
    dataDir = join(dir, 'data', 'nested'); // openDatabase creates missing folders
    handle = await openDatabase({ dataDir });
  });

  afterAll(async () => {
    await handle?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('opens as pglite and applies the migrations (twice, and concurrently, without harm)', async () => {
    expect(handle.kind).toBe('pglite');
    await Promise.all([runMigrations(handle), runMigrations(handle)]);
    await runMigrations(handle);
    await handle.ping();
    expect(await createPgDirectory(handle).version()).toBe(0n);
  });

  it('applies the demo file idempotently and resolves its keys', async () => {
    const directory = createPgDirectory(handle);
    const first = await applyFile(handle, DEMO);
    expect(first.keys.imported).toBe(3);
    const version = await directory.version();
    expect(version).toBeGreaterThan(0n);

    const second = await applyFile(handle, DEMO);
    expect(second.tiers).toEqual({ created: 0, updated: 0, unchanged: 2 });
    expect(second.tenants).toEqual({ created: 0, updated: 0, unchanged: 3 });
    expect(second.keys).toEqual({ imported: 0, updated: 0, unchanged: 3 });
    expect(await directory.version()).toBe(version);

    const resolved = await directory.resolveMany([hashApiKey('vk_live_FREE_PLAN_KEY'), hashApiKey('vk_live_SUSPENDED_KEY')]);
    expect(resolved.get(hashApiKey('vk_live_FREE_PLAN_KEY'))).toMatchObject({
      revokedAtMs: null,
      expiresAtMs: null,
      tenant: { id: 'tenant_C_789', tierId: 'free', status: 'active', stripeCustomerId: null, billingAnchorMs: null },
      tier: {
        id: 'free',
        readRateLimit: { requests: 10, perSeconds: 60 },
        monthlyQuota: { total: null, endpoints: { '/verify': 100 } },
        alertThresholds: [0.8, 0.9, 1],
        failurePolicy: 'allow',
      },
    });
    expect(resolved.get(hashApiKey('vk_live_SUSPENDED_KEY'))?.tenant.status).toBe('suspended');

    const stored = await handle.db.select({ hash: apiKeys.keyHash, prefix: apiKeys.keyPrefix, name: apiKeys.name }).from(apiKeys);
    expect(JSON.stringify(stored)).not.toMatch(/FREE_PLAN_KEY|PRO_ALMOST_FULL_KEY|SUSPENDED_KEY/);
  });

  it('rejects a file whose tier exists nowhere, writing nothing', async () => {
    const directory = createPgDirectory(handle);
    const version = await directory.version();
    const err = await applyFile(handle, join(FIXTURES, 'tenant-tier-unknown.yaml')).catch((e: unknown) => e);
    expect(isAppError(err, 'APPLY_INVALID')).toBe(true);
    expect((await directory.resolveMany([hashApiKey('vk_live_TIER_UNKNOWN_OK_KEY')])).size).toBe(0);
    expect(await directory.version()).toBe(version);
  });

  it('runs the version triggers (plpgsql) on hand-written SQL', async () => {
    const directory = createPgDirectory(handle);
    const v0 = await directory.version();
    await handle.db.execute(sql`update tiers set quota_total = 5 where id = 'pro'`);
    expect(await directory.version()).toBe(v0 + 1n);
    await handle.db.execute(sql`update tiers set quota_total = 5 where id = 'no_such_tier'`);
    expect(await directory.version()).toBe(v0 + 1n);
    await handle.db.execute(sql`update api_keys set revoked_at = now() where key_hash = ${hashApiKey('vk_live_FREE_PLAN_KEY')}`);
    expect(await directory.version()).toBe(v0 + 2n);
    const revoked = await directory.resolveMany([hashApiKey('vk_live_FREE_PLAN_KEY')]);
    expect(revoked.get(hashApiKey('vk_live_FREE_PLAN_KEY'))?.revokedAtMs).toBeTypeOf('number');
  });

  it('sees hand-written edits that leave updated_at alone, and keeps one object while nothing the Check reads changed', async () => {
    const directory = createPgDirectory(handle);
    const hash = hashApiKey('vk_live_PRO_ALMOST_FULL_KEY');
    const resolve = async () => (await directory.resolveMany([hash])).get(hash)!;
    const before = await resolve();
    const again = await resolve();
    expect(again.tier).toBe(before.tier);
    expect(again.tenant).toBe(before.tenant);
    // As an operator in psql would: updated_at is not touched, and no trigger sets it.
    await handle.db.execute(sql`update tiers set quota_total = ${(before.tier.monthlyQuota.total ?? 0) + 7} where id = ${before.tier.id}`);
    await handle.db.execute(sql`update tenants set status = 'suspended' where id = ${before.tenant.id}`);
    const after = await resolve();
    expect(after.tier.monthlyQuota.total).toBe((before.tier.monthlyQuota.total ?? 0) + 7);
    expect(after.tenant.status).toBe('suspended');
    expect(after.tier).not.toBe(before.tier); // what lifts a denial the deny memory holds under the old tier
    // A column the Check does not read leaves the objects as they were.
    await handle.db.execute(sql`update tiers set stripe_prices = '["price_probe"]'::jsonb where id = ${before.tier.id}`);
    expect((await resolve()).tier).toBe(after.tier);
    await handle.db.execute(sql`update tenants set status = 'active' where id = ${before.tenant.id}`);
    expect((await resolve()).tenant.status).toBe('active');
  });

  it('keeps its data on disk across a reopen', async () => {
    const before = await createPgDirectory(handle).version();
    await handle.close();
    await handle.close(); // a second close is harmless
    handle = await openDatabase({ dataDir });
    await runMigrations(handle);
    const directory = createPgDirectory(handle);
    expect(await directory.version()).toBe(before);
    expect((await directory.resolveMany([hashApiKey('vk_live_PRO_ALMOST_FULL_KEY')])).size).toBe(1);
  });
});

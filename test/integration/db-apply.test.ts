// Migrations, `apply`, the directory and the version triggers against a real Postgres (a database of its own).
import { fileURLToPath } from 'node:url';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyDocument, applyFile, parseApplyFile } from '../../src/admin/apply.js';
import { displayPrefix, hashApiKey } from '../../src/core/api-key.js';
import { openDatabase, type DatabaseHandle } from '../../src/db/client.js';
import { runMigrations } from '../../src/db/migrate.js';
import { createPgDirectory } from '../../src/directory/pg-directory.js';
import type { TenantDirectory } from '../../src/directory/types.js';
import { isAppError } from '../../src/errors.js';
import { createTestDatabase, hasPostgres } from '../helpers/services.js';

const DEMO = fileURLToPath(new URL('../../config/demo-tenants.yaml', import.meta.url));
const FIXTURES = fileURLToPath(new URL('../fixtures/apply/', import.meta.url));
const DEMO_KEYS = ['vk_live_FREE_PLAN_KEY', 'vk_live_PRO_ALMOST_FULL_KEY', 'vk_live_SUSPENDED_KEY'];

const pgAvailable = await hasPostgres();

describe.skipIf(!pgAvailable)('Postgres directory', () => {
  let testDb: { url: string; drop: () => Promise<void> };
  let handle: DatabaseHandle;
  let raw: postgres.Sql;
  let directory: TenantDirectory;
  let tmp: string;

  beforeAll(async () => {
    testDb = await createTestDatabase('db_apply');
    handle = await openDatabase({ url: testDb.url });
    raw = postgres(testDb.url, { max: 1, onnotice: () => {} });
    directory = createPgDirectory(handle);
    tmp = mkdtempSync(join(tmpdir(), 'ul-apply-'));
  });

  afterAll(async () => {
    await raw?.end();
    await handle?.close();
    await testDb?.drop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  /** Every row of every directory table, as Postgres renders it. */
  async function snapshot(): Promise<string> {
    const rows = await raw.unsafe(`
      select 'tiers' as t, row_to_json(x)::text as r from tiers x
      union all select 'tenants', row_to_json(x)::text from tenants x
      union all select 'api_keys', row_to_json(x)::text from api_keys x
      union all select 'directory_version', row_to_json(x)::text from directory_version x
      order by 1, 2`);
    return JSON.stringify(rows);
  }

  function writeYaml(name: string, text: string): string {
    const path = join(tmp, name);
    writeFileSync(path, text);
    return path;
  }

  it('applies the migrations, also when several replicas start at once', async () => {
    const other = await openDatabase({ url: testDb.url });
    try {
      await Promise.all([runMigrations(handle), runMigrations(other), runMigrations(handle)]);
    } finally {
      await other.close();
    }
    await runMigrations(handle);
    const tables = await raw`
      select table_name from information_schema.tables where table_schema = 'public' order by table_name`;
    expect(tables.map((r) => r.table_name)).toEqual(['alert_outbox', 'api_keys', 'directory_version', 'stripe_events', 'tenants', 'tiers', 'usage_reports']);
    const triggers = await raw`select count(*)::int as n from information_schema.triggers where trigger_schema = 'public'`;
    expect(triggers[0]?.n).toBeGreaterThanOrEqual(9);
    expect(await directory.version()).toBe(0n);
    await directory.ping();
  });

  it('applies the demo file, and applying it again changes nothing', async () => {
    const first = await applyFile(handle, DEMO);
    expect(first.tiers).toEqual({ created: 2, updated: 0, unchanged: 0 });
    expect(first.tenants).toEqual({ created: 3, updated: 0, unchanged: 0 });
    expect(first.keys).toEqual({ imported: 3, updated: 0, unchanged: 0 });
    const version = await directory.version();
    expect(version).toBeGreaterThan(0n);
    const before = await snapshot();

    const second = await applyFile(handle, DEMO);
    expect(second).toEqual({
      tiers: { created: 0, updated: 0, unchanged: 2 },
      tenants: { created: 0, updated: 0, unchanged: 3 },
      keys: { imported: 0, updated: 0, unchanged: 3 },
      changes: [],
    });
    expect(await directory.version()).toBe(version);
    expect(await snapshot()).toBe(before); // not even updated_at moved
  });

  it('stores keys only as hashes and display prefixes', async () => {
    const rows = await raw.unsafe(`select row_to_json(k)::text as r from api_keys k`);
    const text = JSON.stringify(rows);
    const all = await raw.unsafe(`
      select row_to_json(x)::text as r from tiers x union all select row_to_json(x)::text from tenants x`);
    for (const key of DEMO_KEYS) {
      expect(text).not.toContain(key);
      expect(JSON.stringify(all)).not.toContain(key);
    }
    const keys = await raw`select key_hash, key_prefix from api_keys order by key_prefix`;
    expect(keys.map((k) => k.key_hash).sort()).toEqual(DEMO_KEYS.map(hashApiKey).sort());
    for (const key of DEMO_KEYS) {
      const row = keys.find((k) => k.key_hash === hashApiKey(key));
      expect(row?.key_prefix).toBe(displayPrefix(key));
    }
  });

  it('rejects a bad file as a whole and writes nothing', async () => {
    const before = await snapshot();
    const invalidPath = join(FIXTURES, 'several-problems.yaml');
    const err = await applyFile(handle, invalidPath).catch((e: unknown) => e);
    expect(isAppError(err, 'APPLY_INVALID')).toBe(true);
    expect((err as Error).message.split('\n')).toHaveLength(10);

    // Well-formed, but its second tenant references a tier that exists nowhere: the first tenant is not written.
    const unknownTier = join(FIXTURES, 'tenant-tier-unknown.yaml');
    const err2 = await applyFile(handle, unknownTier).catch((e: unknown) => e);
    expect(isAppError(err2, 'APPLY_INVALID')).toBe(true);
    expect((err2 as Error).message).toBe(
      `${unknownTier}: tenants[1].tier: tier "platinum" is not defined in this file or in the database`,
    );

    // A key that already belongs to another tenant, plus an otherwise valid new tier.
    const stolen = writeYaml(
      'stolen.yaml',
      'tiers:\n  - id: gold\ntenants:\n  - id: tenant_E_111\n    tier: gold\n    apiKeys: [vk_live_FREE_PLAN_KEY]\n',
    );
    const err3 = await applyFile(handle, stolen).catch((e: unknown) => e);
    expect((err3 as Error).message).toBe(
      `${stolen}: tenants[0].apiKeys[0]: key ${displayPrefix('vk_live_FREE_PLAN_KEY')}… already belongs to tenant "tenant_C_789"`,
    );
    expect((err3 as Error).message).not.toContain('vk_live_FREE_PLAN_KEY');

    const missing = await applyFile(handle, join(tmp, 'nope.yaml')).catch((e: unknown) => e);
    expect(isAppError(missing, 'APPLY_INVALID')).toBe(true);

    expect(await snapshot()).toBe(before);
  });

  it('uses tiers that exist only in the database, and updates what changed', async () => {
    const v0 = await directory.version();
    const path = writeYaml(
      'update.yaml',
      [
        'tiers:',
        '  - id: free',
        '    readRateLimit: { requests: 20, perSeconds: 60 }', // was 10
        '    monthlyQuota: { endpoints: { /verify: 100 } }',
        'tenants:',
        '  - id: tenant_C_789',
        '    tier: pro', // defined only in the database
        '    stripeCustomerId: cus_C',
        '    apiKeys:',
        '      - { key: vk_live_FREE_PLAN_KEY, name: main, expiresAt: "2030-01-01T00:00:00Z" }',
        '      - vk_live_SECOND_KEY_FOR_C',
        '  - id: tenant_S_000', // status omitted: stays suspended
        '    tier: free',
      ].join('\n'),
    );
    const summary = await applyFile(handle, path);
    expect(summary.tiers).toEqual({ created: 0, updated: 1, unchanged: 0 });
    expect(summary.tenants).toEqual({ created: 0, updated: 1, unchanged: 1 });
    expect(summary.keys).toEqual({ imported: 1, updated: 1, unchanged: 0 });
    expect(summary.changes.join('\n')).not.toMatch(/FREE_PLAN_KEY|SECOND_KEY_FOR_C/);
    expect(await directory.version()).toBeGreaterThan(v0);

    const resolved = await directory.resolveMany([hashApiKey('vk_live_FREE_PLAN_KEY'), hashApiKey('vk_live_SUSPENDED_KEY')]);
    const c = resolved.get(hashApiKey('vk_live_FREE_PLAN_KEY'));
    expect(c?.tenant).toMatchObject({ id: 'tenant_C_789', tierId: 'pro', stripeCustomerId: 'cus_C' });
    expect(c?.expiresAtMs).toBe(Date.UTC(2030, 0, 1));
    expect(resolved.get(hashApiKey('vk_live_SUSPENDED_KEY'))?.tenant.status).toBe('suspended');

    // Moving a Stripe customer between tenants in one file is allowed despite the unique index.
    const swap = writeYaml(
      'swap.yaml',
      'tenants:\n  - id: tenant_E_111\n    tier: pro\n    stripeCustomerId: cus_C\n  - id: tenant_C_789\n    tier: pro\n    stripeCustomerId: null\n',
    );
    expect((await applyFile(handle, swap)).tenants.updated).toBe(2);
    const taken = writeYaml('taken.yaml', 'tenants:\n  - id: tenant_S_000\n    tier: free\n    stripeCustomerId: cus_C\n');
    const err = await applyFile(handle, taken).catch((e: unknown) => e);
    expect((err as Error).message).toBe(
      `${taken}: tenants[0].stripeCustomerId: Stripe customer already belongs to tenant "tenant_E_111"`,
    );

    // A Stripe price held by a tier in the database cannot go to another tier in a later file.
    await applyFile(handle, writeYaml('gold.yaml', 'tiers:\n  - id: gold\n    stripePrices: [gold_monthly]\n'));
    const stolen = writeYaml('platinum.yaml', 'tiers:\n  - id: platinum\n    stripePrices: [platinum_monthly, gold_monthly]\n');
    const priceErr = await applyFile(handle, stolen).catch((e: unknown) => e);
    expect((priceErr as Error).message).toBe(`${stolen}: tiers[0].stripePrices[1]: Stripe price "gold_monthly" already belongs to tier "gold"`);
    // Moving it in the same file, off the tier that held it, is fine.
    const moved = writeYaml('move.yaml', 'tiers:\n  - id: gold\n    stripePrices: []\n  - id: platinum\n    stripePrices: [gold_monthly]\n');
    expect((await applyFile(handle, moved)).tiers.created).toBe(1);
  });

  it('resolves keys to tenant and tier, passing revocation, expiry and billing anchor through', async () => {
    await raw`update api_keys set revoked_at = '2026-02-03T04:05:06Z' where key_hash = ${hashApiKey('vk_live_SECOND_KEY_FOR_C')}`;
    await raw`update api_keys set expires_at = '2020-01-01T00:00:00Z' where key_hash = ${hashApiKey('vk_live_PRO_ALMOST_FULL_KEY')}`;
    await raw`update tenants set billing_anchor = '2026-01-15T00:00:00Z' where id = 'tenant_E_111'`;

    const hashes = [...DEMO_KEYS, 'vk_live_SECOND_KEY_FOR_C', 'unknown'].map(hashApiKey);
    const resolved = await directory.resolveMany([...hashes, hashes[0] ?? '']);
    expect(resolved.size).toBe(4);
    expect(resolved.has(hashApiKey('unknown'))).toBe(false);

    const e = resolved.get(hashApiKey('vk_live_PRO_ALMOST_FULL_KEY'));
    expect(e).toMatchObject({
      keyPrefix: displayPrefix('vk_live_PRO_ALMOST_FULL_KEY'),
      expiresAtMs: Date.UTC(2020, 0, 1),
      revokedAtMs: null,
      tenant: { id: 'tenant_E_111', tierId: 'pro', status: 'active', billingAnchorMs: Date.UTC(2026, 0, 15) },
      tier: {
        id: 'pro',
        readRateLimit: { requests: 1000, perSeconds: 60 },
        monthlyQuota: { total: null, endpoints: { '/verify': 10 } },
        alertThresholds: [0.8, 0.9, 1],
        failurePolicy: 'allow',
      },
    });
    expect(e?.keyId).toMatch(/^[0-9a-f-]{36}$/);
    expect(resolved.get(hashApiKey('vk_live_SECOND_KEY_FOR_C'))?.revokedAtMs).toBe(Date.UTC(2026, 1, 3, 4, 5, 6));
    expect(resolved.get(hashApiKey('vk_live_SUSPENDED_KEY'))?.tier).toMatchObject({
      id: 'free',
      readRateLimit: { requests: 20, perSeconds: 60 },
    });
    expect(await directory.resolveMany([])).toEqual(new Map());
  });

  it('bumps the version on any insert, update or delete, including hand-written SQL', async () => {
    const bumps = async (statement: string): Promise<bigint> => {
      const before = await directory.version();
      await raw.unsafe(statement);
      return (await directory.version()) - before;
    };
    expect(await bumps(`update tiers set quota_total = 500 where id = 'free'`)).toBe(1n);
    expect(await bumps(`insert into tiers (id) values ('scratch_a'), ('scratch_b')`)).toBe(1n); // per statement
    expect(await bumps(`insert into tenants (id, tier_id) values ('tenant_scratch', 'scratch_a')`)).toBe(1n);
    expect(
      await bumps(
        `insert into api_keys (key_hash, key_prefix, tenant_id) values ('${hashApiKey('vk_scratch_key_1')}', 'vk_scr', 'tenant_scratch')`,
      ),
    ).toBe(1n);
    expect(await bumps(`update api_keys set name = 'x' where tenant_id = 'tenant_scratch'`)).toBe(1n);
    expect(await bumps(`update tenants set status = 'suspended' where id = 'tenant_scratch'`)).toBe(1n);
    // Cascades to api_keys: one bump per table's statement.
    expect(await bumps(`delete from tenants where id = 'tenant_scratch'`)).toBe(2n);
    expect(await bumps(`delete from tiers where id like 'scratch_%'`)).toBe(1n);
    // Statements that change no rows leave replicas alone.
    expect(await bumps(`update tiers set quota_total = 1 where id = 'no_such_tier'`)).toBe(0n);
    expect(await bumps(`delete from api_keys where tenant_id = 'no_such_tenant'`)).toBe(0n);
  });

  it('serialises concurrent applies of the same document', async () => {
    const parsed = parseApplyFile(
      'tiers:\n  - id: racing\ntenants:\n  - id: tenant_race\n    tier: racing\n    apiKeys: [vk_live_RACING_KEY_1]\n',
      'race.yaml',
    );
    if (!parsed.ok) throw new Error(parsed.problems.join('\n'));
    const [a, b] = await Promise.all([applyDocument(handle, parsed.doc), applyDocument(handle, parsed.doc)]);
    expect([a.tiers.created + b.tiers.created, a.tiers.unchanged + b.tiers.unchanged]).toEqual([1, 1]);
    expect([a.keys.imported + b.keys.imported, a.keys.unchanged + b.keys.unchanged]).toEqual([1, 1]);
  });

  it('rejects rows the Check could not enforce, even from hand-written SQL', async () => {
    await expect(raw`insert into tiers (id, read_rate_requests) values ('bad1', 10)`).rejects.toThrow(/both_or_neither/);
    await expect(raw`insert into tiers (id, quota_total) values ('bad2', 0)`).rejects.toThrow(/quota_total_positive/);
    await expect(raw`insert into tiers (id, failure_policy) values ('bad3', 'open')`).rejects.toThrow(/failure_policy/);
    await expect(raw`update tenants set status = 'gone' where id = 'tenant_C_789'`).rejects.toThrow(/tenants_status/);
    await expect(raw`insert into directory_version (id, version) values (2, 0)`).rejects.toThrow(/single_row/);
  });
});

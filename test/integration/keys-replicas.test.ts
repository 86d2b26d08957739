// The key lifecycle through the real CLI, against two server processes sharing one database (two replicas).
// The version poll is set to a minute, so what makes a change reach both replicas within about a second
// here is LISTEN/NOTIFY alone.
import path from 'node:path';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tenantWebhookSecret } from '../../src/alerts/webhook.js';
import { hashApiKey } from '../../src/core/api-key.js';
import { checker, cli, startServerProcess, type Checker, type ServerProcess } from '../helpers/server-process.js';
import { createTestDatabase, hasPostgres } from '../helpers/services.js';

const services = await hasPostgres();
const TENANTS = path.resolve('test/fixtures/tenants/policies.yaml');
// POST to an unmetered path: only the key decides (no read-rate limit, no quota).
const probe = { method: 'POST', path: '/anything' };

async function until(what: string, cond: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const started = performance.now();
  while (!(await cond())) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return performance.now() - started;
}

describe.skipIf(!services)('keys CLI with two replicas', () => {
  let db: { url: string; drop: () => Promise<void> };
  let env: Record<string, string>;
  let servers: ServerProcess[] = [];
  let clients: Checker[] = [];
  const issued: string[] = [];

  const statusOnBoth = (key: string) => Promise.all(clients.map((c) => c.status({ key, ...probe })));

  beforeAll(async () => {
    db = await createTestDatabase('keys');
    // A generous CHECK_TIMEOUT_MS: a new key's first lookup must not meet the 100 ms budget on a busy machine
    // (that would be a 503, the documented answer, but not what this test is about).
    env = { DATABASE_URL: db.url, APPLY_ON_START: TENANTS, DIRECTORY_POLL_MS: '60000', LOG_LEVEL: 'info', CHECK_TIMEOUT_MS: '2000' };
    servers = await Promise.all([startServerProcess(env), startServerProcess(env)]);
    clients = servers.map((s) => checker(s.grpcPort));
  }, 60_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    const codes = await Promise.all(servers.map((s) => s.terminate()));
    expect(codes).toEqual(servers.map(() => 0));
    // No plaintext key ever reached a log.
    for (const s of servers) for (const k of issued) expect(s.output()).not.toContain(k);
    await db?.drop();
  });

  it('create prints the key once; it works on both replicas and is stored only as a hash', async () => {
    const { stdout, stderr } = await cli(['keys', 'create', '--tenant', 'tenant_lenient', '--name', 'ci'], env);
    const key = stdout.trim();
    issued.push(key);
    expect(key).toMatch(/^ul_live_[A-Za-z0-9_-]{43}$/);
    expect(stderr).toContain(`Created key ${key.slice(0, 16)}…`);
    expect(stderr).toContain('shown only this once');
    expect(await statusOnBoth(key)).toEqual([200, 200]);

    const sql = postgres(db.url, { max: 1 });
    const rows = await sql`select key_hash, key_prefix, name from api_keys where key_prefix = ${key.slice(0, 16)}`;
    await sql.end();
    expect(rows).toEqual([{ key_hash: hashApiKey(key), key_prefix: key.slice(0, 16), name: 'ci' }]);
  });

  it('list shows prefixes, names, dates and status, never a key or a hash', async () => {
    const key = issued[0]!;
    const table = (await cli(['keys', 'list', '--tenant', 'tenant_lenient'], env)).stdout;
    expect(table.split('\n')[0]).toMatch(/^ID\s+PREFIX\s+NAME\s+CREATED\s+EXPIRES\s+STATUS$/);
    expect(table).toMatch(new RegExp(`${key.slice(0, 16)}\\s+ci\\s+\\d{4}-\\d\\d-\\d\\dT\\S+\\s+-\\s+active`));
    expect(table).not.toContain(key);
    expect(table).not.toContain(hashApiKey(key));
    const json = JSON.parse((await cli(['keys', 'list', '--tenant', 'tenant_lenient', '--json'], env)).stdout) as Array<Record<string, unknown>>;
    expect(json.map((k) => k.prefix)).toContain(key.slice(0, 16));
    expect(Object.keys(json[0]!).sort()).toEqual(['createdAt', 'expiresAt', 'id', 'name', 'prefix', 'revokedAt', 'status', 'tenantId']);
  });

  it('rotate: the new key works at once, the old one until its grace period ends, on both replicas', async () => {
    const old = issued[0]!;
    const { stdout, stderr } = await cli(['keys', 'rotate', old.slice(0, 16), '--grace', '2s'], env);
    const fresh = stdout.trim();
    issued.push(fresh);
    expect(stderr).toMatch(/stays valid until \d{4}-/);
    expect(await statusOnBoth(fresh)).toEqual([200, 200]);
    expect(await statusOnBoth(old)).toEqual([200, 200]);
    const listed = (await cli(['keys', 'list', '--tenant', 'tenant_lenient'], env)).stdout;
    expect(listed).toMatch(new RegExp(`${old.slice(0, 16)}\\s+ci\\s+.*valid until`));
    await until('the old key to expire on both', async () => (await statusOnBoth(old)).every((s) => s === 401), 5_000);
    expect(await statusOnBoth(fresh)).toEqual([200, 200]);
  });

  it('revoke: both replicas refuse the key within a second (NOTIFY, with the poll at a minute)', async () => {
    const key = issued[1]!;
    expect(await statusOnBoth(key)).toEqual([200, 200]);
    await cli(['keys', 'revoke', key.slice(0, 16)], env);
    const ms = await until('both replicas to refuse the revoked key', async () => (await statusOnBoth(key)).every((s) => s === 401), 1_000);
    console.log(`revoked key refused by both replicas ${ms.toFixed(0)} ms after the CLI exited`);
    expect(ms).toBeLessThan(1_000);
  });

  it('expiry: a key created with --expires stops working at that time', async () => {
    const expires = new Date(Date.now() + 4_000).toISOString();
    const key = (await cli(['keys', 'create', '--tenant', 'tenant_strict', '--expires', expires], env)).stdout.trim();
    issued.push(key);
    expect(await statusOnBoth(key)).toEqual([200, 200]);
    await until('the key to expire', async () => (await statusOnBoth(key)).every((s) => s === 401), 8_000);
  });

  it('alerts webhook sets a tenant\'s own webhook; alerts secret prints the secret it verifies with', async () => {
    const sql = postgres(db.url, { max: 1 });
    const url = async () => (await sql`select alert_webhook_url from tenants where id = 'tenant_strict'`)[0]?.alert_webhook_url as string | null;
    try {
      await cli(['alerts', 'webhook', '--tenant', 'tenant_strict', '--url', 'https://hooks.example/strict'], env);
      expect(await url()).toBe('https://hooks.example/strict');
      const secret = (await cli(['alerts', 'secret', '--tenant', 'tenant_strict'], { ...env, ALERT_WEBHOOK_SECRET: 'whsec_cli' })).stdout.trim();
      expect(secret).toBe(tenantWebhookSecret('whsec_cli', 'tenant_strict'));
      await cli(['alerts', 'webhook', '--tenant', 'tenant_strict', '--clear'], env);
      expect(await url()).toBeNull();
    } finally {
      await sql.end();
    }
  });

  it('hand-written SQL that leaves updated_at alone reaches both replicas: a suspension, then its end', async () => {
    const sql = postgres(db.url, { max: 1, onnotice: () => {} });
    const key = 'ul_test_LENIENT_KEY_0001';
    try {
      expect(await statusOnBoth(key)).toEqual([200, 200]);
      await sql`update tenants set status = 'suspended' where id = 'tenant_lenient'`;
      await until('both replicas to refuse the suspended tenant', async () => (await statusOnBoth(key)).every((s) => s === 403), 2_000);
      await sql`update tenants set status = 'active' where id = 'tenant_lenient'`;
      await until('both replicas to serve the tenant again', async () => (await statusOnBoth(key)).every((s) => s === 200), 2_000);
    } finally {
      await sql.end();
    }
  });

  it('says what is wrong, and changes nothing, on bad input', async () => {
    const fail = (args: string[]) => cli(args, env).then(() => ({ code: 0, stderr: '' }), (e: { code: number; stderr: string }) => e);
    expect(await fail(['keys', 'create', '--tenant', 'tenant_nobody'])).toMatchObject({ code: 1, stderr: expect.stringContaining('tenant "tenant_nobody" does not exist') });
    expect(await fail(['keys', 'revoke', 'ul_live_NOPE0000'])).toMatchObject({ code: 1, stderr: expect.stringContaining('no key matches') });
    expect(await fail(['keys', 'create', '--tenant', 'tenant_strict', '--expires', '2020-01-01'])).toMatchObject({ code: 1, stderr: expect.stringContaining('ISO 8601') });
    expect(await fail(['keys', 'rotate', issued[1]!.slice(0, 16)])).toMatchObject({ code: 1, stderr: expect.stringContaining('is revoked') });
    expect(await fail(['alerts', 'webhook', '--tenant', 'tenant_strict', '--url', 'ftp://x'])).toMatchObject({ code: 1, stderr: expect.stringContaining('http:// or https://') });
    expect(await fail(['alerts', 'secret', '--tenant', 'tenant_strict'])).toMatchObject({ code: 1, stderr: expect.stringContaining('ALERT_WEBHOOK_SECRET is not set') });
  });
});

// Tests that need Redis or Postgres call these. Locally a missing service skips the suite; in CI
// (REQUIRE_SERVICES=1) it fails, so a green run always means the real services were exercised.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import postgres from 'postgres';

export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
export const TEST_PG_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const REQUIRED = process.env.REQUIRE_SERVICES === '1';

function reachable(url: string, defaultPort: number): Promise<boolean> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const sock = net.connect({ host: u.hostname, port: Number(u.port || defaultPort) });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

async function available(name: string, url: string, port: number): Promise<boolean> {
  const ok = await reachable(url, port);
  if (!ok && REQUIRED) throw new Error(`${name} is required (REQUIRE_SERVICES=1) but ${url} is unreachable`);
  if (!ok) console.warn(`${name} unreachable at ${url}: skipping tests that need it`);
  return ok;
}

export const hasRedis = (): Promise<boolean> => available('Redis', TEST_REDIS_URL, 6379);
export const hasPostgres = (): Promise<boolean> => available('Postgres', TEST_PG_URL, 5432);

/** A key prefix of the test's own, so parallel test files never touch each other's (or real) keys. */
export function testPrefix(label: string): string {
  return `test:${label}:${randomBytes(4).toString('hex')}:`;
}

/** Deletes every key under a test's own prefix (never FLUSHDB: the Redis is shared). */
export async function dropKeysWithPrefix(redis: { keys(p: string): Promise<string[]>; del(...k: string[]): Promise<number> }, prefix: string): Promise<void> {
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length) await redis.del(...keys);
}

/** Creates a fresh database for one test file; `drop()` removes it. */
export async function createTestDatabase(label: string): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `ul_${label.replace(/[^a-z0-9]/gi, '_').toLowerCase()}_${randomBytes(4).toString('hex')}`;
  const admin = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE ${name}`);
  await admin.end();
  const u = new URL(TEST_PG_URL);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    drop: async () => {
      const a = postgres(TEST_PG_URL, { max: 1, onnotice: () => {} });
      await a.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await a.end();
    },
  };
}

import { describe, expect, it } from 'vitest';
import { DEMO_TENANTS_FILE, describeConfig, loadConfig } from '../../src/config/env.js';
import { problems } from '../helpers/config-problems.js';

describe('loadConfig', () => {
  it('has a default for everything, embedded stores and the demo tenants', () => {
    const c = loadConfig({});
    expect(c).toMatchObject({ grpcPort: 9191, httpPort: 8081, databaseUrl: undefined, redisUrl: undefined, applyOnStart: DEMO_TENANTS_FILE, checkTimeoutMs: 100 });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('does not apply demo tenants to a real database unless asked', () => {
    expect(loadConfig({ DATABASE_URL: 'postgres://x@h/db' }).applyOnStart).toBeUndefined();
  });

  it.each([
    [{ GRPC_PORT: 'abc' }, 'GRPC_PORT'],
    [{ HTTP_PORT: '70000' }, 'HTTP_PORT'],
    [{ DATABASE_URL: 'mysql://x' }, 'DATABASE_URL'],
    [{ REDIS_URL: 'localhost:6379' }, 'REDIS_URL'],
    [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
    [{ CHECK_TIMEOUT_MS: '0' }, 'CHECK_TIMEOUT_MS'],
    [{ MIGRATE_ON_START: 'maybe' }, 'MIGRATE_ON_START'],
    [{ STRIPE_API_BASE: 'not a url' }, 'STRIPE_API_BASE'],
    [{ STRIPE_METERS: '{"/verify": 3}' }, 'STRIPE_METERS'],
    [{ ALERT_WEBHOOK_URL: 'nope' }, 'ALERT_WEBHOOK_URL'],
    // Set to nothing or to a non-decimal: not a silent 0 (a random port) or a hex reading.
    [{ GRPC_PORT: '' }, 'GRPC_PORT'],
    [{ HTTP_PORT: '0x1F91' }, 'HTTP_PORT'],
    [{ DENY_MEMORY_MS: ' ' }, 'DENY_MEMORY_MS'],
    [{ DIRECTORY_POLL_MS: '3000000000' }, 'DIRECTORY_POLL_MS'],
    [{ DATABASE_URL: 'postgres://user:pa/ss@db:5432/app' }, 'DATABASE_URL'],
  ])('%o is rejected naming %s', (env, name) => {
    const p = problems(env as Record<string, string>);
    expect(p).toHaveLength(1);
    expect(p[0]).toMatch(new RegExp(`^${name}: `));
  });

  it('lists every bad variable at once and never echoes values', () => {
    const p = problems({ GRPC_PORT: 'x', DATABASE_URL: 'mysql://user:s3cret@h/db' });
    expect(p.map((l) => l.split(':')[0])).toEqual(['GRPC_PORT', 'DATABASE_URL']);
    expect(p.join('\n')).not.toContain('s3cret');
  });

  it('describeConfig masks secrets and passwords', () => {
    const c = loadConfig({ DATABASE_URL: 'postgres://u:pw@h/db', REDIS_URL: 'redis://:rpw@h:6379', STRIPE_SECRET_KEY: 'sk_test_123', STRIPE_WEBHOOK_SECRET: 'whsec_1', ALERT_WEBHOOK_SECRET: 'alertsec_1' });
    const text = JSON.stringify(describeConfig(c));
    for (const secret of ['pw@', 'rpw', 'sk_test_123', 'whsec_1', 'alertsec_1']) expect(text).not.toContain(secret);
  });
});

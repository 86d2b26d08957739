import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { formatKeyTable } from '../../src/cli/keys-command.js';
import type { ResolvedKey } from '../../src/core/types.js';
import { KeyCache } from '../../src/directory/key-cache.js';
import type { TenantDirectory } from '../../src/directory/types.js';
import { generateKey, parseDuration, parseInstant } from '../../src/keys/key-admin.js';
import { FREE, resolved, tenant } from '../helpers/fixtures.js';

const A = resolved(tenant('a', 'free'), FREE);

describe('generated keys', () => {
  it('are ul_live_ plus 256 random bits, with a 16-character display prefix', () => {
    const keys = Array.from({ length: 100 }, generateKey);
    for (const k of keys) {
      expect(k.plaintext).toMatch(/^ul_live_[A-Za-z0-9_-]{43}$/);
      expect(k.prefix).toBe(k.plaintext.slice(0, 16));
      // A display prefix never reveals more than a third of the key.
      expect(k.prefix.length * 3).toBeLessThanOrEqual(k.plaintext.length);
    }
    expect(new Set(keys.map((k) => k.prefix)).size).toBe(100);
  });
});

describe('durations and instants', () => {
  it.each([
    ['24h', 86_400_000],
    ['15m', 900_000],
    ['90s', 90_000],
    ['7d', 604_800_000],
    ['500ms', 500],
    ['0', 0],
    ['30', 30_000],
    ['1.5h', 5_400_000],
  ])('%s is %d ms', (text, ms) => expect(parseDuration(text)).toBe(ms));

  it.each(['', '1w', '-5m', 'soon', '24 h'])('rejects duration %o', (text) => expect(() => parseDuration(text)).toThrow(/not a duration/));

  it('takes instants only with an explicit zone', () => {
    expect(parseInstant('2027-01-01T00:00:00Z', '--expires').toISOString()).toBe('2027-01-01T00:00:00.000Z');
    expect(parseInstant('2027-01-01T02:00:00+02:00', '--expires').toISOString()).toBe('2027-01-01T00:00:00.000Z');
    expect(() => parseInstant('2027-01-01', '--expires')).toThrow(/--expires must be an ISO 8601 time with a zone/);
    expect(() => parseInstant('2027-13-45T00:00:00Z', '--expires')).toThrow(/not a valid time/);
  });
});

describe('keys list table', () => {
  it('shows status in words, and aligns columns', () => {
    const base = { tenantId: 't', name: 'ci', createdAt: new Date('2025-09-01T00:00:00Z'), expiresAt: null, revokedAt: null };
    const text = formatKeyTable([
      { ...base, id: 'id-1', prefix: 'ul_live_AAAAAAAA', status: 'active' },
      { ...base, id: 'id-2', prefix: 'ul_live_BBBBBBBB', name: null, status: 'revoking', revokedAt: new Date('2025-09-02T00:00:00Z') },
      { ...base, id: 'id-3', prefix: 'ul_live_CCCCCCCC', status: 'revoked', revokedAt: new Date('2025-09-01T12:00:00Z') },
    ]);
    const lines = text.split('\n');
    expect(lines[1]).toMatch(/^id-1\s+ul_live_AAAAAAAA\s+ci\s+2025-09-01T00:00:00.000Z\s+-\s+active$/);
    expect(lines[2]).toMatch(/\s-\s+.*valid until 2025-09-02T00:00:00.000Z$/);
    expect(lines[3]).toMatch(/revoked 2025-09-01T12:00:00.000Z$/);
    expect(new Set(lines.map((l) => l.indexOf('ul_live_') === -1 ? l.indexOf('PREFIX') : l.indexOf('ul_live_'))).size).toBe(1);
  });
});

describe('KeyCache change notifications', () => {
  it('a poll asked for while one runs is run again afterwards (it may have read the old version)', async () => {
    let version = 1n;
    let gate: (() => void) | null = null;
    const calls: string[] = [];
    const dir: TenantDirectory = {
      async resolveMany(hashes) {
        calls.push('resolve');
        return new Map<string, ResolvedKey>(hashes.map((h) => [h, A]));
      },
      async version() {
        const seen = version;
        calls.push(`version ${seen}`);
        if (gate === null) await new Promise<void>((r) => (gate = r));
        return seen;
      },
      async ping() {},
      async close() {},
    };
    const cache = new KeyCache(dir, { ttlMs: 60_000, negativeTtlMs: 5_000, maxEntries: 10, pollMs: 60_000, now: () => 0, logger: pino({ level: 'silent' }) });
    await cache.load('h'); // something cached, so a version change has work to do
    const first = cache.poll(); // reads version 1, held at the gate
    version = 2n; // a change commits meanwhile; its notification asks for a poll
    void cache.poll();
    gate!();
    await first;
    await new Promise((r) => setTimeout(r, 10));
    expect(calls.filter((c) => c.startsWith('version'))).toEqual(['version 1', 'version 2']);
    // The second poll saw the new version and refreshed the cache.
    expect(calls.filter((c) => c === 'resolve').length).toBe(2);
  });
});

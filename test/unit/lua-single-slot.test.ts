// Redis Cluster runs a script only when all its keys hash to one slot, and routes it by the keys it is
// given. So every script must take every key it touches in KEYS (never build a name, which could land
// elsewhere and would escape the routing), and the store passes only keys of one tenant, whose `{tenant}`
// hash tag gives them one slot (test/contract/redis-cluster-store.test.ts checks that on a real cluster).
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';

const dir = new URL('../../src/store/', import.meta.url);
const scripts = fs.readdirSync(dir).filter((f) => f.endsWith('.lua'));

// Commands whose first argument is not a key; none is expected, and a new one must be looked at.
const KEYLESS = new Set<string>();

describe('Lua scripts touch only the keys they are given', () => {
  it('finds the scripts', () => {
    expect(scripts.sort()).toEqual(['check-and-reserve.lua', 'release.lua', 'restore-usage.lua', 'settle.lua', 'settled-usage.lua']);
  });

  it.each(scripts)('%s: every redis.call names a literal command and a key from KEYS', (file) => {
    // Comments go first: the headers quote key names.
    const code = fs.readFileSync(new URL(file, dir), 'utf8').replace(/--\[\[[\s\S]*?\]\]/g, '').replace(/--[^\n]*/g, '');
    const calls = [...code.matchAll(/redis\.(?:p?call)\(([^)]*)/g)].map((m) => m[1] ?? '');
    expect(calls.length).toBeGreaterThan(0);
    for (const args of calls) {
      const [command, key] = args.split(',').map((a) => a.trim());
      expect(command, args).toMatch(/^'[A-Z]+'$/);
      if (KEYLESS.has(command!.slice(1, -1))) continue;
      expect(key, args).toMatch(/^KEYS\[[^\]]+\]$/);
    }
    // Nothing reaches for keys it was not given.
    expect(code).not.toMatch(/'(KEYS|SCAN|FLUSHALL|FLUSHDB|RANDOMKEY)'/);
  });
});

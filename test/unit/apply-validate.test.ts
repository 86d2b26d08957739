import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseApplyFile, type ApplyDocument } from '../../src/admin/apply-schema.js';
import { hashApiKey } from '../../src/core/api-key.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/apply/', import.meta.url));
const DEMO = fileURLToPath(new URL('../../config/demo-tenants.yaml', import.meta.url));
const ENDPOINT_RULE = 'endpoint must start with "/", have no spaces, "?" or "#", and use "*" only as a final "/*"';

// Problem lines after `FILE: `. One fixture per rule; several-problems.yaml checks that all are listed at once.
const EXPECTED: Record<string, string[]> = {
  'yaml-syntax.yaml': [':4:1: YAML syntax error: Flow map in block collection must be sufficiently indented and end with a }'],
  'duplicate-yaml-key.yaml': [':3:5: YAML syntax error: Map keys must be unique'],
  'not-a-mapping.yaml': [': must be a mapping with "tiers" and/or "tenants"'],
  'empty.yaml': [': nothing to apply: expected "tiers" and/or "tenants"'],
  'unknown-top-level-field.yaml': [': plans: unknown field (allowed: tiers, tenants)'],
  'misspelled-tier-field.yaml': [': tiers[0].readRateLimt: unknown field (did you mean "readRateLimit"?)'],
  'tier-id-missing.yaml': [': tiers[0].id: is required'],
  'tier-id-invalid.yaml': [
    ': tiers[0].id: must be 1-128 letters, digits, "_", "-" or ".", starting with a letter or digit',
  ],
  'read-rate-not-positive.yaml': [': tiers[0].readRateLimit.requests: must be a positive integer'],
  'read-rate-missing-field.yaml': [': tiers[0].readRateLimit.perSeconds: is required'],
  'read-rate-not-integer.yaml': [': tiers[0].readRateLimit.perSeconds: must be a positive integer'],
  'read-rate-too-large.yaml': [': tiers[0].readRateLimit.requests: must be at most 2147483647'],
  'quota-endpoint-limit-invalid.yaml': [': tiers[0].monthlyQuota.endpoints["/verify"]: must be a positive integer'],
  'quota-endpoint-path-invalid.yaml': [`: tiers[0].monthlyQuota.endpoints.verify: ${ENDPOINT_RULE}`],
  'quota-endpoint-wildcard-invalid.yaml': [`: tiers[0].monthlyQuota.endpoints["/files*"]: ${ENDPOINT_RULE}`],
  'quota-endpoint-same-path.yaml': [
    ': tiers[0].monthlyQuota.endpoints["/Verify/"]: is the same endpoint as "/verify"',
    ': tiers[0].monthlyQuota.endpoints["/Files/*"]: is the same endpoint as "/files/*"',
  ],
  'quota-total-without-endpoints.yaml': [
    ': tiers[0].monthlyQuota.total: applies to metered endpoints, but monthlyQuota.endpoints lists none',
  ],
  'alert-threshold-out-of-range.yaml': [
    ': tiers[0].alertThresholds[0]: must be greater than 0 and at most 1',
    ': tiers[0].alertThresholds[2]: must be greater than 0 and at most 1',
  ],
  'alert-thresholds-not-list.yaml': [': tiers[0].alertThresholds: must be a list'],
  'failure-policy-invalid.yaml': [': tiers[0].failurePolicy: must be "allow" or "deny"'],
  'stripe-prices-not-list.yaml': [': tiers[0].stripePrices: must be a list'],
  'stripe-price-invalid.yaml': [
    ': tiers[0].stripePrices[0]: must be a Stripe price lookup key or price id: 1-200 printable characters without spaces',
  ],
  'stripe-price-duplicate.yaml': [': tiers[1].stripePrices[1]: Stripe price "pro_monthly" already maps to tiers[0].stripePrices[0]'],
  'duplicate-tier-id.yaml': [': tiers[1].id: duplicate tier id "free" (first at tiers[0])'],
  'tenant-tier-missing.yaml': [': tenants[0].tier: is required'],
  'tenant-status-invalid.yaml': [': tenants[0].status: must be "active" or "suspended"'],
  'duplicate-tenant-id.yaml': [': tenants[1].id: duplicate tenant id "tenant_A" (first at tenants[0])'],
  'duplicate-stripe-customer.yaml': [': tenants[1].stripeCustomerId: Stripe customer already used by tenants[0]'],
  'api-keys-not-list.yaml': [': tenants[0].apiKeys: must be a list'],
  'api-key-too-short.yaml': [': tenants[0].apiKeys[0]: must be at least 12 characters'],
  'api-key-whitespace.yaml': [': tenants[0].apiKeys[0]: must be printable ASCII without spaces'],
  'api-key-not-string.yaml': [
    ': tenants[0].apiKeys[0]: must be an API key (a string) or a mapping with key, name, expiresAt',
  ],
  'api-key-unknown-field.yaml': [': tenants[0].apiKeys[0]: unknown field (allowed: key, name, expiresAt)'],
  'api-key-expires-invalid.yaml': [
    ': tenants[0].apiKeys[0].expiresAt: must be an ISO-8601 date-time with a time zone, e.g. 2027-01-31T00:00:00Z',
  ],
  'api-key-duplicate.yaml': [': tenants[1].apiKeys[0]: the same key is already listed at tenants[0].apiKeys[0]'],
  'several-problems.yaml': [
    ': tiers[0].readRateLimit.requests: must be a positive integer',
    ': tiers[0].alertThresholds[1]: must be greater than 0 and at most 1',
    `: tiers[0].monthlyQuota.endpoints.verify: ${ENDPOINT_RULE}`,
    ': tiers[1].failurePolicy: must be "allow" or "deny"',
    ': tiers[1].id: duplicate tier id "free" (first at tiers[0])',
    ': tenants[0].status: must be "active" or "suspended"',
    ': tenants[0].apiKeys[0]: must be at least 12 characters',
    ': tenants[0].apiKeys[2]: the same key is already listed at tenants[0].apiKeys[1]',
    ': tenants[1].id: is required',
    ': tenants[1].stripeCustomerId: must be a string',
  ],
};
// Well-formed on their own; the database decides (test/integration/db-apply.test.ts).
const NEEDS_DATABASE = ['tenant-tier-unknown.yaml'];

const read = (name: string) => readFileSync(FIXTURES + name, 'utf8');

function parseOk(text: string): ApplyDocument {
  const r = parseApplyFile(text, 't.yaml');
  if (!r.ok) throw new Error(r.problems.join('\n'));
  return r.doc;
}

describe('parseApplyFile: bad fixtures', () => {
  it('has an expectation for every fixture in test/fixtures/apply', () => {
    const files = readdirSync(FIXTURES).filter((f) => f.endsWith('.yaml')).sort();
    expect(files).toEqual([...Object.keys(EXPECTED), ...NEEDS_DATABASE].sort());
  });

  for (const [name, lines] of Object.entries(EXPECTED)) {
    it(`${name} is rejected with the expected problems`, () => {
      const result = parseApplyFile(read(name), name);
      expect(result.ok).toBe(false);
      if (result.ok) return;
      expect(result.problems).toEqual(lines.map((l) => name + l));
    });
  }

  it('lists every problem of a file with several at once', () => {
    const result = parseApplyFile(read('several-problems.yaml'), 'several-problems.yaml');
    expect(result.ok ? [] : result.problems).toHaveLength(10);
  });

  it('never prints a plaintext key, even when reporting on it', () => {
    for (const name of readdirSync(FIXTURES)) {
      const text = read(name);
      const result = parseApplyFile(text, name);
      const keys = text.match(/vk_[A-Za-z0-9_ ]+/g) ?? [];
      for (const problem of result.ok ? [] : result.problems) {
        for (const key of keys) expect(problem).not.toContain(key);
      }
    }
  });

  it('does not echo an unknown field inside a key item (it may be a pasted key)', () => {
    const text = 'tiers: [{ id: free }]\ntenants:\n  - id: a\n    tier: free\n    apiKeys: [{ key: vk_live_0123456789ab, vk_live_PASTED_SECRET: 1 }]\n';
    const result = parseApplyFile(text, 'x.yaml');
    expect(result.ok).toBe(false);
    expect(JSON.stringify(result)).not.toContain('PASTED_SECRET');
  });

  it('quotes no source text in YAML syntax errors', () => {
    const result = parseApplyFile('tenants:\n  - apiKeys: [vk_live_SYNTAX_SECRET\n  x: 1\n', 's.yaml');
    expect(result.ok).toBe(false);
    expect(JSON.stringify(result)).not.toContain('SYNTAX_SECRET');
    expect(result.ok ? [] : result.problems[0]).toMatch(/^s\.yaml:\d+:\d+: YAML syntax error: /);
  });
});

describe('parseApplyFile: valid files', () => {
  it('accepts the demo tenants file', () => {
    const doc = parseOk(readFileSync(DEMO, 'utf8'));
    expect(doc.tiers.map((t) => [t.id, t.readRateLimit, t.monthlyQuota, t.alertThresholds, t.failurePolicy])).toEqual([
      ['free', { requests: 10, perSeconds: 60 }, { total: null, endpoints: { '/verify': 100 } }, [0.8, 0.9, 1], 'allow'],
      ['pro', { requests: 1000, perSeconds: 60 }, { total: null, endpoints: { '/verify': 10 } }, [0.8, 0.9, 1], 'allow'],
    ]);
    expect(doc.tenants.map((t) => [t.id, t.tierId, t.status ?? 'active'])).toEqual([
      ['tenant_C_789', 'free', 'active'],
      ['tenant_E_111', 'pro', 'active'],
      ['tenant_S_000', 'free', 'suspended'],
    ]);
    expect(doc.tenants.map((t) => t.apiKeys.map((k) => k.keyHash))).toEqual([
      [hashApiKey('vk_live_FREE_PLAN_KEY')],
      [hashApiKey('vk_live_PRO_ALMOST_FULL_KEY')],
      [hashApiKey('vk_live_SUSPENDED_KEY')],
    ]);
    // The parsed document carries hashes and prefixes only.
    expect(JSON.stringify(doc)).not.toMatch(/FREE_PLAN_KEY|PRO_ALMOST_FULL_KEY|SUSPENDED_KEY/);
  });

  it('applies defaults and normalises thresholds (sorted, unique)', () => {
    const doc = parseOk(
      [
        'tiers:',
        '  - id: bare',
        '  - id: full',
        '    readRateLimit: { requests: 5, perSeconds: 1 }',
        '    monthlyQuota: { total: 50, endpoints: { /verify: 10, /files/*: 20 } }',
        '    alertThresholds: [1.0, 0.5, 0.9, 0.5]',
        '    failurePolicy: deny',
      ].join('\n'),
    );
    expect(doc.tiers[0]).toMatchObject({
      readRateLimit: null,
      monthlyQuota: { total: null, endpoints: {} },
      alertThresholds: [0.8, 0.9, 1],
      failurePolicy: 'allow',
    });
    expect(doc.tiers[1]).toMatchObject({
      readRateLimit: { requests: 5, perSeconds: 1 },
      monthlyQuota: { total: 50, endpoints: { '/verify': 10, '/files/*': 20 } },
      alertThresholds: [0.5, 0.9, 1],
      failurePolicy: 'deny',
    });
  });

  it('reads the Stripe prices of a tier, without duplicates; omitted, they are not managed by the file', () => {
    const doc = parseOk('tiers:\n  - id: pro\n    stripePrices: [pro_monthly, price_1PRO, pro_monthly]\n  - id: free\n');
    expect(doc.tiers.map((t) => t.stripePrices)).toEqual([['pro_monthly', 'price_1PRO'], undefined]);
  });

  it('accepts key items as mappings and leaves omitted optional fields undefined', () => {
    const doc = parseOk(
      [
        'tenants:',
        '  - id: tenant_X',
        '    tier: existing_tier',
        '    stripeCustomerId: null',
        '    apiKeys:',
        '      - vk_live_PLAIN_STRING_KEY',
        '      - { key: vk_live_MAPPED_KEY_0001, name: ci, expiresAt: "2027-01-31T00:00:00+01:00" }',
        '      - { key: vk_live_MAPPED_KEY_0002, name: null, expiresAt: null }',
      ].join('\n'),
    );
    const tenant = doc.tenants[0];
    expect(tenant).toMatchObject({ id: 'tenant_X', tierId: 'existing_tier', status: undefined, stripeCustomerId: null });
    expect(tenant?.apiKeys.map((k) => [k.keyPrefix, k.name, k.expiresAtMs])).toEqual([
      ['vk_live_', undefined, undefined],
      ['vk_live', 'ci', Date.UTC(2027, 0, 30, 23)],
      ['vk_live', null, null],
    ]);
  });
});

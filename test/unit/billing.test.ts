import Stripe from 'stripe';
import { describe, expect, it } from 'vitest';
import { periodFor } from '../../src/core/period.js';
import { eventNameFor, meterEventIdentifier, meterEventTimestamp } from '../../src/billing/report-identity.js';
import { isDuplicateIdentifier, isRetryable } from '../../src/billing/stripe-client.js';
import { combineUsage } from '../../src/billing/usage-recovery.js';
import { backoffMs, DEFAULT_RETRY } from '../../src/billing/usage-reporter.js';

describe('meterEventIdentifier', () => {
  it('names a batch by what it covers, so a re-sent batch has the same name', () => {
    expect(meterEventIdentifier('tenant_E_111', '/verify', '2025-09', 7, 10)).toBe('ul:tenant_E_111:/verify:2025-09:7-10');
    expect(meterEventIdentifier('tenant_E_111', '/verify', '2025-09', 7, 10)).toBe(meterEventIdentifier('tenant_E_111', '/verify', '2025-09', 7, 10));
    expect(meterEventIdentifier('t', '/verify', '2025-09', 7, 11)).not.toBe(meterEventIdentifier('t', '/verify', '2025-09', 7, 10));
  });

  it('hashes names longer than Stripe’s 100 characters, still deterministically', () => {
    const long = meterEventIdentifier('t'.repeat(128), '/verify', '2025-09', 0, 5);
    expect(long).toMatch(/^ul:sha256:[0-9a-f]{64}$/);
    expect(long.length).toBeLessThanOrEqual(100);
    expect(meterEventIdentifier('t'.repeat(128), '/verify', '2025-09', 0, 5)).toBe(long);
    expect(meterEventIdentifier('t'.repeat(128), '/verify', '2025-09', 0, 6)).not.toBe(long);
  });
});

describe('meterEventTimestamp', () => {
  const september = periodFor(Date.UTC(2025, 8, 18), null);

  it('is the batch time while the period runs', () => {
    expect(meterEventTimestamp(Date.UTC(2025, 8, 18, 12), september)).toBe(Date.UTC(2025, 8, 18, 12) / 1000);
  });

  it('stays inside the period it bills when reported after it closed', () => {
    expect(meterEventTimestamp(Date.UTC(2025, 9, 1, 0, 1), september)).toBe(Date.UTC(2025, 9, 1) / 1000 - 1);
  });

  it('is never older than Stripe accepts (35 days, less an hour)', () => {
    const late = Date.UTC(2025, 10, 20);
    expect(meterEventTimestamp(late, september)).toBe(late / 1000 - (35 * 24 * 3600 - 3600));
  });
});

describe('eventNameFor', () => {
  it('uses an endpoint’s own meter when configured, else the shared one', () => {
    expect(eventNameFor('/extract', { '/extract': 'extract_calls' }, 'api_requests')).toBe('extract_calls');
    expect(eventNameFor('/verify', { '/extract': 'extract_calls' }, 'api_requests')).toBe('api_requests');
  });
});

describe('backoffMs', () => {
  it('doubles up to the cap, half fixed and half random', () => {
    const policy = { attempts: 5, baseDelayMs: 100, maxDelayMs: 500 };
    expect([1, 2, 3, 4].map((a) => backoffMs(a, policy, () => 0))).toEqual([50, 100, 200, 250]);
    expect([1, 2, 3, 4].map((a) => backoffMs(a, policy, () => 1))).toEqual([100, 200, 400, 500]);
    expect(backoffMs(1, DEFAULT_RETRY, () => 0.5)).toBeGreaterThan(0);
  });
});

describe('Stripe error classification', () => {
  const error = (statusCode: number, type: string, message: string) =>
    Stripe.errors.StripeError.generate({ statusCode, type, message } as Stripe.StripeRawError & { statusCode: number });

  it('takes Stripe’s answer to a known identifier as a duplicate, and nothing else', () => {
    expect(isDuplicateIdentifier(error(400, 'invalid_request_error', 'An event already exists with identifier ul:t:/v:2025-09:0-1.'))).toBe(true);
    expect(isDuplicateIdentifier(error(400, 'invalid_request_error', 'No such customer: cus_x'))).toBe(false);
    expect(isDuplicateIdentifier(error(500, 'api_error', 'An event already exists with identifier x'))).toBe(false);
    expect(isDuplicateIdentifier(new Error('An event already exists with identifier x'))).toBe(false);
  });

  it('retries connection errors, 409, 429 and 5xx; not other 4xx', () => {
    expect(isRetryable(new Stripe.errors.StripeConnectionError({ message: 'ECONNRESET' }))).toBe(true);
    expect(isRetryable(error(429, 'invalid_request_error', 'rate limited'))).toBe(true);
    expect(isRetryable(error(503, 'api_error', 'down'))).toBe(true);
    expect(isRetryable(error(409, 'api_error', 'conflict'))).toBe(true);
    expect(isRetryable(error(400, 'invalid_request_error', 'bad'))).toBe(false);
    expect(isRetryable(error(401, 'invalid_request_error', 'key'))).toBe(false);
    expect(isRetryable(new Error('x'))).toBe(false);
  });
});

describe('combineUsage', () => {
  const meters = (e: string) => (e === '/extract' ? 'extract_calls' : 'api_requests');

  it('takes Postgres’s figures when Stripe has no more', () => {
    const pg = new Map([['/verify', 6]]);
    expect(combineUsage(pg, ['/verify', '/extract'], new Map([['api_requests', 5]]), meters)).toEqual({
      total: 6,
      endpoints: { '/verify': 6, '/extract': 0 },
      raisedByStripe: {},
    });
  });

  it('raises an endpoint with a meter of its own to Stripe’s figure', () => {
    const pg = new Map([['/verify', 6]]);
    expect(combineUsage(pg, ['/verify', '/extract'], new Map([['extract_calls', 4]]), meters)).toEqual({
      total: 10,
      endpoints: { '/verify': 6, '/extract': 4 },
      raisedByStripe: { '/extract': 4 },
    });
  });

  it('adds what a shared meter has beyond the endpoints’ figures to the total only', () => {
    const pg = new Map([['/a', 3], ['/b', 2]]);
    expect(combineUsage(pg, ['/a', '/b'], new Map([['api_requests', 9]]), () => 'api_requests')).toEqual({
      total: 9,
      endpoints: { '/a': 3, '/b': 2 },
      raisedByStripe: {},
    });
  });

  it('uses Postgres alone when Stripe was not asked', () => {
    expect(combineUsage(new Map([['/a', 3]]), ['/a'], null, () => 'x')).toEqual({ total: 3, endpoints: { '/a': 3 }, raisedByStripe: {} });
  });
});

describe('README', () => {
  it('documents every billing and settlement variable in the configuration table', async () => {
    const { readFileSync } = await import('node:fs');
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const table = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('## Tiers, tenants and keys'));
    for (const name of [
      'STRIPE_SECRET_KEY',
      'STRIPE_WEBHOOK_SECRET',
      'STRIPE_API_BASE',
      'STRIPE_METER_EVENT',
      'STRIPE_METERS',
      'STRIPE_TIMEOUT_MS',
      'STRIPE_CANCELED_TIER',
      'USAGE_REPORT_INTERVAL_SECONDS',
      'SETTLEMENT_WINDOW_SECONDS',
    ]) {
      expect(table, name).toMatch(new RegExp(`^\\| \`${name}\` \\|`, 'm'));
    }
  });
});

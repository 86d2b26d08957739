import { describe, expect, it } from 'vitest';
import {
  parseCheckAndReserveReply,
  parseSettleReply,
  parseSettledUsageReply,
  parseUsageHash,
  toCount,
} from '../../src/store/parse-reply.js';

describe('parseCheckAndReserveReply', () => {
  it('decodes a missing usage hash (nothing evaluated)', () => {
    expect(parseCheckAndReserveReply([0, 0, -1, 4, 0, 0, 0])).toEqual({ readRate: null, quota: null, usageMissing: true });
  });

  it('decodes a reply with nothing requested', () => {
    expect(parseCheckAndReserveReply([0, 0, -1, 0, 0, 0, 0])).toEqual({ readRate: null, quota: null });
  });

  it('decodes an allowed read', () => {
    expect(parseCheckAndReserveReply([1, 3, 1758217849000, 0, 0, 0, 0])).toEqual({
      readRate: { allowed: true, count: 3, oldestMs: 1758217849000 },
      quota: null,
    });
  });

  it('decodes a denied read, with no quota evaluated', () => {
    expect(parseCheckAndReserveReply([2, 10, 1758217849000, 0, 0, 0, 0])).toEqual({
      readRate: { allowed: false, count: 10, oldestMs: 1758217849000 },
      quota: null,
    });
  });

  it('gives oldestMs null for an empty window', () => {
    expect(parseCheckAndReserveReply([2, 0, -1, 0, 0, 0, 0]).readRate).toEqual({ allowed: false, count: 0, oldestMs: null });
  });

  it('decodes an allowed reservation with crossings of both scopes', () => {
    expect(parseCheckAndReserveReply([0, 0, -1, 1, 10, 20, 2, 0, 90, 10, 10, 1, 50, 20, 40])).toEqual({
      readRate: null,
      quota: {
        allowed: true,
        endpointUsed: 10,
        totalUsed: 20,
        blockedBy: null,
        crossed: [
          { scope: 'endpoint', percent: 90, usage: 10, limit: 10 },
          { scope: 'total', percent: 50, usage: 20, limit: 40 },
        ],
      },
    });
  });

  it('decodes denials by the endpoint and by the total cap', () => {
    expect(parseCheckAndReserveReply([1, 1, 5, 2, 10, 10, 0]).quota).toEqual({
      allowed: false,
      endpointUsed: 10,
      totalUsed: 10,
      blockedBy: 'endpoint',
      crossed: [],
    });
    expect(parseCheckAndReserveReply([0, 0, -1, 3, 3, 5, 0]).quota?.blockedBy).toBe('total');
  });

  it('accepts integers as strings (ioredis stringNumbers)', () => {
    expect(parseCheckAndReserveReply(['1', '1', '7', '1', '8', '8', '1', '0', '80', '8', '10'])).toEqual({
      readRate: { allowed: true, count: 1, oldestMs: 7 },
      quota: {
        allowed: true,
        endpointUsed: 8,
        totalUsed: 8,
        blockedBy: null,
        crossed: [{ scope: 'endpoint', percent: 80, usage: 8, limit: 10 }],
      },
    });
  });

  it.each([
    ['not an array', 'OK'],
    ['too short', [0, 0, -1, 0]],
    ['a length that does not fit the crossings', [0, 0, -1, 1, 1, 1, 1, 0, 80]],
    ['a non-integer', [0, 0, -1, 1, 'x', 1, 0]],
    ['an unknown read-rate status', [5, 0, -1, 0, 0, 0, 0]],
    ['an unknown quota status', [0, 0, -1, 5, 0, 0, 0]],
    ['a missing hash with a read evaluated', [1, 1, 7, 4, 0, 0, 0]],
    ['an unknown scope', [0, 0, -1, 1, 1, 1, 1, 2, 80, 1, 1]],
    ['crossings without a quota', [0, 0, -1, 0, 0, 0, 1, 0, 80, 1, 1]],
  ])('rejects %s', (_label, reply) => {
    expect(() => parseCheckAndReserveReply(reply)).toThrow(/check-and-reserve reply/);
  });
});

describe('toCount', () => {
  it('reads stored counters the way the Lua scripts do', () => {
    expect(toCount('7')).toBe(7);
    expect(toCount(7)).toBe(7);
    expect(toCount('7.9')).toBe(7);
    expect(toCount('-3')).toBe(0);
    expect(toCount('abc')).toBe(0);
    expect(toCount('')).toBe(0);
    expect(toCount('inf')).toBe(0);
    expect(toCount(undefined)).toBe(0);
    expect(toCount(Number.NaN)).toBe(0);
  });
});

describe('parseUsageHash', () => {
  it('maps __total__ and op:<endpoint>, ignoring other fields', () => {
    expect(parseUsageHash({ __total__: '10', 'op:/verify': '10', 'op:/extract': 'junk', note: 'x' })).toEqual({
      total: 10,
      endpoints: { '/verify': 10, '/extract': 0 },
    });
    expect(parseUsageHash({})).toEqual({ total: 0, endpoints: {} });
  });
});

describe('parseSettleReply', () => {
  it('maps the script codes to outcomes', () => {
    expect([0, 1, 2, 3, '2'].map(parseSettleReply)).toEqual(['unknown', 'settled', 'refunded', 'expired', 'refunded']);
  });
  it.each([[4], [-1], ['x'], [null]])('rejects %s', (reply) => {
    expect(() => parseSettleReply(reply)).toThrow(/settle reply/);
  });
});

describe('parseSettledUsageReply', () => {
  it('decodes counters and pending per endpoint, settled never below zero', () => {
    expect(parseSettledUsageReply([1, 7, 2, 0, 3], ['/verify', '/extract'])).toEqual({
      exists: true,
      endpoints: { '/verify': { used: 7, pending: 2, settled: 5 }, '/extract': { used: 0, pending: 3, settled: 0 } },
    });
  });
  it('decodes a missing hash', () => {
    expect(parseSettledUsageReply([0], ['/verify'])).toEqual({ exists: false, endpoints: {} });
  });
  it('rejects a reply that does not fit the endpoints asked about', () => {
    expect(() => parseSettledUsageReply([1, 7], ['/verify'])).toThrow(/settled-usage reply/);
    expect(() => parseSettledUsageReply('x', [])).toThrow(/settled-usage reply/);
  });
});

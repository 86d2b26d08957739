// Pure decoding of what the Redis scripts and hashes return. Kept apart from the client code so the
// reply layout documented in check-and-reserve.lua is unit-tested without a Redis server.
import { TOTAL_FIELD } from './keys.js';
import type {
  CheckAndReserveResult,
  EndpointSettlement,
  PeriodUsage,
  QuotaResult,
  ReadRateResult,
  SettledUsage,
  SettleOutcome,
  ThresholdCrossing,
} from './types.js';

/**
 * A stored counter as enforcement reads it: operators edit hashes by hand, so junk is 0, fractions round
 * down and negatives are 0. Matches `count()` in the Lua scripts.
 */
export function toCount(raw: unknown): number {
  const n = typeof raw === 'number' ? raw : typeof raw === 'string' ? Number(raw) : Number.NaN;
  if (!Number.isFinite(n)) return 0;
  return Math.max(0, Math.floor(n));
}

function int(reply: readonly unknown[], index: number): number {
  const v = reply[index];
  // ioredis gives integers as numbers, or as strings with `stringNumbers`.
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : Number.NaN;
  if (!Number.isInteger(n)) {
    throw new Error(`check-and-reserve reply: element ${index} is not an integer (${String(v)})`);
  }
  return n;
}

const HEADER_LENGTH = 7;
const CROSSING_LENGTH = 4;

/** Turns the flat reply of check-and-reserve.lua into a result. Throws on a reply of another shape. */
export function parseCheckAndReserveReply(reply: unknown): CheckAndReserveResult {
  if (!Array.isArray(reply) || reply.length < HEADER_LENGTH) {
    throw new Error('check-and-reserve reply: expected an array of at least 7 integers');
  }
  const rrStatus = int(reply, 0);
  const quotaStatus = int(reply, 3);
  const crossings = int(reply, 6);
  if (quotaStatus === 4) {
    if (rrStatus !== 0 || crossings !== 0 || reply.length !== HEADER_LENGTH) {
      throw new Error('check-and-reserve reply: a missing usage hash comes with nothing else');
    }
    return { readRate: null, quota: null, usageMissing: true };
  }
  if (crossings < 0 || reply.length !== HEADER_LENGTH + crossings * CROSSING_LENGTH) {
    throw new Error(`check-and-reserve reply: length ${reply.length} does not fit ${crossings} crossings`);
  }

  let readRate: ReadRateResult | null = null;
  if (rrStatus === 1 || rrStatus === 2) {
    const count = int(reply, 1);
    readRate = { allowed: rrStatus === 1, count, oldestMs: count > 0 ? int(reply, 2) : null };
  } else if (rrStatus !== 0) {
    throw new Error(`check-and-reserve reply: unknown read-rate status ${rrStatus}`);
  }

  let quota: QuotaResult | null = null;
  if (quotaStatus >= 1 && quotaStatus <= 3) {
    const crossed: ThresholdCrossing[] = [];
    for (let i = 0; i < crossings; i++) {
      const at = HEADER_LENGTH + i * CROSSING_LENGTH;
      const scope = int(reply, at);
      if (scope !== 0 && scope !== 1) throw new Error(`check-and-reserve reply: unknown scope ${scope}`);
      crossed.push({
        scope: scope === 0 ? 'endpoint' : 'total',
        percent: int(reply, at + 1),
        usage: int(reply, at + 2),
        limit: int(reply, at + 3),
      });
    }
    quota = {
      allowed: quotaStatus === 1,
      endpointUsed: int(reply, 4),
      totalUsed: int(reply, 5),
      blockedBy: quotaStatus === 2 ? 'endpoint' : quotaStatus === 3 ? 'total' : null,
      crossed,
    };
  } else if (quotaStatus !== 0) {
    throw new Error(`check-and-reserve reply: unknown quota status ${quotaStatus}`);
  } else if (crossings !== 0) {
    throw new Error('check-and-reserve reply: crossings without a quota');
  }
  return { readRate, quota };
}

/** HGETALL of a usage hash: `__total__` is the total, `op:<endpoint>` an endpoint; other fields are ignored. */
export function parseUsageHash(hash: Readonly<Record<string, string>>): PeriodUsage {
  let total = 0;
  const endpoints: Record<string, number> = {};
  for (const [field, value] of Object.entries(hash)) {
    if (field === TOTAL_FIELD) total = toCount(value);
    else if (field.startsWith('op:')) endpoints[field.slice(3)] = toCount(value);
  }
  return { total, endpoints };
}

const SETTLE_OUTCOMES: readonly SettleOutcome[] = ['unknown', 'settled', 'refunded', 'expired'];

/** The reply of settle.lua: 0 unknown, 1 settled, 2 refunded, 3 expired. */
export function parseSettleReply(reply: unknown): SettleOutcome {
  const n = typeof reply === 'number' ? reply : typeof reply === 'string' ? Number(reply) : Number.NaN;
  const outcome = Number.isInteger(n) ? SETTLE_OUTCOMES[n] : undefined;
  if (outcome === undefined) throw new Error(`settle reply: unknown outcome ${String(reply)}`);
  return outcome;
}

/** The reply of settled-usage.lua for `endpoints` (the fields it was asked about, in order). */
export function parseSettledUsageReply(reply: unknown, endpoints: readonly string[]): SettledUsage {
  if (!Array.isArray(reply) || reply.length < 1) throw new Error('settled-usage reply: expected an array');
  if (int(reply, 0) === 0) return { exists: false, endpoints: {} };
  if (reply.length !== 1 + endpoints.length * 2) {
    throw new Error(`settled-usage reply: length ${reply.length} does not fit ${endpoints.length} endpoints`);
  }
  const out: Record<string, EndpointSettlement> = {};
  endpoints.forEach((endpoint, i) => {
    out[endpoint] = settlement(int(reply, 1 + i * 2), int(reply, 2 + i * 2));
  });
  return { exists: true, endpoints: out };
}

/** Settled units: the counter less what may still be refunded; never below zero (operators edit counters). */
export function settlement(used: number, pending: number): EndpointSettlement {
  return { used, pending, settled: Math.max(0, used - pending) };
}

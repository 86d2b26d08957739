import type { Deny } from '../core/decide.js';
import type { Tier } from '../core/types.js';
import type { CheckAndReserveRequest } from '../store/types.js';

// A tenant hammering a limit it has already hit costs a Redis round trip per request for an answer the
// replica already knows. This remembers 429s and answers repeats from memory, under two bounds:
// - never past the instant the limit frees capacity (the exact reset, not the rounded header value), so
//   nothing the store would allow after a reset is denied;
// - never across a tier change (a memo belongs to the Tier object it was made under: an upgrade, which
//   the key cache delivers within milliseconds, lifts it at once), nor across capacity given back on this
//   replica (`forget`: a refund settled here, a reservation this replica released, counters it rebuilt);
// - only where the store would give the same 429: a quota memo answers for the endpoint that met it alone
//   (another endpoint may be over its own limit, which the store would name instead of the total), and
//   never a read, which the store judges by its read window first;
// - never longer than `holdMs` (DENY_MEMORY_MS), which bounds how long the remaining ways of giving
//   capacity back early can go unnoticed: an operator's edit in Redis, or a refund settled on another
//   replica.
// It only ever denies what the store denied, so it cannot let a request through that should be denied.

interface Memo {
  readonly decision: Deny;
  readonly tier: Tier;
  readonly untilMs: number;
}

/**
 * One tenant's memos. Keyed first by tenant id, a string the key cache holds (its hash is computed once), so
 * the Check of a tenant with nothing remembered, the common case, costs one map lookup and builds no key.
 */
interface TenantMemos {
  read: Memo | undefined;
  /** By `period \0 endpoint`, whichever limit (the endpoint's or the total) denied it. */
  readonly quota: Map<string, Memo>;
}

export class DenyMemory {
  private readonly tenants = new Map<string, TenantMemos>();
  private count = 0;
  hits = 0;

  constructor(
    private readonly holdMs: number,
    private readonly maxEntries = 100_000,
  ) {}

  /** The remembered denial for this store request, with Retry-After brought up to `nowMs`, if any. */
  recall(req: CheckAndReserveRequest, tier: Tier, nowMs: number): Deny | undefined {
    if (this.holdMs <= 0 || this.count === 0) return undefined;
    const t = this.tenants.get(req.tenantId);
    if (t === undefined) return undefined;
    // The store checks the read window before the quota; so does this.
    let memo = req.readRate !== null && t.read !== undefined ? this.liveRead(req.tenantId, t, tier, nowMs) : undefined;
    if (memo === undefined && req.quota !== null && req.readRate === null && t.quota.size > 0) {
      memo = this.liveQuota(req.tenantId, t, quotaKey(req.quota.period, req.quota.endpoint), tier, nowMs);
    }
    if (memo === undefined) return undefined;
    this.hits++;
    const rl = memo.decision.rateLimit;
    if (rl === null) return memo.decision;
    const retryAfterS = Math.max(1, Math.ceil((rl.resetAtMs - nowMs) / 1000));
    return { ...memo.decision, retryAfterS, rateLimit: { ...rl, retryAfterS } };
  }

  /** Remembers a 429 the store gave for this request. Other decisions are ignored. */
  remember(req: CheckAndReserveRequest, tier: Tier, decision: Deny, nowMs: number): void {
    if (this.holdMs <= 0 || decision.rateLimit === null) return;
    let quota: string | null = null;
    if (decision.code === 'USAGE_LIMIT_EXCEEDED' && req.quota !== null) {
      // A metered read is never answered from a quota memo (see `recall`): nothing to keep.
      if (req.readRate !== null) return;
      quota = quotaKey(req.quota.period, req.quota.endpoint);
    } else if (decision.code !== 'READ_RATE_LIMIT_EXCEEDED') return;
    const untilMs = Math.min(decision.rateLimit.resetAtMs, nowMs + this.holdMs);
    if (untilMs <= nowMs) return;
    let t = this.tenants.get(req.tenantId);
    const isNew = t === undefined || (quota === null ? t.read === undefined : !t.quota.has(quota));
    if (isNew && this.count >= this.maxEntries) {
      this.prune(nowMs);
      t = this.tenants.get(req.tenantId);
    }
    if (t === undefined) {
      t = { read: undefined, quota: new Map() };
      this.tenants.set(req.tenantId, t);
    }
    const memo = { decision, tier, untilMs };
    if (isNew) this.count++;
    if (quota === null) t.read = memo;
    else t.quota.set(quota, memo);
  }

  /** Drops every memo of a tenant: capacity was given back here (a refund, a release, a rebuild). */
  forget(tenantId: string): void {
    const t = this.tenants.get(tenantId);
    if (t === undefined) return;
    this.count -= (t.read === undefined ? 0 : 1) + t.quota.size;
    this.tenants.delete(tenantId);
  }

  get size(): number {
    return this.count;
  }

  private liveRead(tenantId: string, t: TenantMemos, tier: Tier, nowMs: number): Memo | undefined {
    const memo = t.read;
    if (memo === undefined) return undefined;
    if (memo.untilMs > nowMs && memo.tier === tier) return memo;
    t.read = undefined;
    this.dropped(tenantId, t);
    return undefined;
  }

  private liveQuota(tenantId: string, t: TenantMemos, key: string, tier: Tier, nowMs: number): Memo | undefined {
    const memo = t.quota.get(key);
    if (memo === undefined) return undefined;
    if (memo.untilMs > nowMs && memo.tier === tier) return memo;
    t.quota.delete(key);
    this.dropped(tenantId, t);
    return undefined;
  }

  /** One memo of `t` is gone: count it, and drop the tenant once it has none. */
  private dropped(tenantId: string, t: TenantMemos): void {
    this.count--;
    if (t.read === undefined && t.quota.size === 0) this.tenants.delete(tenantId);
  }

  // Drop expired memos; if that is not enough, drop whole tenants, oldest first (Map order), to stay
  // bounded. A dropped memo only costs its tenant the next Check's round trip to Redis.
  private prune(nowMs: number): void {
    for (const [id, t] of this.tenants) {
      if (t.read !== undefined && t.read.untilMs <= nowMs) {
        t.read = undefined;
        this.dropped(id, t);
      }
      for (const [k, m] of t.quota) {
        if (m.untilMs <= nowMs) {
          t.quota.delete(k);
          this.dropped(id, t);
        }
      }
    }
    for (const id of this.tenants.keys()) {
      if (this.count < this.maxEntries) break;
      this.forget(id);
    }
  }
}

function quotaKey(period: string, endpoint: string): string {
  return `${period}\u0000${endpoint}`;
}

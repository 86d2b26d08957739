import type { Deny } from '../core/decide.js';
import type { Tier } from '../core/types.js';
import type { CheckAndReserveRequest } from '../store/types.js';

// A tenant hammering a limit it has already hit costs a Redis round trip per request for an answer the
// replica already knows. This remembers 429s and answers repeats from memory, under two bounds:
// - never past the instant the limit frees capacity (the exact reset, not the rounded header value), so
//   nothing the store would allow after a reset is denied;
// - never across a tier change (a memo belongs to the Tier object it was made under: an upgrade, which
//   the key cache delivers within milliseconds, lifts it at once), nor across a refund settled on this
//   replica (`forget`);
// - never longer than `holdMs` (DENY_MEMORY_MS), which bounds how long the remaining ways of giving
//   capacity back early can go unnoticed: an operator's edit in Redis, or a refund settled on another
//   replica.
// It only ever denies what the store denied, so it cannot let a request through that should be denied.

interface Memo {
  readonly decision: Deny;
  readonly tier: Tier;
  readonly untilMs: number;
}

const READ = '\u0000read';

export class DenyMemory {
  private readonly memos = new Map<string, Memo>();
  hits = 0;

  constructor(
    private readonly holdMs: number,
    private readonly maxEntries = 100_000,
  ) {}

  /** The remembered denial for this store request, with Retry-After brought up to `nowMs`, if any. */
  recall(req: CheckAndReserveRequest, tier: Tier, nowMs: number): Deny | undefined {
    if (this.holdMs <= 0 || this.memos.size === 0) return undefined;
    // The store checks the read window before the quota; so does this.
    const memo =
      (req.readRate !== null ? this.live(req.tenantId + READ, tier, nowMs) : undefined) ??
      (req.quota !== null
        ? (this.live(quotaKey(req.tenantId, req.quota.period, req.quota.endpoint), tier, nowMs) ??
          this.live(quotaKey(req.tenantId, req.quota.period, null), tier, nowMs))
        : undefined);
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
    let key: string;
    if (decision.code === 'READ_RATE_LIMIT_EXCEEDED') key = req.tenantId + READ;
    else if (decision.code === 'USAGE_LIMIT_EXCEEDED' && req.quota !== null) {
      const byTotal = decision.events.some((e) => e.kind === 'usage_limit_exceeded' && e.endpoint === '__total__');
      key = quotaKey(req.tenantId, req.quota.period, byTotal ? null : req.quota.endpoint);
    } else return;
    const untilMs = Math.min(decision.rateLimit.resetAtMs, nowMs + this.holdMs);
    if (untilMs <= nowMs) return;
    if (!this.memos.has(key) && this.memos.size >= this.maxEntries) this.prune(nowMs);
    this.memos.set(key, { decision, tier, untilMs });
  }

  /** Drops every memo of a tenant: capacity was given back (a refund settled here). */
  forget(tenantId: string): void {
    for (const key of this.memos.keys()) if (key.startsWith(`${tenantId}\u0000`)) this.memos.delete(key);
  }

  get size(): number {
    return this.memos.size;
  }

  private live(key: string, tier: Tier, nowMs: number): Memo | undefined {
    const memo = this.memos.get(key);
    if (memo === undefined) return undefined;
    if (memo.untilMs > nowMs && memo.tier === tier) return memo;
    this.memos.delete(key);
    return undefined;
  }

  // Drop expired memos; if all are live, drop the oldest insertions (Map order) to stay bounded.
  private prune(nowMs: number): void {
    for (const [k, m] of this.memos) if (m.untilMs <= nowMs) this.memos.delete(k);
    for (const k of this.memos.keys()) {
      if (this.memos.size < this.maxEntries) break;
      this.memos.delete(k);
    }
  }
}

function quotaKey(tenantId: string, period: string, endpoint: string | null): string {
  return `${tenantId}\u0000quota\u0000${period}\u0000${endpoint ?? '__total__'}`;
}

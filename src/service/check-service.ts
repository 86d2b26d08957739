import { hashApiKey } from '../core/api-key.js';
import { concludeCheck, deny, planCheck, storeUnavailable, type Decision, type Deny, type Plan } from '../core/decide.js';
import type { Period } from '../core/period.js';
import type { CheckInput } from '../core/request.js';
import type { ResolvedKey } from '../core/types.js';
import type { KeyCache } from '../directory/key-cache.js';
import type { Logger } from '../logger.js';
import type { CheckAndReserveRequest, CheckAndReserveResult, CounterStore } from '../store/types.js';
import type { DenyMemory } from './deny-memory.js';
import { POLL_GRACE_MS, within } from '../timers.js';
import { logEvent } from './events.js';

// Runs one Check: key cache → pure plan → one store call → pure conclusion. Every I/O step is bounded by
// the time left before Envoy's deadline (and CHECK_TIMEOUT_MS), so a slow Redis or Postgres turns into
// the documented policy answer instead of a hang.

export interface CheckServiceDeps {
  readonly cache: KeyCache;
  readonly store: CounterStore;
  readonly now: () => number;
  readonly logger: Logger;
  /** Upper bound for the I/O of one Check. */
  readonly timeoutMs: number;
  /**
   * Rebuilds a period's counters that the store reported missing (Redis lost them, or the period is new)
   * before the Check asks again; bounded by the Check's budget (it may finish in the background).
   * Absent: the period is opened at zero.
   */
  readonly recoverUsage?: (key: ResolvedKey, period: Period) => Promise<void>;
  /**
   * Called with every decision and the time it took, synchronously on the hot path (metrics, alerts):
   * it must be O(1) and must not throw.
   */
  readonly onDecision?: (decision: Decision, elapsedMs: number) => void;
  /** Answers repeated 429s from memory (see deny-memory.ts). Absent: every Check asks the store. */
  readonly denyMemory?: DenyMemory;
  /** Wraps each Check (a tracing span). Absent when tracing is off, so the Check then pays nothing for it. */
  readonly around?: (input: CheckInput, run: () => Promise<Decision>) => Promise<Decision>;
}

export interface CheckStats {
  storeErrors: number;
  directoryErrors: number;
  /** Checks whose deadline had passed before they needed Redis or Postgres: answered without asking. */
  shed: number;
  /**
   * Checks whose script found the period's usage counters missing and that waited for them to be rebuilt
   * from Postgres: a tenant's first metered Check of a period, or counters Redis lost.
   */
  usageRebuilds: number;
}

class TimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`${what} did not answer within ${ms} ms`);
    this.name = 'TimeoutError';
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  if (ms <= 0) return Promise.reject(new TimeoutError(what, 0));
  // A reply that arrived in time but waits behind a long turn of the event loop is read first (timers.ts).
  return within(
    p,
    ms,
    () => {
      throw new TimeoutError(what, ms);
    },
    { poll: true },
  );
}

/**
 * A remembered read-rate denial carries the log event of the request that earned it; the warning line must
 * name this request's path (on-call reads it, and it is the client's own text, logged as a field), not that one.
 */
function forPath(d: Deny, path: string): Deny {
  if (!d.events.some((e) => e.kind === 'read_rate_exceeded' && e.endpoint !== path)) return d;
  return { ...d, events: d.events.map((e) => (e.kind === 'read_rate_exceeded' ? { ...e, endpoint: path } : e)) };
}

// Keep a little of Envoy's deadline for encoding and sending the answer, and for the poll grace a timed-out
// call still waits for replies that already arrived (timers.ts).
const DEADLINE_MARGIN_MS = 5 + POLL_GRACE_MS;

export class CheckService {
  readonly stats: CheckStats = { storeErrors: 0, directoryErrors: 0, shed: 0, usageRebuilds: 0 };
  private lastErrorLogMs = 0;

  constructor(private readonly deps: CheckServiceDeps) {}

  /**
   * A CheckRequest the edge could not read (no method or path, an oversized path): denied with 400, and
   * counted and observed like every other answer.
   */
  badRequest(): Decision {
    return this.emit(deny('BAD_REQUEST'), performance.now());
  }

  /** @param deadlineMs Envoy's deadline for this call (epoch ms), or Infinity. Never rejects. */
  check(input: CheckInput, deadlineMs = Number.POSITIVE_INFINITY): Promise<Decision> {
    const around = this.deps.around;
    return around === undefined ? this.decide(input, deadlineMs) : around(input, () => this.decide(input, deadlineMs));
  }

  private async decide(input: CheckInput, deadlineMs: number): Promise<Decision> {
    const { cache, store, now, logger } = this.deps;
    const startedMs = performance.now();
    // Envoy's deadline is wall-clock time (grpc-js reads it off grpc-timeout), so it is measured by the wall
    // clock, not by `now`, the app clock that periods and windows use (pinned in tests).
    const budget = () => Math.min(this.deps.timeoutMs, deadlineMs - Date.now() - DEADLINE_MARGIN_MS);

    let key: ResolvedKey | null = null;
    if (input.key.kind === 'present') {
      const hash = hashApiKey(input.key.key);
      const cached = cache.peek(hash);
      if (cached !== undefined) {
        key = cached;
      } else {
        const loadBudget = budget();
        if (loadBudget <= 0) {
          // Still load the key (one batched query shared with any other misses), so that a new key is not
          // refused for as long as the replica stays behind.
          void cache.load(hash).catch(() => {});
          return this.shed(deny('USAGE_CHECK_UNAVAILABLE'));
        }
        try {
          key = await withTimeout(cache.load(hash), loadBudget, 'directory');
        } catch (err) {
          // Unknown key and no directory: nothing tells us the tenant or its policy, so we cannot admit it.
          this.stats.directoryErrors++;
          this.logFailure('DatabaseError', err);
          return this.emit(deny('USAGE_CHECK_UNAVAILABLE'), startedMs);
        }
      }
    }

    const plan = planCheck(input, key, now());
    if (plan.kind === 'decided') return this.emit(plan.decision, startedMs);
    const memory = this.deps.denyMemory;
    const remembered = memory?.recall(plan.request, plan.ctx.tier, plan.request.nowMs);
    if (remembered !== undefined) return this.emit(forPath(remembered, plan.ctx.path), startedMs);
    const storeBudget = budget();
    if (storeBudget <= 0) return this.shed(storeUnavailable(plan.ctx));
    try {
      let result = await withTimeout(store.checkAndReserve(plan.request), storeBudget, 'counter store');
      if (result.usageMissing) result = await this.rebuildAndRetry(plan, key, budget);
      const decidedAt = now();
      const decision = concludeCheck(plan.ctx, result, decidedAt);
      if (memory !== undefined && decision.outcome === 'deny') memory.remember(plan.request, plan.ctx.tier, decision, decidedAt);
      return this.emit(decision, startedMs);
    } catch (err) {
      this.stats.storeErrors++;
      this.logFailure('CacheError', err, plan.ctx.tenantId);
      this.cancelReservation(plan.request);
      return this.emit(storeUnavailable(plan.ctx), startedMs);
    }
  }

  /**
   * Load shedding. The Check's deadline, less the margin to answer, is gone (it queued behind a stall or an
   * overload): Envoy has stopped waiting, or is about to. Asking Redis now would reserve a unit only to
   * release it, two commands for an answer nobody reads, taken from the Checks behind it that can still
   * make their deadline. So it gets its tier's failure-policy answer (a 503 when its key was not cached, no
   * tier being known), touches nothing, and is counted apart from decisions and errors
   * (`usage_limiter_checks_shed`). grpc-js starts the deadline when it parses the request, so time queued in
   * the kernel's socket buffer is not seen here (README "Performance and scale").
   */
  private shed(decision: Decision): Decision {
    this.stats.shed++;
    return decision;
  }

  private emit(decision: Decision, startedMs: number): Decision {
    for (const e of decision.events) logEvent(this.deps.logger, e);
    this.deps.onDecision?.(decision, performance.now() - startedMs);
    return decision;
  }

  /** The period's counters are missing: rebuild them, then ask once more (a failure takes the tier's policy). */
  private async rebuildAndRetry(
    plan: Extract<Plan, { kind: 'store' }>,
    key: ResolvedKey | null,
    budget: () => number,
  ): Promise<CheckAndReserveResult> {
    const { store, now } = this.deps;
    const period = plan.ctx.period;
    if (key === null || period === null) throw new Error('usage counters missing for a Check without a metered period');
    this.stats.usageRebuilds++;
    const recover =
      this.deps.recoverUsage ??
      (async (k: ResolvedKey, p: Period) => {
        await store.restoreUsage(k.tenant.id, p.label, { total: 0, endpoints: {} }, p.endMs, now());
      });
    await withTimeout(recover(key, period), budget(), 'usage rebuild');
    // Denials remembered from the lost counters do not hold for the rebuilt ones.
    this.deps.denyMemory?.forget(key.tenant.id);
    const again = await withTimeout(store.checkAndReserve(plan.request), budget(), 'counter store');
    if (again.usageMissing) throw new Error('usage counters still missing after a rebuild');
    return again;
  }

  /**
   * The policy answer is unmetered, but a store call that timed out may still run: a hung Redis executes what
   * was already sent once it wakes up, reserving a unit for a request that was refused or passed as degraded.
   * Settling the reservation as failed, on the same connection and so behind the script, gives that unit back;
   * when the script never ran there is nothing pending under the request id, and nothing happens.
   */
  private cancelReservation(req: CheckAndReserveRequest): void {
    const q = req.quota;
    if (q !== null) this.release(req.tenantId, q.period, q.endpoint, req.requestId);
  }

  /**
   * An allowed Check whose answer came too late for Envoy (its deadline passed: Envoy answered the client
   * itself and forwarded nothing) gives back the unit it reserved, as a failed request would.
   */
  abandon(decision: Decision, requestId: string): void {
    if (decision.outcome === 'allow' && decision.metering !== null) {
      this.release(decision.tenantId, decision.metering.period, decision.metering.endpoint, requestId);
    }
  }

  private release(tenantId: string, period: string, endpoint: string, requestId: string): void {
    this.deps.store
      .settle([{ tenantId, period, endpoint, requestId, failed: true }], this.deps.now())
      .then(([outcome]) => {
        // The unit is back: a denial remembered meanwhile (the tenant was at its limit) no longer holds.
        if (outcome === 'refunded') this.deps.denyMemory?.forget(tenantId);
      })
      .catch(() => {});
  }

  // At most one error line per second: an outage must be visible, not flood the log at request rate.
  private logFailure(code: 'DatabaseError' | 'CacheError', err: unknown, tenantId?: string): void {
    const t = this.deps.now();
    if (t - this.lastErrorLogMs < 1000) return;
    this.lastErrorLogMs = t;
    this.deps.logger.error(
      { event: 'check.dependency_failed', code, tenantId, err: err instanceof Error ? err.message : String(err) },
      code === 'CacheError' ? 'counter store failed; applying tier failure policy' : 'directory lookup failed',
    );
  }
}

// Ships settled usage to Stripe as Billing Meter events, off the hot path, every USAGE_REPORT_INTERVAL_SECONDS
// and once more on shutdown. For each tenant with a Stripe customer and each of its recent periods:
//   1. a batch left pending (a crash or a failure between recording and confirming it) is re-sent first,
//      with its own identifier, until Stripe has it;
//   2. then `settled - reported_units` per endpoint, when positive, becomes a new batch: recorded in
//      Postgres first, sent, then confirmed (usage-reports.ts).
// Settled usage is the Redis counter less the reservations still waiting for their access-log entry
// (store.settledUsage), so a unit that is later refunded is never billed. Nothing is ever sent twice as two
// events: a batch keeps its identifier until confirmed, and Stripe answers a known identifier with a
// duplicate error, which counts as delivered. Sending is retried with exponential backoff and jitter on
// connection errors, timeouts, 429 and 5xx; what still fails stays pending for the next run.
import { periodFor, type Period } from '../core/period.js';
import { deadlineFor, type AppDatabase } from '../db/client.js';
import type { Logger } from '../logger.js';
import type { CounterStore } from '../store/types.js';
import { within } from '../timers.js';
import { meterEventIdentifier, meterEventTimestamp } from './report-identity.js';
import { describeStripeError, isRetryable, type MeterEventSink } from './stripe-client.js';
import type { TenantLocks } from './tenant-locks.js';
import {
  billableTenants,
  confirmBatch,
  customerOf,
  pendingRows,
  rowsFor,
  startBatch,
  type BillableTenant,
  type ReportRow,
} from './usage-reports.js';

export interface RetryPolicy {
  /** Sends of one batch within one run, the first included. */
  readonly attempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, baseDelayMs: 250, maxDelayMs: 4_000 };

export interface UsageReporterDeps {
  readonly db: AppDatabase;
  readonly store: CounterStore;
  readonly sink: MeterEventSink;
  readonly locks: TenantLocks;
  readonly now: () => number;
  readonly logger: Logger;
  readonly eventName: (endpoint: string) => string;
  readonly intervalMs: number;
  readonly retry?: RetryPolicy;
  /** Bound on the final flush at shutdown. Default 10 s. */
  readonly finalFlushMs?: number;
  /**
   * Client-side deadline on each Postgres call (the handle's `deadlineMs`): a run waits for the one before,
   * so a query the driver never settles would otherwise stop reporting for good. A call past it fails the
   * tenant's turn like any database error; its batch stays pending and goes out under its identifier next run.
   */
  readonly deadlineMs?: number;
}

export interface ReporterStats {
  flushes: number;
  /** Batches Stripe accepted, and batches it already had (re-sent after a crash or a lost answer). */
  accepted: number;
  duplicates: number;
  unitsReported: number;
  /** Sends that failed after every retry (the batch stays pending). */
  failures: number;
  lastFlushAtMs: number | null;
}

export interface FlushSummary {
  readonly batches: number;
  readonly units: number;
  readonly failures: number;
  /** Tenants another reporter was working on. */
  readonly skipped: number;
}

/** After this many tenants in a row fail to deliver, Stripe is taken to be down until the next run. */
const CONSECUTIVE_FAILURES_TO_ABORT = 3;
const TENANT_CONCURRENCY = 4;

class SendFailed extends Error {
  constructor(
    readonly retryable: boolean,
    message: string,
  ) {
    super(message);
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Exponential backoff with "equal jitter": half the delay fixed, half random, so reporters spread out. */
export function backoffMs(attempt: number, policy: RetryPolicy, random: () => number = Math.random): number {
  const exp = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  return Math.round(exp / 2 + (random() * exp) / 2);
}

export class UsageReporter {
  readonly stats: ReporterStats = {
    flushes: 0,
    accepted: 0,
    duplicates: 0,
    unitsReported: 0,
    failures: 0,
    lastFlushAtMs: null,
  };
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<FlushSummary> | null = null;
  private stopped = false;
  private readonly retry: RetryPolicy;

  /** A Postgres call, bounded by `deadlineMs` when set. */
  private readonly pg: <T>(p: Promise<T>, step: string) => Promise<T>;

  constructor(private readonly deps: UsageReporterDeps) {
    this.retry = deps.retry ?? DEFAULT_RETRY;
    this.pg = deadlineFor(deps.deadlineMs, 'usage reporter');
  }

  /** Runs a flush now (pending batches from a previous crash go first), then every interval. */
  start(): void {
    if (this.timer !== null || this.stopped) return;
    const tick = () => {
      this.timer = null;
      void this.flush()
        .catch((err: unknown) => this.deps.logger.error({ event: 'usage.report_error', err: String(err) }, 'usage report run failed'))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, this.deps.intervalMs);
        });
    };
    this.timer = setTimeout(tick, 0);
  }

  /** Stops the loop, then reports what has settled once more (bounded), so a rolling restart loses no time. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const limit = this.deps.finalFlushMs ?? 10_000;
    const flushed = this.flush().catch((err: unknown) =>
      this.deps.logger.warn({ event: 'usage.report_error', err: String(err) }, 'final usage report failed'),
    );
    await within(flushed, limit, () => undefined);
    await this.close();
  }

  /** Stops the loop and releases the locks' connection, without a final flush. */
  async close(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    await this.deps.locks.close().catch(() => {});
  }

  /** One run over every billable tenant. Runs do not overlap: a call during a run waits, then runs again. */
  flush(): Promise<FlushSummary> {
    const previous = this.running ?? Promise.resolve(null);
    const run = previous.catch(() => null).then(() => this.runOnce());
    this.running = run;
    void run.finally(() => {
      if (this.running === run) this.running = null;
    }).catch(() => {});
    return run;
  }

  private async runOnce(): Promise<FlushSummary> {
    const { db, now, logger } = this.deps;
    const nowMs = now();
    const tenants = new Map<string, BillableTenant>();
    for (const t of await this.pg(billableTenants(db), 'billable tenants')) tenants.set(t.id, t);
    // Periods with a batch in flight are revisited even if they are old or the tenant is no longer billable.
    const inFlight = new Map<string, Set<string>>();
    for (const r of await this.pg(pendingRows(db), 'pending rows')) {
      const set = inFlight.get(r.tenantId) ?? new Set<string>();
      set.add(r.period);
      inFlight.set(r.tenantId, set);
    }
    const tenantIds = [...new Set([...tenants.keys(), ...inFlight.keys()])];

    const summary = { batches: 0, units: 0, failures: 0, skipped: 0 };
    let consecutiveFailures = 0;
    let aborted = false;
    let next = 0;
    const worker = async () => {
      while (!aborted && next < tenantIds.length) {
        const tenantId = tenantIds[next++] as string;
        const result = await this.reportTenant(tenantId, tenants.get(tenantId) ?? null, inFlight.get(tenantId), nowMs);
        summary.batches += result.batches;
        summary.units += result.units;
        summary.failures += result.failures;
        if (result.skipped) summary.skipped++;
        if (result.stripeDown) {
          consecutiveFailures++;
          if (consecutiveFailures >= CONSECUTIVE_FAILURES_TO_ABORT) aborted = true;
        } else if (result.batches > 0) {
          consecutiveFailures = 0;
        }
      }
    };
    // Every worker finishes before the run ends, even when one failed: the next run must not start while a
    // tenant of this one is still being reported (the tenant locks are re-entrant within this process).
    const ended = await Promise.allSettled(Array.from({ length: Math.min(TENANT_CONCURRENCY, tenantIds.length) }, worker));
    for (const e of ended) if (e.status === 'rejected') throw e.reason;

    this.stats.flushes++;
    this.stats.lastFlushAtMs = nowMs;
    if (summary.batches > 0 || summary.failures > 0) {
      logger.info({ event: 'usage.report_flush', ...summary, aborted }, 'usage reported to Stripe');
    }
    return summary;
  }

  private async reportTenant(
    tenantId: string,
    tenant: BillableTenant | null,
    inFlight: Set<string> | undefined,
    nowMs: number,
  ): Promise<{ batches: number; units: number; failures: number; skipped: boolean; stripeDown: boolean }> {
    const out = { batches: 0, units: 0, failures: 0, skipped: false, stripeDown: false };
    const { locks, logger } = this.deps;
    const locking = locks.tryLock(tenantId);
    const locked = await this.pg(locking, 'tenant lock').catch((err: unknown) => {
      // Past the deadline the lock may still be taken on the server: give it back if it is.
      void locking.then((ok) => (ok ? locks.unlock(tenantId) : undefined)).catch(() => {});
      throw err;
    });
    if (!locked) return { ...out, skipped: true };
    try {
      const customer = tenant?.stripeCustomerId ?? (await this.pg(customerOf(this.deps.db, tenantId), 'customer'));
      if (customer === null) {
        logger.warn({ event: 'usage.report_failed', tenantId, reason: 'no Stripe customer' }, 'a pending usage batch has no customer to bill');
        return out;
      }
      for (const period of this.periodsOf(tenant, inFlight, nowMs)) {
        try {
          const r = await this.reportPeriod(tenantId, customer, period, nowMs);
          out.batches += r.batches;
          out.units += r.units;
          out.failures += r.failures;
        } catch (err) {
          if (err instanceof SendFailed && err.retryable) {
            out.failures++;
            out.stripeDown = true;
            break;
          }
          throw err;
        }
      }
      return out;
    } finally {
      await this.pg(locks.unlock(tenantId), 'tenant unlock').catch(() => {});
    }
  }

  /** The current period and the one before (late settlements), plus any with a batch in flight. */
  private periodsOf(tenant: BillableTenant | null, inFlight: Set<string> | undefined, nowMs: number): Period[] {
    const anchor = tenant?.billingAnchorMs ?? null;
    const current = periodFor(nowMs, anchor);
    const previous = periodFor(current.startMs - 1, anchor);
    const byLabel = new Map<string, Period>([
      [previous.label, previous],
      [current.label, current],
    ]);
    for (const label of inFlight ?? []) if (!byLabel.has(label)) byLabel.set(label, calendarPeriodOf(label));
    return [...byLabel.values()];
  }

  private async reportPeriod(
    tenantId: string,
    customer: string,
    period: Period,
    nowMs: number,
  ): Promise<{ batches: number; units: number; failures: number }> {
    const { db, store } = this.deps;
    const out = { batches: 0, units: 0, failures: 0 };
    const rows = new Map<string, ReportRow>();
    for (const r of await this.pg(rowsFor(db, tenantId, period.label), 'report rows')) rows.set(r.endpoint, r);

    // 1. What was recorded but not confirmed goes first, under its own identifier.
    for (const row of rows.values()) {
      if (row.pending === null) continue;
      const ok = await this.deliver(tenantId, customer, period, row.endpoint, row.pending.identifier, row.pending.units, row.pending.sinceMs);
      if (!ok) {
        out.failures++;
        continue;
      }
      if (await this.pg(confirmBatch(db, { tenantId, endpoint: row.endpoint, period: period.label, identifier: row.pending.identifier }), 'confirm batch')) {
        out.batches++;
        out.units += row.pending.units;
      }
      rows.set(row.endpoint, { ...row, reportedUnits: row.reportedUnits + row.pending.units, pending: null });
    }

    // 2. Newly settled usage.
    const usage = await store.settledUsage(tenantId, period.label, nowMs);
    if (!usage.exists) return out; // never used, or lost and not rebuilt yet: nothing to say
    for (const [endpoint, s] of Object.entries(usage.endpoints)) {
      const row = rows.get(endpoint);
      if (row?.pending) continue; // it failed above: its turn comes again next run
      const reported = row?.reportedUnits ?? 0;
      const delta = s.settled - reported;
      if (delta < 0) {
        // An operator lowered the counter below what Stripe already has; never sent as a negative event.
        this.deps.logger.warn(
          { event: 'usage.report_ahead', tenantId, endpoint, period: period.label, settled: s.settled, reported },
          'settled usage is below what was already reported; nothing sent',
        );
        continue;
      }
      if (delta === 0) continue;
      const identifier = meterEventIdentifier(tenantId, endpoint, period.label, reported, s.settled);
      const started = await this.pg(
        startBatch(db, { tenantId, endpoint, period: period.label, fromUnits: reported, units: delta, identifier, atMs: nowMs }),
        'start batch',
      );
      if (!started) continue; // another reporter moved the row: its batch, its turn
      if (!(await this.deliver(tenantId, customer, period, endpoint, identifier, delta, nowMs))) {
        out.failures++;
        continue;
      }
      if (await this.pg(confirmBatch(db, { tenantId, endpoint, period: period.label, identifier }), 'confirm batch')) {
        out.batches++;
        out.units += delta;
      }
    }
    return out;
  }

  /**
   * Sends one batch, retrying what may succeed later. True once Stripe has it; false on a failure that
   * retrying will not fix (logged; the batch stays pending); throws SendFailed(retryable) when Stripe
   * stayed unreachable through every attempt.
   */
  private async deliver(
    tenantId: string,
    customer: string,
    period: Period,
    endpoint: string,
    identifier: string,
    units: number,
    batchAtMs: number,
  ): Promise<boolean> {
    const { sink, logger } = this.deps;
    const event = {
      eventName: this.deps.eventName(endpoint),
      stripeCustomerId: customer,
      value: units,
      endpoint,
      identifier,
      timestamp: meterEventTimestamp(batchAtMs, period),
    };
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await sink.send(event);
        if (result === 'duplicate') this.stats.duplicates++;
        else this.stats.accepted++;
        this.stats.unitsReported += units;
        logger.debug(
          { event: 'usage.reported', tenantId, endpoint, period: period.label, units, identifier, duplicate: result === 'duplicate', attempt },
          'usage batch delivered to Stripe',
        );
        return true;
      } catch (err) {
        const retryable = isRetryable(err);
        if (!retryable || attempt >= this.retry.attempts) {
          this.stats.failures++;
          logger.warn(
            {
              event: 'usage.report_failed',
              tenantId,
              endpoint,
              period: period.label,
              identifier,
              attempts: attempt,
              retryable,
              err: describeStripeError(err),
            },
            retryable ? 'Stripe unreachable; the batch stays pending' : 'Stripe refused the batch; it stays pending',
          );
          if (retryable) throw new SendFailed(true, describeStripeError(err));
          return false;
        }
        await sleep(backoffMs(attempt, this.retry));
      }
    }
  }
}

/** A period known only by its label (a batch in flight of an older period): its calendar month. */
function calendarPeriodOf(label: string): Period {
  const [y, m] = label.split('-').map(Number);
  const startMs = Date.UTC(y ?? 1970, (m ?? 1) - 1, 1);
  return periodFor(startMs, null);
}

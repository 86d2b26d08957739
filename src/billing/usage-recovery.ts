// Rebuilds a period's counters that Redis no longer has (flush, restart without persistence, failover to an
// empty replica) before the Check enforces on them again. The Check's script reports the hash missing
// instead of starting from zero; this rebuilds it from what billing recorded and opens it once:
//   - Postgres: per endpoint, reported units plus the batch in flight (it will be delivered);
//   - Stripe's meter event summaries for the period, when the tenant has a customer and Postgres has rows
//     for the period (so counters existed and were lost, rather than never used): a meter that only one
//     endpoint feeds raises that endpoint to Stripe's figure; a shared meter (one event name, endpoint in
//     the payload) can only say how much in all, so its excess goes to `__total__` only.
// When Stripe's figure wins for an endpoint, usage_reports is raised to it first, so the reporter does not
// send those units again. A brand-new period (the first metered Check of a tenant in a period) finds no
// rows and opens at zero: one Postgres query, never a Stripe call on the hot path. (Were Postgres to have
// lost its rows as well as Redis its counters, that usage would be lost.)
// What had settled in Redis but was not reported yet (at most one reporting interval) is lost with it.
import type { Period } from '../core/period.js';
import type { ResolvedKey } from '../core/types.js';
import { deadlineFor, type AppDatabase } from '../db/client.js';
import type { Logger } from '../logger.js';
import type { CounterStore } from '../store/types.js';
import { describeStripeError, type MeterSummaries } from './stripe-client.js';
import { raiseReported, reportedUsage } from './usage-reports.js';

export interface UsageRecoveryDeps {
  readonly db: AppDatabase;
  readonly store: CounterStore;
  /** Null when Stripe is not configured. */
  readonly summaries: MeterSummaries | null;
  readonly eventName: (endpoint: string) => string;
  readonly now: () => number;
  readonly logger: Logger;
  /**
   * Client-side deadline on each Postgres call (the handle's `deadlineMs`). A rebuild is shared by every Check
   * of its tenant and period: one query the driver never settled would leave them all on the failure policy
   * until a restart.
   */
  readonly deadlineMs?: number;
}

export interface RebuiltUsage {
  readonly total: number;
  readonly endpoints: Readonly<Record<string, number>>;
  readonly fromPostgres: number;
  /** Stripe's total over the meters asked, or null when it was not asked (or could not answer). */
  readonly fromStripe: number | null;
}

export type RecoverUsage = (key: ResolvedKey, period: Period) => Promise<void>;

export interface CombinedUsage {
  readonly total: number;
  readonly endpoints: Record<string, number>;
  /** Endpoints that Stripe's figure raised above Postgres's (their meter is theirs alone). */
  readonly raisedByStripe: Record<string, number>;
}

/** Combines Postgres's per-endpoint figures with Stripe's per-meter totals (pure). */
export function combineUsage(
  postgres: ReadonlyMap<string, number>,
  endpoints: readonly string[],
  stripeByEvent: ReadonlyMap<string, number> | null,
  eventName: (endpoint: string) => string,
): CombinedUsage {
  const out: Record<string, number> = {};
  const raisedByStripe: Record<string, number> = {};
  for (const e of endpoints) out[e] = postgres.get(e) ?? 0;
  let extra = 0;
  if (stripeByEvent !== null) {
    const feeders = new Map<string, string[]>();
    for (const e of endpoints) feeders.set(eventName(e), [...(feeders.get(eventName(e)) ?? []), e]);
    for (const [event, stripeTotal] of stripeByEvent) {
      const fed = feeders.get(event) ?? [];
      const ours = fed.reduce((n, e) => n + (out[e] ?? 0), 0);
      if (stripeTotal <= ours) continue;
      if (fed.length === 1) {
        out[fed[0] as string] = stripeTotal;
        raisedByStripe[fed[0] as string] = stripeTotal;
      } else {
        extra += stripeTotal - ours;
      }
    }
  }
  const total = Object.values(out).reduce((a, b) => a + b, 0) + extra;
  return { total, endpoints: out, raisedByStripe };
}

const minuteFloor = (ms: number) => Math.floor(ms / 60_000) * 60;
const minuteCeil = (ms: number) => Math.ceil(ms / 60_000) * 60;

export function createUsageRecovery(deps: UsageRecoveryDeps): RecoverUsage {
  // One rebuild per tenant and period at a time in this process; other replicas may rebuild too, and the
  // store's conditional restore keeps the first.
  const inFlight = new Map<string, Promise<void>>();
  const bounded = deadlineFor(deps.deadlineMs, 'usage rebuild');

  async function rebuild(key: ResolvedKey, period: Period): Promise<void> {
    const { db, store, summaries, logger, now } = deps;
    const tenantId = key.tenant.id;
    const postgres = await bounded(reportedUsage(db, tenantId, period.label), 'reported usage');
    const endpoints = [...new Set([...Object.keys(key.tier.monthlyQuota.endpoints), ...postgres.keys()])];
    const customer = key.tenant.stripeCustomerId;
    const askStripe = summaries !== null && customer !== null && postgres.size > 0;

    let stripeByEvent: Map<string, number> | null = null;
    if (askStripe && customer !== null && summaries !== null) {
      try {
        stripeByEvent = new Map();
        // Summaries take whole minutes. Rounded inward: the previous period's late batches are stamped a second
        // before this one starts (report-identity.ts), so a start rounded down would count them here; and
        // Stripe's figure only ever raises the counts, so leaving a few seconds out keeps Postgres's instead.
        const nowMs = now();
        const startS = minuteCeil(period.startMs);
        const endS = Math.max(startS + 60, nowMs < period.endMs ? minuteCeil(nowMs) : minuteFloor(period.endMs));
        for (const event of new Set(endpoints.map(deps.eventName))) {
          const total = await summaries.total(event, customer, startS, endS);
          if (total !== null) stripeByEvent.set(event, total);
        }
      } catch (err) {
        stripeByEvent = null;
        logger.warn(
          { event: 'usage.rebuild_stripe_unavailable', tenantId, period: period.label, err: describeStripeError(err) },
          'Stripe meter summaries unavailable; rebuilding from Postgres only',
        );
      }
    }

    const combined = combineUsage(postgres, endpoints, stripeByEvent, deps.eventName);
    // Before the counters exist again: once they do, the reporter would send these units a second time.
    for (const [endpoint, units] of Object.entries(combined.raisedByStripe)) {
      await bounded(raiseReported(db, { tenantId, endpoint, period: period.label }, units), 'raise reported');
    }
    const restored = await store.restoreUsage(tenantId, period.label, combined, period.endMs, now());
    const fromPostgres = [...postgres.values()].reduce((a, b) => a + b, 0);
    const fromStripe = stripeByEvent === null ? null : [...stripeByEvent.values()].reduce((a, b) => a + b, 0);
    if (!restored) return; // someone else rebuilt it first
    if (postgres.size > 0 || (fromStripe ?? 0) > 0) {
      logger.warn(
        {
          event: 'usage.rebuilt',
          tenantId,
          period: period.label,
          units: combined.total,
          endpoints: combined.endpoints,
          fromPostgres,
          fromStripe,
          raisedByStripe: combined.raisedByStripe,
        },
        'usage counters were missing from Redis and have been rebuilt',
      );
    } else {
      logger.debug({ event: 'usage.period_opened', tenantId, period: period.label }, 'usage period opened at zero');
    }
  }

  return (key, period) => {
    const id = `${key.tenant.id}\u0000${period.label}`;
    let p = inFlight.get(id);
    if (p === undefined) {
      p = rebuild(key, period).finally(() => inFlight.delete(id));
      inFlight.set(id, p);
    }
    return p;
  };
}

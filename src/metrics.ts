import type { Attributes, Histogram, Meter, ObservableResult } from '@opentelemetry/api';
import type { Decision } from './core/decide.js';
import { within } from './timers.js';
import type { KeyCache } from './directory/key-cache.js';
import type { CheckService } from './service/check-service.js';

// Every metric the server exports, as OpenTelemetry instruments (Prometheus text on /metrics, OTLP when
// configured). Tenant ids are never attributes (unbounded cardinality); outcome, code and tier are.
//
// The Check's hot path pays for two things only: a Map increment for the decision count (exported through
// an observable counter at collection time; a synchronous OTel counter with three attributes costs ~1.5 µs
// a call, the Map ~20 ns) and one attribute-free histogram record (~0.13 µs).

export interface AlertMetricsSource {
  readonly stats: {
    readonly raised: Readonly<Record<'threshold' | 'repeated_violations', number>>;
    readonly delivered: number;
    readonly failed: number;
    readonly gaveUp: number;
    readonly dropped: number;
  };
  /** Alerts not yet delivered: queued in memory plus undelivered outbox rows. */
  backlog(): Promise<number>;
}

export interface MetricsSources {
  readonly checkService: CheckService;
  readonly keyCache: KeyCache;
  readonly alerts?: AlertMetricsSource;
  /** usage_reports rows with a batch in flight to Stripe (pending_identifier set). */
  readonly billingBacklog?: () => Promise<number>;
}

/** Check latency buckets (seconds): the Check answers in well under a millisecond when Redis is near. */
const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
/** A scrape must not hang on a slow database: a backlog that cannot be counted in time is left out. */
const BACKLOG_QUERY_TIMEOUT_MS = 1000;

interface Tally {
  readonly attributes: Attributes;
  count: number;
}

/** Records each decision; created once per app by `registerMetrics`. */
export class CheckMetrics {
  private readonly tallies = new Map<string, Tally>();

  constructor(private readonly duration: Histogram) {}

  record(decision: Decision, elapsedMs: number): void {
    const degraded = decision.outcome === 'allow' && decision.degraded;
    const tier = decision.tierId ?? 'none';
    const key = degraded ? `${decision.code} ${tier} degraded` : `${decision.code} ${tier}`;
    let t = this.tallies.get(key);
    if (t === undefined) {
      const attributes: Attributes = { outcome: decision.outcome, code: decision.code, tier };
      if (degraded) attributes.degraded = 'true';
      t = { attributes, count: 0 };
      this.tallies.set(key, t);
    }
    t.count++;
    this.duration.record(elapsedMs / 1000);
  }

  observe(result: ObservableResult): void {
    for (const t of this.tallies.values()) result.observe(t.count, t.attributes);
  }
}

function bounded<T>(p: Promise<T>, ms: number): Promise<T> {
  return within(p, ms, () => {
    throw new Error('timed out');
  });
}

export function registerMetrics(meter: Meter, s: MetricsSources): CheckMetrics {
  const checks = new CheckMetrics(
    meter.createHistogram('usage_limiter_check_duration_seconds', {
      description: 'Time the server spent deciding one Check (key cache, Redis), in seconds.',
      unit: 's',
      advice: { explicitBucketBoundaries: DURATION_BUCKETS },
    }),
  );
  meter
    .createObservableCounter('usage_limiter_check_decisions', {
      description: 'Check decisions by outcome, code and tier (degraded="true" when a failure policy allowed it).',
    })
    .addCallback((r) => checks.observe(r));
  meter
    .createObservableCounter('usage_limiter_store_errors', {
      description: 'Counter store (Redis) failures or timeouts during a Check (CacheError).',
    })
    .addCallback((r) => r.observe(s.checkService.stats.storeErrors));
  meter
    .createObservableCounter('usage_limiter_checks_shed', {
      description: 'Checks whose deadline had passed when they needed Redis or Postgres, answered without asking (load shedding).',
    })
    .addCallback((r) => r.observe(s.checkService.stats.shed));
  meter
    .createObservableCounter('usage_limiter_directory_errors', {
      description: 'Directory (Postgres) lookups that failed or timed out during a Check (DatabaseError).',
    })
    .addCallback((r) => r.observe(s.checkService.stats.directoryErrors));
  meter
    .createObservableCounter('usage_limiter_key_cache_lookups', {
      description: 'Key cache lookups by result; hit ratio = hit / (hit + miss).',
    })
    .addCallback((r) => {
      r.observe(s.keyCache.stats.hits, { result: 'hit' });
      r.observe(s.keyCache.stats.misses, { result: 'miss' });
    });
  meter
    .createObservableCounter('usage_limiter_key_cache_loads', {
      description:
        'Keys the cache loaded from Postgres (not cached, unknown past the negative TTL, or known past the TTL and reloaded in the background), by whether Postgres knew them.',
    })
    .addCallback((r) => {
      r.observe(s.keyCache.stats.loadedKnown, { key: 'known' });
      r.observe(s.keyCache.stats.loadedUnknown, { key: 'unknown' });
    });
  meter
    .createObservableCounter('usage_limiter_usage_rebuilds', {
      description:
        "Checks that found their period's usage counters missing and waited for a rebuild from Postgres (a tenant's first metered Check of a period, or counters the store lost).",
    })
    .addCallback((r) => r.observe(s.checkService.stats.usageRebuilds));
  meter
    .createObservableGauge('usage_limiter_key_cache_entries', { description: 'Keys held in the in-process cache.' })
    .addCallback((r) => r.observe(s.keyCache.size));

  const alerts = s.alerts;
  if (alerts) {
    meter
      .createObservableCounter('usage_limiter_alerts_raised', {
        description: 'Alerts raised by kind (threshold, repeated_violations).',
      })
      .addCallback((r) => {
        for (const [kind, n] of Object.entries(alerts.stats.raised)) r.observe(n, { kind });
      });
    meter
      .createObservableCounter('usage_limiter_alert_deliveries', {
        description: 'Alert webhook delivery attempts by result (delivered, failed, gave_up).',
      })
      .addCallback((r) => {
        r.observe(alerts.stats.delivered, { result: 'delivered' });
        r.observe(alerts.stats.failed, { result: 'failed' });
        r.observe(alerts.stats.gaveUp, { result: 'gave_up' });
      });
    meter
      .createObservableCounter('usage_limiter_alerts_dropped', {
        description: 'Alerts dropped because the in-memory queue was full (Postgres unreachable for long).',
      })
      .addCallback((r) => r.observe(alerts.stats.dropped));
    meter
      .createObservableGauge('usage_limiter_alert_backlog', {
        description: 'Alerts not yet delivered to their webhooks (queued in memory or waiting in alert_outbox).',
      })
      .addCallback(async (r) => {
        try {
          r.observe(await bounded(alerts.backlog(), BACKLOG_QUERY_TIMEOUT_MS));
        } catch {
          // Unknown this scrape; the series goes stale rather than reporting a false zero.
        }
      });
  }
  const billingBacklog = s.billingBacklog;
  if (billingBacklog) {
    meter
      .createObservableGauge('usage_limiter_billing_backlog', {
        description: 'Usage report batches in flight to Stripe (usage_reports rows with pending_identifier set).',
      })
      .addCallback(async (r) => {
        try {
          r.observe(await bounded(billingBacklog(), BACKLOG_QUERY_TIMEOUT_MS));
        } catch {
          // As above.
        }
      });
  }
  return checks;
}

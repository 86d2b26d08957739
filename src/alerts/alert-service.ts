import type { Decision } from '../core/decide.js';
import type { Logger } from '../logger.js';
import type { AlertMetricsSource } from '../metrics.js';
import { AlertQueue } from './alert-queue.js';
import { AlertDispatcher, type DispatcherOptions } from './dispatcher.js';
import type { Outbox } from './outbox.js';
import { repeatedViolationsAlert, thresholdAlert, type Alert } from './types.js';
import { ViolationTracker, type WindowCounter } from './violations.js';

// Everything alerting, wired: the Check's decisions come in through `observe` (synchronous, O(1)); threshold
// crossings go to the queue → outbox → dispatcher; 429s go to the violation tracker, whose crossings are
// logged and queued the same way. The threshold log line itself is written by the Check (service/events.ts).

export interface AlertTuning {
  /** How often queued alerts are written to the outbox (what a hard crash can lose at most). */
  readonly flushMs: number;
  readonly queueMax: number;
  readonly queueBatch: number;
  /** How often the dispatcher looks for due rows (it is also woken after each write). */
  readonly dispatchMs: number;
  readonly dispatchBatch: number;
  readonly sendTimeoutMs: number;
  readonly leaseMs: number;
  readonly retryBaseMs: number;
  readonly retryCapMs: number;
  readonly maxAttempts: number;
  /** How often denial counts are added to the shared violation counters. */
  readonly violationFlushMs: number;
}

export const DEFAULT_ALERT_TUNING: AlertTuning = {
  flushMs: 250,
  queueMax: 10_000,
  queueBatch: 500,
  dispatchMs: 1_000,
  dispatchBatch: 50,
  sendTimeoutMs: 10_000,
  leaseMs: 60_000,
  retryBaseMs: 5_000,
  retryCapMs: 3_600_000,
  // With the defaults above, about a day of retries.
  maxAttempts: 30,
  violationFlushMs: 1_000,
};

export interface AlertServiceOptions {
  readonly logger: Logger;
  /** The app clock (pinned in tests): alert times and violation windows. */
  readonly now: () => number;
  /** Null: webhooks are off (no ALERT_WEBHOOK_SECRET); alerts are only logged. */
  readonly outbox: Outbox | null;
  readonly secret: string | undefined;
  readonly violationCounter: WindowCounter;
  readonly violationThreshold: number;
  readonly violationWindowMs: number;
  readonly keyPrefix: string;
  /** Redis Cluster key names for the violation counters (REDIS_CLUSTER_NODES). */
  readonly clusterKeys?: boolean;
  readonly tuning?: Partial<AlertTuning>;
  /** Replaces the HTTP POST (tests). */
  readonly post?: DispatcherOptions['post'];
}

export class AlertService implements AlertMetricsSource {
  private readonly queue: AlertQueue | null;
  private readonly dispatcher: AlertDispatcher | null;
  private readonly violations: ViolationTracker;
  private readonly raised = { threshold: 0, repeated_violations: 0 };

  constructor(private readonly o: AlertServiceOptions) {
    const t = { ...DEFAULT_ALERT_TUNING, ...o.tuning };
    const outbox = o.outbox;
    this.dispatcher =
      outbox && o.secret
        ? new AlertDispatcher({
            outbox,
            secret: o.secret,
            logger: o.logger,
            intervalMs: t.dispatchMs,
            batchSize: t.dispatchBatch,
            leaseMs: t.leaseMs,
            timeoutMs: t.sendTimeoutMs,
            retryBaseMs: t.retryBaseMs,
            retryCapMs: t.retryCapMs,
            maxAttempts: t.maxAttempts,
            post: o.post,
          })
        : null;
    this.queue =
      outbox && this.dispatcher
        ? new AlertQueue({
            write: async (batch) => {
              await outbox.enqueue(batch);
            },
            logger: o.logger,
            flushMs: t.flushMs,
            maxItems: t.queueMax,
            batchSize: t.queueBatch,
            onWritten: () => this.dispatcher?.kick(),
          })
        : null;
    this.violations = new ViolationTracker({
      counter: o.violationCounter,
      threshold: o.violationThreshold,
      windowMs: o.violationWindowMs,
      flushMs: t.violationFlushMs,
      keyPrefix: o.keyPrefix,
      clusterKeys: o.clusterKeys,
      logger: o.logger,
      now: o.now,
      onCrossed: (tenantId, window, count) => {
        this.raised.repeated_violations++;
        const alert = repeatedViolationsAlert(tenantId, window, count, o.violationThreshold, o.now());
        o.logger.warn(
          { event: 'usage.repeated_violations', tenantId, count, limit: o.violationThreshold, ...alert.data },
          `Repeated limit violations: ${count} denials within ${window.lengthMs / 1000} s`,
        );
        this.queue?.push(alert);
      },
    });
  }

  /** Hot path: called with every decision. */
  observe(d: Decision): void {
    if (d.outcome === 'allow') {
      if (d.events.length === 0 || d.metering === null) return;
      for (const e of d.events) {
        if (e.kind !== 'threshold') continue;
        this.raised.threshold++;
        this.queue?.push(thresholdAlert(e, d.metering.period, this.o.now()));
      }
      return;
    }
    if ((d.code === 'READ_RATE_LIMIT_EXCEEDED' || d.code === 'USAGE_LIMIT_EXCEEDED') && d.tenantId !== null) {
      this.violations.record(d.tenantId, this.o.now());
    }
  }

  /** For tests and the shutdown path: push an alert as if a Check had raised it. */
  enqueue(alert: Alert): void {
    this.queue?.push(alert);
  }

  start(): void {
    this.violations.start();
    this.queue?.start();
    this.dispatcher?.start();
  }

  /**
   * Shutdown: stop delivering (rows are durable; whoever runs next delivers them), then flush violation
   * counts and the queue to the outbox, and give the delivery round in progress a moment to finish.
   */
  async stop(): Promise<void> {
    const dispatching = this.dispatcher?.stop();
    await this.violations.stop();
    await this.queue?.stop();
    await dispatching;
  }

  /** Writes queued alerts and runs one delivery round now (tests, and a quicker path than the timers). */
  async flushNow(): Promise<void> {
    await this.violations.flush();
    await this.queue?.flush();
    await this.dispatcher?.round();
  }

  get stats() {
    const d = this.dispatcher?.stats;
    return {
      raised: { ...this.raised },
      delivered: d?.delivered ?? 0,
      failed: d?.failed ?? 0,
      gaveUp: d?.gaveUp ?? 0,
      dropped: this.queue?.dropped ?? 0,
    };
  }

  async backlog(): Promise<number> {
    const queued = this.queue?.length ?? 0;
    return queued + (this.o.outbox ? await this.o.outbox.backlog() : 0);
  }
}

import type { Logger } from '../logger.js';
import type { Alert } from './types.js';

// How alerts leave the Check: `push` is an array append (the Check never waits on Postgres), and a timer
// writes what has accumulated to the durable outbox in batches. The queue is bounded: if Postgres is
// unreachable for long, the oldest alerts stay and new ones are dropped (counted and logged), rather than
// the process growing without limit. A hard crash loses at most what arrived since the last flush.

export interface AlertQueueOptions {
  /** Writes one batch durably; rejects when it could not (the batch stays queued). */
  readonly write: (batch: readonly Alert[]) => Promise<void>;
  readonly logger: Logger;
  readonly flushMs: number;
  readonly maxItems: number;
  readonly batchSize: number;
  /** Called after a batch was written (e.g. to wake the dispatcher). */
  readonly onWritten?: () => void;
}

const DROP_LOG_INTERVAL_MS = 10_000;

export class AlertQueue {
  private items: Alert[] = [];
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;
  private failing = false;
  private lastDropLogMs = 0;
  dropped = 0;

  constructor(private readonly opts: AlertQueueOptions) {}

  get length(): number {
    return this.items.length;
  }

  /** O(1); never throws, never waits. */
  push(alert: Alert): void {
    if (this.items.length >= this.opts.maxItems) {
      this.dropped++;
      const t = Date.now();
      if (t - this.lastDropLogMs >= DROP_LOG_INTERVAL_MS) {
        this.lastDropLogMs = t;
        this.opts.logger.error(
          { event: 'alerts.dropped', dropped: this.dropped, queued: this.items.length },
          'alert queue full (outbox unreachable?): dropping new alerts',
        );
      }
      return;
    }
    this.items.push(alert);
  }

  start(): void {
    if (this.timer !== null) return;
    this.timer = setInterval(() => void this.flush().catch(() => {}), this.opts.flushMs);
    this.timer.unref();
  }

  /** Writes everything queued so far (one flush at a time). Rejects if a batch could not be written. */
  flush(): Promise<void> {
    this.flushing ??= this.drain().finally(() => {
      this.flushing = null;
    });
    return this.flushing;
  }

  private async drain(): Promise<void> {
    while (this.items.length > 0) {
      const batch = this.items.slice(0, this.opts.batchSize);
      try {
        await this.opts.write(batch);
      } catch (err) {
        if (!this.failing) {
          this.opts.logger.warn(
            { event: 'alerts.outbox_unreachable', queued: this.items.length, err: err instanceof Error ? err.message : String(err) },
            'could not write alerts to the outbox; keeping them queued',
          );
        }
        this.failing = true;
        throw err;
      }
      if (this.failing) this.opts.logger.info({ event: 'alerts.outbox_recovered' }, 'alert outbox reachable again');
      this.failing = false;
      this.items.splice(0, batch.length);
      this.opts.onWritten?.();
    }
  }

  /** Stops the timer and makes a last flush, retrying briefly; what still cannot be written is logged. */
  async stop(deadlineMs = 5_000): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    const until = Date.now() + deadlineMs;
    for (;;) {
      try {
        await this.flush();
        return;
      } catch {
        if (Date.now() + 200 > until) break;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    this.opts.logger.error(
      { event: 'alerts.lost_on_shutdown', lost: this.items.length, keys: this.items.slice(0, 20).map((a) => a.key) },
      'alerts could not be written to the outbox before shutdown',
    );
  }
}

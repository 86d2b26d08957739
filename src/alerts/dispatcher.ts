import type { Logger } from '../logger.js';
import { within } from '../timers.js';
import type { Outbox, OutboxRow } from './outbox.js';
import { postWebhook, tenantWebhookSecret, type DeliveryResult, type WebhookRequest } from './webhook.js';

// Delivers outbox rows to webhooks, far from the Check: claim a batch (SKIP LOCKED + lease), POST each
// signed, then record the outcome. Failures are retried with exponential backoff and jitter until
// `maxAttempts`; the row then stays in the table, no longer due, for the runbook to requeue.

export interface DispatcherOptions {
  readonly outbox: Outbox;
  readonly secret: string;
  readonly logger: Logger;
  readonly intervalMs: number;
  readonly batchSize: number;
  /** Longer than `timeoutMs`: a row is never claimed again while its send may still be running. */
  readonly leaseMs: number;
  readonly timeoutMs: number;
  readonly retryBaseMs: number;
  readonly retryCapMs: number;
  readonly maxAttempts: number;
  /** Replaceable for tests. */
  readonly post?: (r: WebhookRequest) => Promise<DeliveryResult>;
  readonly random?: () => number;
}

export interface DispatcherStats {
  delivered: number;
  failed: number;
  gaveUp: number;
}

/** Exponential backoff with "equal jitter": half fixed, half random, so retries spread but never bunch at 0. */
export function retryDelayMs(attempts: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const exp = Math.min(capMs, baseMs * 2 ** Math.max(0, attempts - 1));
  return Math.round(exp / 2 + random() * (exp / 2));
}

export class AlertDispatcher {
  readonly stats: DispatcherStats = { delivered: 0, failed: 0, gaveUp: 0 };
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  private failingDb = false;

  constructor(private readonly opts: DispatcherOptions) {}

  start(): void {
    if (this.timer !== null) return;
    this.stopped = false;
    this.timer = setInterval(() => this.kick(), this.opts.intervalMs);
    this.timer.unref();
    this.kick();
  }

  /** Runs a delivery round now (or right after the current one). */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.loop().finally(() => {
      this.running = null;
    });
  }

  /**
   * Stops claiming, and waits (up to `waitMs`) for the round in progress. A send still running after that
   * keeps its lease: if the process exits first, another replica (or the next start) retries the row.
   */
  async stop(waitMs = 2_000): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (this.running === null) return;
    await within(this.running, waitMs, () => undefined);
  }

  private async loop(): Promise<void> {
    do {
      this.again = false;
      const full = await this.round();
      // A full batch means more may be due: go again without waiting for the timer.
      if (full) this.again = true;
    } while (this.again && !this.stopped);
  }

  /** One claim-and-send round. Returns whether the batch was full. */
  async round(): Promise<boolean> {
    const o = this.opts;
    let rows: OutboxRow[];
    try {
      rows = await o.outbox.claim(o.batchSize, o.leaseMs);
      if (this.failingDb) o.logger.info({ event: 'alerts.outbox_recovered' }, 'alert outbox reachable again');
      this.failingDb = false;
    } catch (err) {
      if (!this.failingDb) {
        o.logger.warn({ event: 'alerts.outbox_unreachable', err: message(err) }, 'cannot claim alerts for delivery');
      }
      this.failingDb = true;
      return false;
    }
    await Promise.all(rows.map((r) => this.deliver(r)));
    return rows.length === o.batchSize;
  }

  private async deliver(row: OutboxRow): Promise<void> {
    const o = this.opts;
    const post = o.post ?? postWebhook;
    const ctx = { event: 'alerts.delivery', alertId: row.payload.id, kind: row.payload.type, tenantId: row.tenantId, target: row.target, attempt: row.attempts };
    try {
      if (row.url === null) {
        // The tenant removed its webhook after the alert was queued: nothing to deliver to.
        await o.outbox.giveUp(row.id, 'no webhook URL configured for this target');
        this.stats.gaveUp++;
        return;
      }
      const secret = row.target === 'tenant' ? tenantWebhookSecret(o.secret, row.tenantId) : o.secret;
      const result = await post({
        url: row.url,
        body: JSON.stringify(row.payload),
        secret,
        eventId: row.payload.id,
        attempt: row.attempts,
        timeoutMs: o.timeoutMs,
        nowS: Math.floor(Date.now() / 1000),
      });
      if (result.ok) {
        await o.outbox.markDelivered(row.id);
        this.stats.delivered++;
        o.logger.info({ ...ctx, status: result.status }, 'alert delivered');
        return;
      }
      const error = result.error ?? 'failed';
      if (row.attempts >= o.maxAttempts) {
        await o.outbox.giveUp(row.id, `gave up after ${row.attempts} attempts: ${error}`);
        this.stats.gaveUp++;
        o.logger.error({ ...ctx, err: error }, 'alert delivery failed for good; row kept in alert_outbox');
        return;
      }
      const retryInMs = retryDelayMs(row.attempts, o.retryBaseMs, o.retryCapMs, o.random);
      await o.outbox.markFailed(row.id, retryInMs, error);
      this.stats.failed++;
      o.logger.warn({ ...ctx, err: error, retryInMs }, 'alert delivery failed; will retry');
    } catch (err) {
      // Recording the outcome failed (database gone): the lease expires and the row is retried, at worst
      // delivered twice with the same event id.
      o.logger.warn({ ...ctx, err: message(err) }, 'could not record alert delivery outcome');
    }
  }
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

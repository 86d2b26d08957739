// envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs: Envoy streams one entry per admitted
// metered request (envoy.yaml filters on `reserved`), and each entry settles its reservation. A stream is
// processed in order, one message at a time, with the stream paused meanwhile, so a burst of log traffic
// waits in gRPC flow control instead of piling up in memory. Settlement is idempotent per entry (the store
// refunds a reservation at most once), so Envoy re-sending entries, or two replicas receiving copies of
// them, refunds nothing twice. When Redis cannot be reached (three tries) the batch is dropped and logged:
// its reservations then stand, which is what happens without the stream at all.
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../logger.js';
import { accessLogService } from '../grpc/protos.js';
import type { CounterStore, SettleOutcome, SettleRequest } from '../store/types.js';
import { entriesOf, fromAccessLogEntry, type StreamAccessLogsMessage } from './access-log-mapping.js';

export const ACCESS_LOG_SERVICE_NAME = 'envoy.service.accesslog.v3.AccessLogService';

export interface SettlementStats {
  /** HTTP entries received. */
  entries: number;
  /** By outcome of the store; `skipped` entries had nothing to settle, `dropped` ones met a store failure. */
  settled: number;
  refunded: number;
  expired: number;
  unknown: number;
  skipped: number;
  dropped: number;
  streams: number;
}

export interface SettlementDeps {
  readonly store: CounterStore;
  readonly now: () => number;
  readonly logger: Logger;
  /** Told of each tenant given a unit back, so remembered 429s of that tenant are dropped at once. */
  readonly onRefund?: (tenantId: string) => void;
}

/** Entries settled per store call: one pipelined round trip each. */
const BATCH = 200;
const SETTLE_ATTEMPTS = 3;

export class SettlementService {
  readonly stats: SettlementStats = {
    entries: 0,
    settled: 0,
    refunded: 0,
    expired: 0,
    unknown: 0,
    skipped: 0,
    dropped: 0,
    streams: 0,
  };
  private lastFailureLogMs = 0;

  constructor(private readonly deps: SettlementDeps) {}

  /** Settles the entries of one stream message. Never rejects. */
  async settleMessage(message: StreamAccessLogsMessage): Promise<void> {
    const requests: SettleRequest[] = [];
    for (const entry of entriesOf(message)) {
      this.stats.entries++;
      const mapped = fromAccessLogEntry(entry);
      if (mapped.kind === 'settle') requests.push(mapped.request);
      else this.stats.skipped++;
    }
    for (let i = 0; i < requests.length; i += BATCH) {
      const batch = requests.slice(i, i + BATCH);
      let outcomes: SettleOutcome[];
      try {
        outcomes = await this.settleWithRetry(batch);
      } catch (err) {
        this.stats.dropped += batch.length;
        this.logFailure(batch.length, err);
        continue;
      }
      for (const o of outcomes) this.stats[o]++;
      outcomes.forEach((o, i) => {
        const entry = batch[i];
        if (o === 'refunded' && entry !== undefined) this.deps.onRefund?.(entry.tenantId);
      });
      const refunds = outcomes.filter((o) => o === 'refunded').length;
      this.deps.logger.debug(
        { event: 'settlement.batch', entries: batch.length, refunded: refunds },
        'access-log entries settled',
      );
    }
  }

  /**
   * The store bounds each call by the Check's short timeout; a blip should not cost refunds, so a batch is
   * tried again twice. Safe: an attempt that did land before its answer was lost has removed the pending
   * entries, so the retry finds them `unknown` and gives nothing back twice.
   */
  private async settleWithRetry(batch: SettleRequest[]): Promise<SettleOutcome[]> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.deps.store.settle(batch, this.deps.now());
      } catch (err) {
        if (attempt >= SETTLE_ATTEMPTS) throw err;
        await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
      }
    }
  }

  /** The StreamAccessLogs handler: a client stream answered (empty) when Envoy closes it. */
  handler(): grpc.handleClientStreamingCall<StreamAccessLogsMessage, Record<string, never>> {
    return (call, callback) => {
      this.stats.streams++;
      let chain = Promise.resolve();
      call.on('data', (message: StreamAccessLogsMessage) => {
        call.pause();
        chain = chain.then(() => this.settleMessage(message)).finally(() => call.resume());
      });
      call.on('end', () => {
        void chain.then(() => callback(null, {}));
      });
      call.on('error', (err) => {
        // Envoy went away (restart, network); what it sent so far is settled, the rest it never sent.
        this.deps.logger.debug({ event: 'settlement.stream_error', err: err.message }, 'access-log stream ended with an error');
      });
    };
  }

  /** Adds the service to a gRPC server (the `register` hook of startGrpcServer). */
  register(server: grpc.Server): void {
    server.addService(accessLogService().service, { StreamAccessLogs: this.handler() });
  }

  // At most one line a second: a Redis outage must be visible, not flood the log at access-log rate.
  private logFailure(entries: number, err: unknown): void {
    const t = this.deps.now();
    if (t - this.lastFailureLogMs < 1000) return;
    this.lastFailureLogMs = t;
    this.deps.logger.error(
      { event: 'settlement.failed', code: 'CacheError', entries, err: err instanceof Error ? err.message : String(err) },
      'settling access-log entries failed; their reservations stand',
    );
  }
}

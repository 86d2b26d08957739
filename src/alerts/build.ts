// Builds the AlertService from the configuration (called by app.ts, the one wiring place).
import { Redis } from 'ioredis';
import type { Config } from '../config/env.js';
import type { DatabaseHandle } from '../db/client.js';
import type { Logger } from '../logger.js';
import { AlertService, type AlertServiceOptions, type AlertTuning } from './alert-service.js';
import { createOutbox } from './outbox.js';
import { memoryWindowCounter, redisWindowCounter, type WindowCounter } from './violations.js';

export interface BuiltAlerts {
  readonly alerts: AlertService;
  /** Closes what the builder opened (the violation counters' Redis connection). */
  close(): Promise<void>;
}

export interface BuildAlertsOptions {
  readonly tuning?: Partial<AlertTuning>;
  readonly post?: AlertServiceOptions['post'];
}

export function buildAlerts(
  config: Config,
  database: DatabaseHandle,
  logger: Logger,
  now: () => number,
  opts: BuildAlertsOptions = {},
): BuiltAlerts {
  const secret = config.alertWebhookSecret;
  if (!secret) {
    logger.info(
      { event: 'alerts.webhooks_off' },
      'ALERT_WEBHOOK_SECRET not set: alerts are logged only, no webhooks are sent',
    );
  }
  let redis: Redis | null = null;
  let counter: WindowCounter;
  if (config.redisUrl) {
    // Its own connection: violation counting must never queue behind (or slow) the Checks' EVALSHAs.
    redis = new Redis(config.redisUrl, {
      commandTimeout: 1_000,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times, 5), 2_000),
    });
    redis.on('error', () => {
      // Failures surface as rejected flushes (logged once per outage by the tracker).
    });
    counter = redisWindowCounter(redis);
  } else {
    counter = memoryWindowCounter();
  }
  const alerts = new AlertService({
    logger,
    now,
    outbox: secret ? createOutbox(database, { globalUrl: config.alertWebhookUrl, tenantTargets: true }) : null,
    secret,
    violationCounter: counter,
    violationThreshold: config.violationAlertCount,
    violationWindowMs: config.violationAlertWindowMs,
    keyPrefix: config.redisKeyPrefix,
    tuning: opts.tuning,
    post: opts.post,
  });
  return {
    alerts,
    // No QUIT: its last flush has run (AlertService.stop), and a hung Redis must not hold up the exit.
    close: async () => redis?.disconnect(),
  };
}

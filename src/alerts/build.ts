// Builds the AlertService from the configuration (called by app.ts, the one wiring place).
import type { Config } from '../config/env.js';
import type { DatabaseHandle } from '../db/client.js';
import type { Logger } from '../logger.js';
import { createRedisClient, redisTarget, type RedisClient } from '../store/redis-client.js';
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
  let redis: RedisClient | null = null;
  let counter: WindowCounter;
  const target = redisTarget(config);
  if (target) {
    // Its own connection (a cluster: its own pool): violation counting must never queue behind (or slow)
    // the Checks' EVALSHAs. Off the hot path, so a second is allowed.
    redis = createRedisClient(target, 1_000);
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
    clusterKeys: config.redisClusterNodes !== undefined,
    tuning: opts.tuning,
    post: opts.post,
  });
  return {
    alerts,
    // No QUIT: its last flush has run (AlertService.stop), and a hung Redis must not hold up the exit.
    close: async () => redis?.disconnect(),
  };
}

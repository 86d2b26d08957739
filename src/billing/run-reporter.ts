// `usage-limiter report [--once]`: the usage reporter alone, for a deployment that runs it apart from the
// servers (a Deployment of its own, or a CronJob with --once). `serve` runs the same reporter in-process;
// any number of reporters may run at once (see usage-reporter.ts).
import path from 'node:path';
import type { Config } from '../config/env.js';
import { openDatabase } from '../db/client.js';
import { runMigrations } from '../db/migrate.js';
import type { Logger } from '../logger.js';
import { redisTarget } from '../store/redis-client.js';
import { createRedisStore } from '../store/redis-store.js';
import { reporterFromConfig, stripeFromConfig } from './wiring.js';

/** Reads are off the hot path, so they may wait longer than a Check would. */
const REPORTER_REDIS_TIMEOUT_MS = 2_000;

export async function runReporter(config: Config, logger: Logger, opts: { once: boolean }): Promise<number> {
  const stripe = stripeFromConfig(config);
  if (stripe === null) {
    logger.error({ event: 'usage.reporting_disabled' }, 'report needs STRIPE_SECRET_KEY');
    return 78;
  }
  const target = redisTarget(config);
  if (target === null) {
    // Counters kept in another process's memory cannot be read from here.
    logger.error({ event: 'usage.reporting_disabled' }, 'report needs REDIS_URL or REDIS_CLUSTER_NODES (the counters of the servers)');
    return 78;
  }
  const database = await openDatabase(
    config.databaseUrl ? { url: config.databaseUrl, logger } : { dataDir: path.resolve(config.dataDir, 'pglite'), logger },
  );
  const store = createRedisStore({
    ...target,
    prefix: config.redisKeyPrefix,
    commandTimeoutMs: Math.max(config.checkTimeoutMs, REPORTER_REDIS_TIMEOUT_MS),
    settlementWindowMs: config.settlementWindowMs,
  });
  try {
    if (config.migrateOnStart) await runMigrations(database);
    const reporter = reporterFromConfig({ config, database, store, logger, now: Date.now }, stripe);
    if (opts.once) {
      const summary = await reporter.flush().finally(() => reporter.close());
      return summary.failures > 0 ? 1 : 0;
    }
    logger.info({ intervalMs: config.usageReportIntervalMs }, 'usage reporter running');
    reporter.start();
    await new Promise<void>((resolve) => {
      const onSignal = (signal: NodeJS.Signals) => {
        logger.info({ signal }, 'signal received: final usage report');
        resolve();
      };
      process.once('SIGTERM', onSignal);
      process.once('SIGINT', onSignal);
    });
    await reporter.stop();
    return 0;
  } finally {
    await store.close();
    await database.close();
  }
}

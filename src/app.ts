import path from 'node:path';
import type { Config } from './config/env.js';
import { describeConfig } from './config/env.js';
import { applyFile } from './admin/apply.js';
import { openDatabase, type DatabaseHandle } from './db/client.js';
import { runMigrations } from './db/migrate.js';
import { KeyCache } from './directory/key-cache.js';
import { listenForDirectoryChanges } from './directory/change-listener.js';
import { createPgDirectory, loadTenant } from './directory/pg-directory.js';
import { createUsageBilling, firstRoute, type UsageBilling } from './billing/wiring.js';
import { startGrpcServer, type RunningGrpcServer } from './grpc/server.js';
import { startHttpServer, type RunningHttpServer } from './http/server.js';
import { usageRoutes } from './http/usage-api.js';
import type { Logger } from './logger.js';
import { buildAlerts, type BuildAlertsOptions } from './alerts/build.js';
import type { AlertService } from './alerts/alert-service.js';
import { registerMetrics, type CheckMetrics } from './metrics.js';
import { registerRuntimeMetrics } from './telemetry/runtime-metrics.js';
import { billingBacklog } from './telemetry/backlogs.js';
import { checkSpans } from './telemetry/check-span.js';
import { createTelemetry, installedTelemetry, type Telemetry } from './telemetry/telemetry.js';
import { CheckService } from './service/check-service.js';
import { DenyMemory } from './service/deny-memory.js';
import { createMemoryStore } from './store/memory-store.js';
import { redisTarget } from './store/redis-client.js';
import { createRedisStore } from './store/redis-store.js';
import type { CounterStore } from './store/types.js';

// The one place that chooses implementations and wires them. Start order: database (migrate, apply),
// directory and key cache, counter store, gRPC, HTTP; shutdown runs in reverse.

export interface AppOptions {
  readonly logger: Logger;
  /** The clock for every decision; tests pin it. */
  readonly now?: () => number;
  /** Use this store instead of building one from the config (tests). */
  readonly store?: CounterStore;
  /** Metrics and tracing; default: the process-wide one (register.ts), else a private metrics-only one. */
  readonly telemetry?: Telemetry;
  /** Alert timings and the webhook POST, replaceable in tests. */
  readonly alerts?: BuildAlertsOptions;
}

export interface App {
  readonly grpcPort: number;
  readonly httpPort: number;
  readonly store: CounterStore;
  readonly database: DatabaseHandle;
  readonly keyCache: KeyCache;
  readonly checkService: CheckService;
  /** Settlement (access-log stream), usage reporting, counter recovery, Stripe webhooks. */
  readonly billing: UsageBilling;
  readonly alerts: AlertService;
  readonly telemetry: Telemetry;
  /** Not serving, drain in-flight Checks (up to `graceMs`), then close in reverse order. */
  stop(graceMs?: number): Promise<void>;
}

function buildStore(config: Config, logger: Logger): CounterStore {
  const target = redisTarget(config);
  if (target) {
    // A Redis Cluster (REDIS_CLUSTER_NODES) gets an ioredis Cluster client and `{tenant}` key names.
    return createRedisStore({
      ...target,
      prefix: config.redisKeyPrefix,
      commandTimeoutMs: config.checkTimeoutMs,
      settlementWindowMs: config.settlementWindowMs,
    });
  }
  logger.warn(
    { event: 'store.memory' },
    'REDIS_URL not set: counters are kept in process memory and are NOT shared between replicas',
  );
  return createMemoryStore({ settlementWindowMs: config.settlementWindowMs });
}

export async function startApp(config: Config, opts: AppOptions): Promise<App> {
  const { logger } = opts;
  const now = opts.now ?? Date.now;
  logger.info({ config: describeConfig(config) }, 'starting usage-limiter');

  const cleanups: Array<() => Promise<void>> = [];
  const closeAll = async () => {
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch (err) {
        logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'error while closing');
      }
    }
  };

  try {
    const dataDir = path.resolve(config.dataDir, 'pglite');
    const database = await openDatabase(
      config.databaseUrl ? { url: config.databaseUrl, logger } : { dataDir, logger },
    );
    cleanups.push(() => database.close());
    if (!config.databaseUrl) logger.info({ dataDir }, 'DATABASE_URL not set: using embedded PGlite');
    if (config.migrateOnStart) await runMigrations(database);
    if (config.applyOnStart) {
      const summary = await applyFile(database, config.applyOnStart);
      logger.info({ file: config.applyOnStart, summary }, 'applied tenants file');
    }

    const directory = createPgDirectory(database);
    const keyCache = new KeyCache(directory, {
      ttlMs: config.keyCacheTtlMs,
      negativeTtlMs: config.keyCacheNegativeTtlMs,
      maxEntries: config.keyCacheMaxEntries,
      pollMs: config.directoryPollMs,
      now,
      logger,
    });
    const preloaded = await keyCache.warm();
    logger.info({ keys: preloaded }, 'key cache preloaded');
    keyCache.start();
    cleanups.push(async () => keyCache.stop());
    if (config.databaseUrl) {
      // Key and tier changes reach this replica on commit (NOTIFY), not only at the next version poll.
      const listener = listenForDirectoryChanges(config.databaseUrl, () => void keyCache.poll(), logger);
      cleanups.push(() => listener.close());
    }

    const store: CounterStore = opts.store ?? buildStore(config, logger);
    if (opts.store === undefined) cleanups.push(() => store.close());
    // Closed after the gRPC drain (its final usage report counts the drained Checks) and before the store.
    const denyMemory = config.denyMemoryMs > 0 ? new DenyMemory(config.denyMemoryMs) : undefined;
    const billing = createUsageBilling({ config, database, store, logger, now, onRefund: (t) => denyMemory?.forget(t) });
    cleanups.push(() => billing.stop());

    const telemetry = opts.telemetry ?? installedTelemetry() ?? createTelemetry();
    if (opts.telemetry === undefined && telemetry !== installedTelemetry()) cleanups.push(() => telemetry.shutdown());

    // Alerts flush to the outbox after the gRPC drain (drained Checks may raise some) and before the store
    // and the database close: registered here, they close right after gRPC in the reverse order below.
    const built = buildAlerts(config, database, logger, now, opts.alerts);
    const alerts = built.alerts;
    cleanups.push(() => built.close());
    cleanups.push(() => alerts.stop());

    let checkMetrics: CheckMetrics | null = null;
    const checkService = new CheckService({
      cache: keyCache,
      store,
      now,
      logger,
      timeoutMs: config.checkTimeoutMs,
      denyMemory,
      recoverUsage: billing.recoverUsage,
      onDecision: (decision, elapsedMs) => {
        checkMetrics?.record(decision, elapsedMs);
        alerts.observe(decision);
      },
      around: telemetry.tracer ? checkSpans(telemetry.tracer) : undefined,
    });
    checkMetrics = registerMetrics(telemetry.meter, {
      checkService,
      keyCache,
      alerts,
      billingBacklog: billingBacklog(database),
    });
    const runtime = registerRuntimeMetrics(telemetry.meter);
    cleanups.push(async () => runtime.stop());
    alerts.start();
    let serving = false;

    const grpc: RunningGrpcServer = await startGrpcServer(
      { checkService, logger, register: (server) => billing.registerGrpc(server) },
      config.grpcHost,
      config.grpcPort,
    );
    cleanups.push(() => grpc.shutdown(0));
    const http: RunningHttpServer = await startHttpServer(
      {
        logger,
        isServing: () => serving,
        readiness: [
          { name: 'redis', check: () => store.ping() },
          { name: 'postgres', check: () => database.ping() },
        ],
        metrics: () => telemetry.renderPrometheus(),
        routes: firstRoute(billing.routes, usageRoutes({
          cache: keyCache,
          store,
          now,
          // Not Envoy's 100 ms budget: a person or a dashboard is waiting, not a request in flight.
          timeoutMs: Math.max(1_000, config.checkTimeoutMs),
          trustTenantHeader: config.usageApiTrustTenantHeader,
          loadTenant: (id) => loadTenant(database, id),
          logger,
        })),
      },
      config.httpHost,
      config.httpPort,
    );
    cleanups.push(() => http.close());

    serving = true;
    grpc.setServing('SERVING');
    billing.start();
    logger.info({ grpcPort: grpc.port, httpPort: http.port }, 'usage-limiter serving');

    let stopping: Promise<void> | null = null;
    return {
      grpcPort: grpc.port,
      httpPort: http.port,
      store,
      database,
      keyCache,
      checkService,
      billing,
      alerts,
      telemetry,
      stop: (graceMs = config.shutdownGraceMs) => {
        stopping ??= (async () => {
          serving = false;
          logger.info({ graceMs }, 'shutting down: not serving, draining in-flight Checks');
          await grpc.shutdown(graceMs);
          await closeAll();
          logger.info('shutdown complete');
        })();
        return stopping;
      },
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

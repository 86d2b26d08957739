// Settlement, usage reporting, counter recovery and Stripe webhooks, built from the configuration in one
// place so that app.ts (serve) and `usage-limiter report` wire them the same way.
//   - settlement (the access-log stream) always runs: it only needs the counter store;
//   - recovery always runs: from Postgres alone without Stripe, plus meter summaries with it;
//   - the reporter runs when STRIPE_SECRET_KEY is set;
//   - the webhook route is always mounted and answers 503 until STRIPE_WEBHOOK_SECRET is set.
import type http from 'node:http';
import type * as grpc from '@grpc/grpc-js';
import type Stripe from 'stripe';
import type { Config } from '../config/env.js';
import type { DatabaseHandle } from '../db/client.js';
import type { Logger } from '../logger.js';
import { SettlementService } from '../settlement/access-log-service.js';
import type { CounterStore } from '../store/types.js';
import { stripeWebhookRoute } from '../webhooks/stripe-webhook.js';
import { eventNameFor } from './report-identity.js';
import { createStripeClient, stripeMeterEvents, stripeMeterSummaries } from './stripe-client.js';
import { createTenantLocks } from './tenant-locks.js';
import { createUsageRecovery, type RecoverUsage } from './usage-recovery.js';
import { UsageReporter, type RetryPolicy } from './usage-reporter.js';

export interface UsageBillingDeps {
  readonly config: Config;
  readonly database: DatabaseHandle;
  readonly store: CounterStore;
  readonly logger: Logger;
  readonly now: () => number;
  /** Tests: a faster retry schedule. */
  readonly retry?: RetryPolicy;
  /** Passed to the settlement service: a tenant was given a unit back. */
  readonly onRefund?: (tenantId: string) => void;
}

export interface UsageBilling {
  readonly settlement: SettlementService;
  /** Null without STRIPE_SECRET_KEY. */
  readonly reporter: UsageReporter | null;
  readonly recoverUsage: RecoverUsage;
  /** The `register` hook of startGrpcServer: adds the access-log service. */
  registerGrpc(server: grpc.Server): void;
  /** The `routes` hook of startHttpServer: POST /webhooks/stripe. */
  routes(req: http.IncomingMessage, res: http.ServerResponse): Promise<boolean>;
  start(): void;
  /** Final usage report (bounded), then releases what the reporter holds. */
  stop(): Promise<void>;
}

export function stripeFromConfig(config: Config): Stripe | null {
  if (config.stripeSecretKey === undefined) return null;
  return createStripeClient({
    secretKey: config.stripeSecretKey,
    apiBase: config.stripeApiBase,
    timeoutMs: config.stripeTimeoutMs,
  });
}

export function reporterFromConfig(deps: UsageBillingDeps, stripe: Stripe): UsageReporter {
  const { config } = deps;
  return new UsageReporter({
    db: deps.database.db,
    store: deps.store,
    sink: stripeMeterEvents(stripe),
    locks: createTenantLocks(deps.database),
    now: deps.now,
    logger: deps.logger,
    eventName: (endpoint) => eventNameFor(endpoint, config.stripeMeters, config.stripeMeterEvent),
    intervalMs: config.usageReportIntervalMs,
    finalFlushMs: config.shutdownGraceMs,
    deadlineMs: deps.database.deadlineMs,
    ...(deps.retry ? { retry: deps.retry } : {}),
  });
}

export function createUsageBilling(deps: UsageBillingDeps): UsageBilling {
  const { config, database, store, logger, now } = deps;
  const stripe = stripeFromConfig(config);
  const eventName = (endpoint: string) => eventNameFor(endpoint, config.stripeMeters, config.stripeMeterEvent);
  const settlement = new SettlementService({ store, now, logger, ...(deps.onRefund ? { onRefund: deps.onRefund } : {}) });
  const reporter = stripe === null ? null : reporterFromConfig(deps, stripe);
  const recoverUsage = createUsageRecovery({
    db: database.db,
    store,
    summaries: stripe === null ? null : stripeMeterSummaries(stripe, now),
    eventName,
    now,
    logger,
    deadlineMs: database.deadlineMs,
  });
  const routes = stripeWebhookRoute({
    db: database.db,
    logger,
    secret: config.stripeWebhookSecret,
    sync: { canceledTier: config.stripeCanceledTier },
  });
  if (reporter === null) {
    logger.info({ event: 'usage.reporting_disabled' }, 'STRIPE_SECRET_KEY not set: usage is not reported to Stripe');
  }
  return {
    settlement,
    reporter,
    recoverUsage,
    registerGrpc: (server) => settlement.register(server),
    routes,
    start: () => reporter?.start(),
    stop: async () => {
      await reporter?.stop();
    },
  };
}

type Route = (req: http.IncomingMessage, res: http.ServerResponse) => boolean | Promise<boolean>;

/** Several `routes` hooks as one: each is asked in turn until one takes the request. */
export function firstRoute(...routes: readonly Route[]): Route {
  return async (req, res) => {
    for (const route of routes) if (await route(req, res)) return true;
    return false;
  };
}

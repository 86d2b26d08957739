// The CPU cost telemetry adds to one Check, in-process and without I/O noise: CheckService over the memory
// store and a warm key cache, 200 Checks in flight at a time, variants interleaved over several rounds.
//
//   npx tsx bench/check-overhead.ts        (CHECKS per variant and round, default 200000; ROUNDS, default 5)
import { context, trace, TraceFlags } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { BasicTracerProvider, BatchSpanProcessor, TraceIdRatioBasedSampler, type SpanExporter } from '@opentelemetry/sdk-trace-base';
import pino from 'pino';
import { AlertService } from '../src/alerts/alert-service.js';
import { memoryWindowCounter } from '../src/alerts/violations.js';
import { hashApiKey } from '../src/core/api-key.js';
import type { CheckInput } from '../src/core/request.js';
import type { ResolvedKey, Tier } from '../src/core/types.js';
import { KeyCache } from '../src/directory/key-cache.js';
import type { TenantDirectory } from '../src/directory/types.js';
import { registerMetrics } from '../src/metrics.js';
import { CheckService } from '../src/service/check-service.js';
import { createMemoryStore } from '../src/store/memory-store.js';
import { checkSpans } from '../src/telemetry/check-span.js';
import { createTelemetry } from '../src/telemetry/telemetry.js';

const CHECKS = Number(process.env.CHECKS ?? 200_000);
const ROUNDS = Number(process.env.ROUNDS ?? 5);
const logger = pino({ level: 'silent' });
const NOW = Date.UTC(2025, 8, 18, 12);

const tier: Tier = {
  id: 'bench',
  readRateLimit: { requests: 1_000_000_000, perSeconds: 60 },
  monthlyQuota: { total: null, endpoints: { '/verify': 1_000_000_000 } },
  alertThresholds: [0.8, 0.9, 1],
  failurePolicy: 'allow',
};
const TENANTS = 1000;
const keys = Array.from({ length: TENANTS }, (_, i) => `bk_live_bench_tenant_${String(i).padStart(4, '0')}`);
const resolved = new Map<string, ResolvedKey>(
  keys.map((k, i) => [
    hashApiKey(k),
    {
      keyId: `k${i}`,
      keyPrefix: k.slice(0, 8),
      expiresAtMs: null,
      revokedAtMs: null,
      tenant: { id: `t${i}`, tierId: 'bench', status: 'active', stripeCustomerId: null, billingAnchorMs: null },
      tier,
    },
  ]),
);
const directory: TenantDirectory = {
  resolveMany: async (hashes) => new Map(hashes.flatMap((h) => (resolved.has(h) ? [[h, resolved.get(h)!] as const] : []))),
  version: async () => 1n,
  ping: async () => {},
  close: async () => {},
};
const inputs: CheckInput[] = Array.from({ length: 4096 }, (_, i) => ({
  method: i % 3 === 0 ? 'POST' : 'GET',
  path: i % 3 === 0 ? '/verify' : '/items',
  key: { kind: 'present', key: keys[i % TENANTS]!, header: 'x-api-key' },
  requestId: `req-${i}`,
}));

const noopExporter: SpanExporter = { export: (_spans, done) => done({ code: 0 }), shutdown: async () => {} };

type Variant = { name: string; make: () => Promise<CheckService>; unsampledParent?: boolean };

async function base(extra: (svc: () => CheckService) => Partial<ConstructorParameters<typeof CheckService>[0]>): Promise<CheckService> {
  const cache = new KeyCache(directory, { ttlMs: 3_600_000, negativeTtlMs: 5000, maxEntries: 100_000, pollMs: 60_000, now: () => NOW, logger });
  for (const k of keys) await cache.load(hashApiKey(k));
  let svc: CheckService | null = null;
  svc = new CheckService({ cache, store: createMemoryStore(), now: () => NOW, logger, timeoutMs: 100, ...extra(() => svc!) });
  return svc;
}

function withMetricsAndAlerts(cache: () => CheckService) {
  const telemetry = createTelemetry();
  const alerts = new AlertService({
    logger,
    now: () => NOW,
    outbox: null,
    secret: undefined,
    violationCounter: memoryWindowCounter(),
    violationThreshold: 100,
    violationWindowMs: 300_000,
    keyPrefix: '',
  });
  let m: ReturnType<typeof registerMetrics> | null = null;
  queueMicrotask(() => {
    m = registerMetrics(telemetry.meter, { checkService: cache(), keyCache: { stats: { hits: 0, misses: 0 }, size: 0 } as unknown as KeyCache });
  });
  return {
    onDecision: (d: Parameters<NonNullable<ConstructorParameters<typeof CheckService>[0]['onDecision']>>[0], ms: number) => {
      m?.record(d, ms);
      alerts.observe(d);
    },
  };
}

function tracer(ratio: number | null) {
  const provider = new BasicTracerProvider({
    sampler: ratio === null ? undefined : new TraceIdRatioBasedSampler(ratio),
    spanProcessors: [new BatchSpanProcessor(noopExporter, { maxQueueSize: 100_000, maxExportBatchSize: 5000, scheduledDelayMillis: 200 })],
  });
  return checkSpans(provider.getTracer('bench'));
}

const variants: Variant[] = [
  { name: 'no hooks (the Check alone)', make: () => base(() => ({})) },
  { name: 'metrics + alerts (default)', make: () => base((s) => withMetricsAndAlerts(s)) },
  {
    name: '+ span, parent not sampled',
    make: () => base((s) => ({ ...withMetricsAndAlerts(s), around: tracer(null) })),
    unsampledParent: true,
  },
  { name: '+ span, 1% sampled (root)', make: () => base((s) => ({ ...withMetricsAndAlerts(s), around: tracer(0.01) })) },
  { name: '+ span, every Check', make: () => base((s) => ({ ...withMetricsAndAlerts(s), around: tracer(null) })) },
];

// What the gRPC instrumentation leaves active around a Check whose trace was not sampled.
const unsampled = trace.setSpan(
  context.active(),
  trace.wrapSpanContext({ traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', traceFlags: TraceFlags.NONE }),
);

async function run(svc: CheckService, unsampledParent = false): Promise<number> {
  const started = performance.now();
  const inflight = 200;
  let next = 0;
  async function worker() {
    while (next < CHECKS) {
      const i = next++;
      if (unsampledParent) await context.with(unsampled, () => svc.check(inputs[i & 4095]!));
      else await svc.check(inputs[i & 4095]!);
    }
  }
  await Promise.all(Array.from({ length: inflight }, worker));
  return CHECKS / ((performance.now() - started) / 1000);
}

async function main() {
  // As the NodeSDK does: context propagates through async calls (costs every variant the same).
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  const services = await Promise.all(variants.map((v) => v.make()));
  await new Promise((r) => setTimeout(r, 10));
  for (let i = 0; i < variants.length; i++) await run(services[i]!, variants[i]!.unsampledParent); // warm-up (JIT)
  const rates: number[][] = variants.map(() => []);
  for (let r = 0; r < ROUNDS; r++) {
    for (let i = 0; i < variants.length; i++) rates[i]!.push(await run(services[i]!, variants[i]!.unsampledParent));
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const baseRate = med(rates[0]!);
  for (let i = 0; i < variants.length; i++) {
    const m = med(rates[i]!);
    const usPerCheck = 1e6 / m - 1e6 / baseRate;
    process.stdout.write(
      `${variants[i]!.name.padEnd(30)} ${Math.round(m).toString().padStart(7)} Checks/s  ${((m / baseRate) * 100).toFixed(1).padStart(5)}%  +${usPerCheck.toFixed(2)} µs/Check\n`,
    );
  }
}

void main();

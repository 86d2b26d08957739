// Telemetry in-process: a span per Check (asserted with an in-memory exporter) and /metrics scraped and
// parsed, including what a Redis failure looks like in both.
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { context, SpanStatusCode, trace, TraceFlags } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import { createMemoryStore } from '../../src/store/memory-store.js';
import type { CounterStore } from '../../src/store/types.js';
import { CHECK_SPAN_NAME, CheckSpanAttributes as A } from '../../src/telemetry/check-span.js';
import { gcKind } from '../../src/telemetry/runtime-metrics.js';
import { createTelemetry } from '../../src/telemetry/telemetry.js';
import { httpStatus, startHarness, type Harness } from '../helpers/harness.js';
import { parsePrometheus } from '../helpers/prometheus.js';
import { createTestDatabase, hasPostgres } from '../helpers/services.js';

const services = await hasPostgres();
const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
const TENANTS = path.resolve('test/fixtures/tenants/policies.yaml');
const LENIENT_KEY = 'ul_test_LENIENT_KEY_0001'; // tier lenient: failurePolicy allow
const STRICT_KEY = 'ul_test_STRICT_KEY_00001'; // tier strict: failurePolicy deny

/** The memory store, with a switch that makes every call fail like an unreachable Redis. */
function switchableStore(): CounterStore & { failing: boolean } {
  const inner = createMemoryStore();
  // Counters that exist, as after the period's first request.
  for (const t of ['tenant_lenient', 'tenant_strict']) inner.setUsage(t, '2025-09', { total: 0, endpoints: { '/verify': 0 } });
  const s = {
    failing: false,
    checkAndReserve: (req: Parameters<CounterStore['checkAndReserve']>[0]) =>
      s.failing ? Promise.reject(new Error('Redis checkAndReserve failed: not connected (reconnecting)')) : inner.checkAndReserve(req),
  };
  return new Proxy(inner, {
    get: (target, prop, recv) => (prop in s ? (s as Record<string | symbol, unknown>)[prop] : Reflect.get(target, prop, recv)),
    set: (_t, prop, value) => {
      (s as Record<string | symbol, unknown>)[prop] = value;
      return true;
    },
  }) as unknown as CounterStore & { failing: boolean };
}

describe.skipIf(!services)('telemetry', () => {
  const spans = new InMemorySpanExporter();
  const telemetry = createTelemetry({ spanExporter: spans });
  const store = switchableStore();
  let h: Harness;
  let dropDb: () => Promise<void>;
  let checks = 0;

  const check = async (r: Parameters<Harness['checkHttp']>[0]) => {
    checks++;
    return h.checkHttp(r);
  };
  const scrape = async () => {
    const res = await fetch(`http://127.0.0.1:${h.app.httpPort}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    return res.text();
  };

  beforeAll(async () => {
    const db = await createTestDatabase('telemetry');
    dropDb = db.drop;
    // A secret but no global URL: the outbox exists (for the backlog gauge) and nothing is ever sent.
    h = await startHarness({
      env: { DATABASE_URL: db.url, APPLY_ON_START: TENANTS, ALERT_WEBHOOK_SECRET: 'whsec_test' },
      nowMs: T0,
      store,
      app: { telemetry },
    });
  });

  afterAll(async () => {
    await h?.stop();
    await telemetry.shutdown();
    await dropDb?.();
  });

  it('makes one span per Check carrying tenant, tier, decision and reason, never the key', async () => {
    spans.reset();
    await check({ key: LENIENT_KEY, path: '/usage', requestId: 'rid-span-1' });
    const finished = spans.getFinishedSpans();
    expect(finished).toHaveLength(1);
    const s = finished[0]!;
    expect(s.name).toBe(CHECK_SPAN_NAME);
    expect(s.attributes).toMatchObject({
      [A.tenantId]: 'tenant_lenient',
      [A.tier]: 'lenient',
      [A.decision]: 'allow',
      [A.reason]: 'OK',
      [A.degraded]: false,
      [A.requestId]: 'rid-span-1',
      'http.request.method': 'GET',
      'url.path': '/usage',
    });
    expect(JSON.stringify(s.attributes)).not.toContain(LENIENT_KEY);
    expect(s.status.code).toBe(SpanStatusCode.UNSET);
  });

  it('records the metered endpoint and period on quota Checks, and the reason on denials', async () => {
    spans.reset();
    await check({ key: STRICT_KEY, method: 'POST', path: '/verify' });
    await check({ key: 'vk_live_NOT_A_REAL_KEY_1', path: '/usage' });
    const [metered, unknown] = spans.getFinishedSpans();
    expect(metered!.attributes).toMatchObject({ [A.tenantId]: 'tenant_strict', [A.endpoint]: '/verify', [A.period]: '2025-09' });
    expect(unknown!.attributes).toMatchObject({ [A.decision]: 'deny', [A.reason]: 'INVALID_API_KEY', 'http.response.status_code': 401 });
    expect(unknown!.attributes[A.tenantId]).toBeUndefined();
  });

  it('marks a Check the tier policy let through during a store failure as degraded, with an error status', async () => {
    spans.reset();
    store.failing = true;
    try {
      const allowed = await check({ key: LENIENT_KEY, path: '/usage' }); // lenient: failurePolicy allow
      const denied = await check({ key: STRICT_KEY, method: 'POST', path: '/verify' }); // strict: deny
      expect(httpStatus(allowed)).toBe(200);
      expect(httpStatus(denied)).toBe(503);
    } finally {
      store.failing = false;
    }
    const [a, d] = spans.getFinishedSpans();
    expect(a!.attributes).toMatchObject({ [A.degraded]: true, [A.error]: 'CacheError' });
    expect(a!.status).toMatchObject({ code: SpanStatusCode.ERROR, message: 'CacheError' });
    expect(d!.attributes).toMatchObject({ [A.reason]: 'USAGE_CHECK_UNAVAILABLE', [A.error]: 'CacheError' });
  });

  it('serves Prometheus text on /metrics: decisions, latency, errors, key cache, backlogs', async () => {
    const text = await scrape();
    const m = parsePrometheus(text);
    expect(m.types.get('usage_limiter_check_decisions_total')).toBe('counter');
    const decisions = (labels: Record<string, string>) => m.value('usage_limiter_check_decisions_total', labels);
    expect(decisions({ outcome: 'allow', code: 'OK', tier: 'lenient' })).toBe(1);
    expect(decisions({ outcome: 'allow', code: 'OK', tier: 'strict' })).toBe(1);
    expect(decisions({ outcome: 'deny', code: 'INVALID_API_KEY', tier: 'none' })).toBe(1);
    expect(decisions({ outcome: 'allow', code: 'OK', tier: 'lenient', degraded: 'true' })).toBe(1);
    expect(decisions({ outcome: 'deny', code: 'USAGE_CHECK_UNAVAILABLE', tier: 'strict' })).toBe(1);
    expect(m.value('usage_limiter_store_errors_total')).toBe(2);
    expect(m.value('usage_limiter_directory_errors_total')).toBe(0);

    expect(m.types.get('usage_limiter_check_duration_seconds')).toBe('histogram');
    expect(m.value('usage_limiter_check_duration_seconds_count')).toBe(checks);
    const buckets = m.find('usage_limiter_check_duration_seconds_bucket');
    expect(buckets.at(-1)).toMatchObject({ labels: { le: '+Inf' }, value: checks });
    const counts = buckets.map((b) => b.value);
    expect(counts).toEqual([...counts].sort((x, y) => x - y)); // cumulative

    expect(m.value('usage_limiter_key_cache_lookups_total', { result: 'hit' })).toBeGreaterThan(0);
    expect(m.value('usage_limiter_key_cache_lookups_total', { result: 'miss' })).toBeGreaterThan(0);
    // The keys of the file were preloaded at start; the one unknown key was asked of Postgres once.
    expect(m.value('usage_limiter_key_cache_loads_total', { key: 'known' })).toBe(0);
    expect(m.value('usage_limiter_key_cache_loads_total', { key: 'unknown' })).toBe(1);
    expect(m.value('usage_limiter_usage_rebuilds_total')).toBe(0); // the store held both tenants' counters
    expect(m.types.get('usage_limiter_key_cache_entries')).toBe('gauge');
    expect(m.value('usage_limiter_key_cache_entries')).toBeGreaterThanOrEqual(2);
    expect(m.value('usage_limiter_alert_backlog')).toBe(0);
    expect(m.value('usage_limiter_billing_backlog')).toBe(0);
    expect(m.value('usage_limiter_alerts_raised_total', { kind: 'threshold' })).toBe(0);

    // Tenant ids are span attributes only: never a label, never anywhere in the exposition.
    expect(text).not.toContain('tenant_lenient');
    expect(text).not.toContain('tenant_strict');
    expect(m.samples.every((s) => !Object.keys(s.labels).some((l) => l.includes('tenant')))).toBe(true);
  });

  it("serves the process's own health: memory, event-loop delay and garbage-collection pauses", async () => {
    // A stall of the event loop, and garbage enough for a scavenge.
    const until = performance.now() + 80;
    while (performance.now() < until) {
      // busy: the loop cannot run
    }
    // Garbage until a scavenge has run, as an observer of the test's own sees it (the app's sees the same
    // entries). A fixed amount is not enough everywhere: Node 24's young generation held 32 MB of arrays
    // without one.
    let scavenged = false;
    const gcs = new PerformanceObserver((list) => {
      if (list.getEntries().some((e) => gcKind(e) === 'minor')) scavenged = true;
    });
    gcs.observe({ entryTypes: ['gc'] });
    try {
      for (let round = 0; round < 100 && !scavenged; round++) {
        const garbage: Array<{ i: number }> = [];
        for (let i = 0; i < 100_000; i++) garbage.push({ i });
        await new Promise((r) => setImmediate(r)); // GC entries reach observers asynchronously
      }
      expect(scavenged).toBe(true);
    } finally {
      gcs.disconnect();
    }
    await new Promise((r) => setTimeout(r, 100)); // and the app's observer too
    const m = parsePrometheus(await scrape());

    expect(m.types.get('process_resident_memory_bytes')).toBe('gauge');
    const rss = m.value('process_resident_memory_bytes');
    expect(rss).toBeGreaterThan(process.memoryUsage.rss() / 2);
    expect(rss).toBeLessThan(process.memoryUsage.rss() * 2);
    const used = m.value('nodejs_heap_size_used_bytes');
    expect(used).toBeGreaterThan(1_000_000);
    expect(used).toBeLessThanOrEqual(m.value('nodejs_heap_size_total_bytes'));
    expect(m.value('nodejs_external_memory_bytes')).toBeGreaterThan(0);

    expect(m.types.get('nodejs_gc_duration_seconds')).toBe('histogram');
    expect(m.value('nodejs_gc_duration_seconds_count', { kind: 'minor' })).toBeGreaterThanOrEqual(1);
    expect(m.value('nodejs_gc_duration_seconds_sum', { kind: 'minor' })).toBeGreaterThan(0);

    // The 80 ms stall is the longest delay the monitor saw; the median is a normal turn.
    expect(m.value('nodejs_eventloop_lag_max_seconds')).toBeGreaterThanOrEqual(0.06);
    expect(m.value('nodejs_eventloop_lag_p50_seconds')).toBeLessThan(0.06);
    expect(m.value('nodejs_eventloop_lag_p99_seconds')).toBeLessThanOrEqual(m.value('nodejs_eventloop_lag_max_seconds'));
    // Labels are the collector's kind only.
    expect(m.find('nodejs_gc_duration_seconds_count').every((s) => ['minor', 'major', 'incremental', 'weakcb', 'other'].includes(s.labels.kind ?? ''))).toBe(true);
  });

  it('counts backlogs from Postgres: undelivered alerts and billing batches in flight', async () => {
    const { alertOutbox, usageReports } = await import('../../src/db/schema.js');
    await h.app.database.db.insert(usageReports).values({ tenantId: 't', endpoint: '/verify', period: '2025-09', pendingIdentifier: 'x', pendingUnits: 3 });
    await h.app.database.db.insert(alertOutbox).values({ dedupeKey: 'k:global', tenantId: 't', kind: 'usage.threshold', target: 'global', payload: {}, nextAttemptAt: new Date(Date.now() + 3_600_000) });
    const m = parsePrometheus(await scrape());
    expect(m.value('usage_limiter_billing_backlog')).toBe(1);
    expect(m.value('usage_limiter_alert_backlog')).toBe(1);
  });

  it('makes no span under a gRPC span that was not sampled, and a child span under one that was', async () => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    try {
      const parent = (flags: TraceFlags) =>
        trace.setSpan(context.active(), trace.wrapSpanContext({ traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', traceFlags: flags }));
      const input = { method: 'POST', path: '/other', key: { kind: 'present', key: LENIENT_KEY, header: 'x-api-key' }, requestId: 'rid-parent' } as const;
      spans.reset();
      await context.with(parent(TraceFlags.NONE), () => h.app.checkService.check(input));
      expect(spans.getFinishedSpans()).toHaveLength(0);
      await context.with(parent(TraceFlags.SAMPLED), () => h.app.checkService.check(input));
      const [child] = spans.getFinishedSpans();
      expect(child?.spanContext().traceId).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
      expect(child?.parentSpanContext?.spanId).toBe('00f067aa0ba902b7');
    } finally {
      context.disable();
    }
  });
});

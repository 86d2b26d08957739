// The real binary with OTEL_EXPORTER_OTLP_ENDPOINT set: the SDK must be running before the server's modules
// load (bin/usage-limiter.js imports dist/telemetry/register.js first), or the gRPC and ioredis
// instrumentation would miss them. An OTLP/HTTP receiver in the test collects what is exported.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checker, startServerProcess, type ServerProcess } from '../helpers/server-process.js';
import { createTestDatabase, hasPostgres, hasRedis, testPrefix, TEST_REDIS_URL } from '../helpers/services.js';

const services = (await hasRedis()) && (await hasPostgres());
const TENANTS = path.resolve('test/fixtures/tenants/policies.yaml');

interface OtlpSpan {
  scope: string;
  name: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  attributes: Record<string, unknown>;
}

function collector() {
  const spans: OtlpSpan[] = [];
  const metricNames = new Set<string>();
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as Record<string, any>;
      for (const rs of body.resourceSpans ?? []) {
        for (const ss of rs.scopeSpans ?? []) {
          for (const s of ss.spans ?? []) {
            const attributes: Record<string, unknown> = {};
            for (const a of s.attributes ?? []) attributes[a.key] = Object.values(a.value ?? {})[0];
            spans.push({ scope: ss.scope?.name, name: s.name, traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId ?? '', attributes });
          }
        }
      }
      for (const rm of body.resourceMetrics ?? []) for (const sm of rm.scopeMetrics ?? []) for (const m of sm.metrics ?? []) metricNames.add(m.name);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  return { server, spans, metricNames };
}

describe.skipIf(!services)('telemetry in the real process (OTLP)', () => {
  const otlp = collector();
  const prefix = testPrefix('otel');
  let db: { url: string; drop: () => Promise<void> };
  let server: ServerProcess;

  beforeAll(async () => {
    await new Promise<void>((r) => otlp.server.listen(0, '127.0.0.1', r));
    db = await createTestDatabase('otel');
    server = await startServerProcess({
      DATABASE_URL: db.url,
      REDIS_URL: TEST_REDIS_URL,
      REDIS_KEY_PREFIX: prefix,
      APPLY_ON_START: TENANTS,
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(otlp.server.address() as AddressInfo).port}`,
      OTEL_BSP_SCHEDULE_DELAY: '100',
      OTEL_METRIC_EXPORT_INTERVAL: '500',
      OTEL_SERVICE_NAME: 'usage-limiter-test',
    });
  });

  afterAll(async () => {
    expect(await server?.terminate()).toBe(0);
    otlp.server.closeAllConnections();
    otlp.server.close();
    const r = new Redis(TEST_REDIS_URL);
    const keys = await r.keys(`${prefix}*`);
    if (keys.length) await r.del(...keys);
    r.disconnect();
    await db?.drop();
  });

  it('exports the gRPC span, the Check span under it and the Redis round trip under that', async () => {
    const c = checker(server.grpcPort);
    expect(await c.status({ key: 'ul_test_LENIENT_KEY_0001', method: 'GET', path: '/usage' })).toBe(200);
    c.close();
    const deadline = Date.now() + 10_000;
    const find = () => otlp.spans.find((s) => s.name === 'usage_limiter.check' && s.attributes['usage_limiter.reason'] === 'OK');
    while (!find() || !otlp.spans.some((s) => s.name === 'evalsha')) {
      if (Date.now() > deadline) throw new Error(`spans not exported: ${JSON.stringify(otlp.spans.map((s) => s.name))}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const check = find()!;
    const grpcSpan = otlp.spans.find((s) => s.spanId === check.parentSpanId);
    expect(grpcSpan).toMatchObject({ scope: '@opentelemetry/instrumentation-grpc', name: 'grpc.envoy.service.auth.v3.Authorization/Check' });
    expect(check.attributes).toMatchObject({ 'usage_limiter.tenant_id': 'tenant_lenient', 'usage_limiter.tier': 'lenient', 'usage_limiter.decision': 'allow' });
    const redisSpan = otlp.spans.find((s) => s.name === 'evalsha' && s.parentSpanId === check.spanId);
    expect(redisSpan?.scope).toBe('@opentelemetry/instrumentation-ioredis');
    expect(redisSpan?.traceId).toBe(check.traceId);
    // The key never leaves the process.
    expect(JSON.stringify(otlp.spans)).not.toContain('ul_test_LENIENT_KEY_0001');
  });

  it('exports the metrics over OTLP too, and still serves them on /metrics', async () => {
    const deadline = Date.now() + 10_000;
    while (!otlp.metricNames.has('usage_limiter_check_decisions')) {
      if (Date.now() > deadline) throw new Error(`metrics not exported: ${[...otlp.metricNames].join(', ')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(otlp.metricNames).toContain('usage_limiter_check_duration_seconds');
    const text = await (await fetch(`http://127.0.0.1:${server.httpPort}/metrics`)).text();
    expect(text).toMatch(/^usage_limiter_check_decisions_total\{outcome="allow",code="OK",tier="lenient"\} 1$/m);
    expect(text).toContain('service_name="usage-limiter-test"');
  });
});

describe.skipIf(!services)('telemetry in the real process without OTLP', () => {
  let db: { url: string; drop: () => Promise<void> };
  let server: ServerProcess;

  beforeAll(async () => {
    db = await createTestDatabase('otel_off');
    server = await startServerProcess({
      DATABASE_URL: db.url,
      APPLY_ON_START: TENANTS,
      OTEL_SERVICE_NAME: 'usage-limiter-plain',
      OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=staging,team=billing',
    });
  });

  afterAll(async () => {
    expect(await server?.terminate()).toBe(0);
    await db?.drop();
  });

  it('describes the process in target_info as the SDK would (service, OTEL_RESOURCE_ATTRIBUTES, host, process)', async () => {
    const text = await (await fetch(`http://127.0.0.1:${server.httpPort}/metrics`)).text();
    const info = text.split('\n').find((l) => l.startsWith('target_info{')) ?? '';
    expect(info).toContain('service_name="usage-limiter-plain"');
    expect(info).toContain('deployment_environment="staging"');
    expect(info).toContain('team="billing"');
    expect(info).toMatch(/host_name="[^"]+"/);
    expect(info).toMatch(/process_pid="\d+"/);
  });
});

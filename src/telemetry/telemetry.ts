// OpenTelemetry for the server: one MeterProvider whose Prometheus reader backs GET /metrics on the HTTP
// port, OTLP metrics and traces only when the standard OTEL_EXPORTER_OTLP_* variables ask for them, and a
// tracer only when something will receive spans. Without a span exporter the Check carries no span at all
// (not even a no-op one), so telemetry costs the hot path two in-process counter updates and nothing else.
//
// Two ways in:
// - `startGlobalTelemetry()` (from register.ts, before the server's modules are imported): the NodeSDK with
//   grpc, ioredis, pg and http instrumentation when traces are exported; registered globally.
// - `createTelemetry()`: a private MeterProvider (and optionally a tracer over a given span exporter), not
//   registered globally, so several apps in one process (tests) each get their own /metrics.
import { metrics as metricsApi, trace, type Meter, type Tracer } from '@opentelemetry/api';
import { PrometheusExporter, PrometheusSerializer } from '@opentelemetry/exporter-prometheus';
import { detectResources, envDetector, hostDetector, processDetector, resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import { MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import type { NodeSDKConfiguration } from '@opentelemetry/sdk-node';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  SimpleSpanProcessor,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';
import type { TelemetrySettings } from '../config/telemetry-env.js';
import { within } from '../timers.js';

export const INSTRUMENTATION_SCOPE = 'usage-limiter';

export interface Telemetry {
  readonly meter: Meter;
  /** Null when no span exporter is configured: Checks then create no span. */
  readonly tracer: Tracer | null;
  /** The Prometheus text exposition of every metric of this provider. */
  renderPrometheus(): Promise<string>;
  /** Flushes and stops exporters. Idempotent. */
  shutdown(): Promise<void>;
}

function prometheusReader(): { exporter: PrometheusExporter; render: () => Promise<string> } {
  // Scope labels would add otel_scope_name="usage-limiter" to every series for no information.
  const exporter = new PrometheusExporter({ preventServerStart: true, withoutScopeInfo: true });
  const serializer = new PrometheusSerializer('', false, undefined, false, true);
  return {
    exporter,
    render: async () => {
      const { resourceMetrics } = await exporter.collect();
      return serializer.serialize(resourceMetrics);
    },
  };
}

function once(fn: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | null = null;
  return () => (p ??= fn());
}

export interface CreateTelemetryOptions {
  readonly serviceName?: string;
  /**
   * Resource attributes besides the service name (`target_info` on /metrics). The server passes what the
   * NodeSDK would detect: OTEL_RESOURCE_ATTRIBUTES, host and process. Tests leave it out.
   */
  readonly detectedResource?: Resource;
  /** Spans of every Check go here (tests use an InMemorySpanExporter). */
  readonly spanExporter?: SpanExporter;
}

/** A private (not global) provider: metrics for /metrics, and spans only if an exporter is given. */
export function createTelemetry(opts: CreateTelemetryOptions = {}): Telemetry {
  const named = resourceFromAttributes({ [ATTR_SERVICE_NAME]: opts.serviceName ?? 'usage-limiter' });
  const resource = opts.detectedResource ? opts.detectedResource.merge(named) : named;
  const prom = prometheusReader();
  const meterProvider = new MeterProvider({ resource, readers: [prom.exporter] });
  const tracerProvider = opts.spanExporter
    ? new BasicTracerProvider({ resource, spanProcessors: [new SimpleSpanProcessor(opts.spanExporter)] })
    : null;
  return {
    meter: meterProvider.getMeter(INSTRUMENTATION_SCOPE),
    tracer: tracerProvider?.getTracer(INSTRUMENTATION_SCOPE) ?? null,
    renderPrometheus: prom.render,
    shutdown: once(async () => {
      await Promise.allSettled([meterProvider.shutdown(), tracerProvider?.shutdown()]);
    }),
  };
}

let installed: Telemetry | null = null;

/** The process-wide telemetry started by register.ts, if any. */
export function installedTelemetry(): Telemetry | null {
  return installed;
}

/**
 * Starts the NodeSDK and registers it globally. Must run before the modules it instruments are imported
 * (see register.ts); instrumentation is only loaded when traces are exported, since it only makes spans.
 */
export async function startGlobalTelemetry(settings: TelemetrySettings): Promise<Telemetry> {
  if (installed) return installed;
  // With nothing exported over OTLP (the default), /metrics needs only a private MeterProvider: the
  // NodeSDK, the OTLP exporters and their generated protobuf code are then never loaded (about 8 MB of
  // the server's live heap, and start-up time).
  if (settings.disabled) {
    installed = createTelemetry({ serviceName: settings.serviceName });
    return installed;
  }
  if (!settings.otlpMetrics && !settings.otlpTraces) {
    // The same resource the NodeSDK would build, so target_info keeps its attributes.
    const detectedResource = detectResources({ detectors: [envDetector, hostDetector, processDetector] });
    installed = createTelemetry({ serviceName: settings.serviceName, detectedResource });
    return installed;
  }
  const prom = prometheusReader();
  // npm installs private copies of sdk-metrics under some exporters: identical at run time, distinct types.
  type Reader = NonNullable<NodeSDKConfiguration['metricReaders']>[number];
  const readers: Reader[] = [prom.exporter as unknown as Reader];
  if (settings.otlpMetrics) {
    const { OTLPMetricExporter } = await import('@opentelemetry/exporter-metrics-otlp-http');
    readers.push(
      new PeriodicExportingMetricReader({
        exporter: new OTLPMetricExporter() as unknown as ConstructorParameters<typeof PeriodicExportingMetricReader>[0]['exporter'],
        exportIntervalMillis: settings.metricExportIntervalMs,
      }) as unknown as Reader,
    );
  }
  const spanProcessors: SpanProcessor[] = settings.otlpTraces
    ? [new BatchSpanProcessor(new (await import('@opentelemetry/exporter-trace-otlp-http')).OTLPTraceExporter())]
    : [];
  const instrumentations = settings.otlpTraces ? await loadInstrumentations() : [];

  const { NodeSDK } = await import('@opentelemetry/sdk-node');
  const sdk = new NodeSDK({
    serviceName: settings.serviceName,
    metricReaders: readers,
    // Explicitly empty: left unset, the SDK would build OTLP trace and log exporters pointing at localhost.
    spanProcessors,
    logRecordProcessors: [],
    instrumentations,
  });
  sdk.start();
  installed = {
    meter: metricsApi.getMeterProvider().getMeter(INSTRUMENTATION_SCOPE),
    tracer: spanProcessors.length > 0 ? trace.getTracer(INSTRUMENTATION_SCOPE) : null,
    renderPrometheus: prom.render,
    shutdown: once(() => sdk.shutdown()),
  };
  return installed;
}

async function loadInstrumentations() {
  const [{ GrpcInstrumentation }, { IORedisInstrumentation }, { PgInstrumentation }, { HttpInstrumentation }] =
    await Promise.all([
      import('@opentelemetry/instrumentation-grpc'),
      import('@opentelemetry/instrumentation-ioredis'),
      import('@opentelemetry/instrumentation-pg'),
      import('@opentelemetry/instrumentation-http'),
    ]);
  return [
    new GrpcInstrumentation(),
    // One span per EVALSHA is the Redis round trip of a Check; the command's arguments are not recorded.
    new IORedisInstrumentation({ requireParentSpan: true }),
    new PgInstrumentation({ requireParentSpan: true }),
    new HttpInstrumentation({
      // Probes and scrapes every few seconds would drown the traces that matter.
      ignoreIncomingRequestHook: (req) => /^\/(healthz|readyz|metrics)\b/.test(req.url ?? ''),
    }),
  ];
}

/** Flushes the process-wide telemetry on exit, waiting at most `timeoutMs` for an unreachable collector. */
export async function shutdownInstalledTelemetry(timeoutMs = 5_000): Promise<void> {
  if (installed === null) return;
  await within(installed.shutdown().catch(() => {}), timeoutMs, () => undefined, { unref: true });
}

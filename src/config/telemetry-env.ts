// The standard OTEL_* variables, read once to decide which exporters to build. Everything else about them
// (endpoints, headers, timeouts, resource attributes) is left to the OpenTelemetry SDK's own handling, so
// this module only answers "is OTLP configured for traces / metrics, and is the SDK switched off".

export interface TelemetrySettings {
  /** OTEL_SDK_DISABLED=true: no tracing, no OTLP; /metrics still works (it is part of the server). */
  readonly disabled: boolean;
  readonly serviceName: string;
  /** OTLP trace export is configured (OTEL_EXPORTER_OTLP_ENDPOINT or ..._TRACES_ENDPOINT). */
  readonly otlpTraces: boolean;
  /** OTLP metric export is configured (OTEL_EXPORTER_OTLP_ENDPOINT or ..._METRICS_ENDPOINT). */
  readonly otlpMetrics: boolean;
  /** OTEL_METRIC_EXPORT_INTERVAL, for the OTLP metric reader (ms). */
  readonly metricExportIntervalMs: number;
}

const DEFAULT_EXPORT_INTERVAL_MS = 60_000;

function set(v: string | undefined): boolean {
  return v !== undefined && v.trim() !== '';
}

/** OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER may say `none` to switch one signal off. */
function exporterIsNone(v: string | undefined): boolean {
  return (v ?? '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .includes('none');
}

export function loadTelemetrySettings(env: NodeJS.ProcessEnv = process.env): TelemetrySettings {
  const disabled = (env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true';
  const anyEndpoint = set(env.OTEL_EXPORTER_OTLP_ENDPOINT);
  const interval = Number(env.OTEL_METRIC_EXPORT_INTERVAL);
  return Object.freeze({
    disabled,
    serviceName: set(env.OTEL_SERVICE_NAME) ? env.OTEL_SERVICE_NAME!.trim() : 'usage-limiter',
    otlpTraces:
      !disabled && (anyEndpoint || set(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)) && !exporterIsNone(env.OTEL_TRACES_EXPORTER),
    otlpMetrics:
      !disabled &&
      (anyEndpoint || set(env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT)) &&
      !exporterIsNone(env.OTEL_METRICS_EXPORTER),
    metricExportIntervalMs: Number.isFinite(interval) && interval > 0 ? interval : DEFAULT_EXPORT_INTERVAL_MS,
  });
}

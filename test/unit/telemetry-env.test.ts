import { describe, expect, it } from 'vitest';
import { loadTelemetrySettings } from '../../src/config/telemetry-env.js';

describe('loadTelemetrySettings', () => {
  it('exports nothing over OTLP unless an endpoint is set', () => {
    expect(loadTelemetrySettings({})).toEqual({ disabled: false, serviceName: 'usage-limiter', otlpTraces: false, otlpMetrics: false, metricExportIntervalMs: 60_000 });
  });

  it('takes the common endpoint for both signals, or a per-signal one', () => {
    expect(loadTelemetrySettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toMatchObject({ otlpTraces: true, otlpMetrics: true });
    expect(loadTelemetrySettings({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/v1/traces' })).toMatchObject({ otlpTraces: true, otlpMetrics: false });
    expect(loadTelemetrySettings({ OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'http://c:4318/v1/metrics' })).toMatchObject({ otlpTraces: false, otlpMetrics: true });
  });

  it('honours OTEL_*_EXPORTER=none, OTEL_SDK_DISABLED, the service name and the export interval', () => {
    const base = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' };
    expect(loadTelemetrySettings({ ...base, OTEL_TRACES_EXPORTER: 'none' })).toMatchObject({ otlpTraces: false, otlpMetrics: true });
    expect(loadTelemetrySettings({ ...base, OTEL_METRICS_EXPORTER: 'otlp,none' })).toMatchObject({ otlpTraces: true, otlpMetrics: false });
    expect(loadTelemetrySettings({ ...base, OTEL_SDK_DISABLED: 'true' })).toMatchObject({ disabled: true, otlpTraces: false, otlpMetrics: false });
    expect(loadTelemetrySettings({ OTEL_SERVICE_NAME: ' limiter-eu ', OTEL_METRIC_EXPORT_INTERVAL: '15000' })).toMatchObject({ serviceName: 'limiter-eu', metricExportIntervalMs: 15_000 });
    expect(loadTelemetrySettings({ OTEL_METRIC_EXPORT_INTERVAL: 'soon' }).metricExportIntervalMs).toBe(60_000);
  });
});

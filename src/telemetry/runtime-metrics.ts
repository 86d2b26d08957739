import type { Meter } from '@opentelemetry/api';
import { constants, monitorEventLoopDelay, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';

// The process's own health, next to the Check's metrics: memory, event-loop delay and garbage-collection
// pauses. Why these: on this server the latency tail is set by the event loop, not by Redis. A full
// collection stops every Check for tens of milliseconds (README "Performance and scale"), and a pause
// longer than Envoy's deadline answers every Check in flight by Envoy's failure mode. Names follow
// prom-client's defaults, so the usual Node.js dashboards read them.
//
// Cost: one observer callback per collection (tens a second under load) and the event-loop monitor's
// timer (every 20 ms); nothing on the Check's path.

/** Pause buckets (seconds): a scavenge takes about a millisecond, a full collection 10–200 ms. */
const GC_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1];
/** How often the event-loop monitor samples (ms). */
const LOOP_RESOLUTION_MS = 20;
/**
 * The delay quantiles cover the time since the last reset. Every reader (a Prometheus scrape, an OTLP
 * export) resets them, but not more often than this, so two readers still each see a window of samples.
 */
const LOOP_WINDOW_MS = 5_000;

const GC_KINDS: ReadonlyMap<number, string> = new Map([
  [constants.NODE_PERFORMANCE_GC_MINOR, 'minor'],
  [constants.NODE_PERFORMANCE_GC_MAJOR, 'major'],
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL, 'incremental'],
  [constants.NODE_PERFORMANCE_GC_WEAKCB, 'weakcb'],
]);

/** A GC entry's kind as the histogram labels it (`minor`, `major`, ...). */
export function gcKind(entry: PerformanceEntry): string {
  // Node 16+ puts the kind in `detail`; the top-level `kind` is deprecated.
  const kind = ((entry as PerformanceEntry & { detail?: unknown }).detail as { kind?: number } | null | undefined)?.kind;
  return (kind !== undefined ? GC_KINDS.get(kind) : undefined) ?? 'other';
}

export interface RuntimeMetrics {
  /** Stops the observer and the event-loop monitor. */
  stop(): void;
}

export function registerRuntimeMetrics(meter: Meter, now: () => number = Date.now): RuntimeMetrics {
  meter
    .createObservableGauge('process_resident_memory_bytes', { description: 'Resident set size of the process, in bytes.' })
    .addCallback((r) => r.observe(process.memoryUsage.rss()));
  const heapUsed = meter.createObservableGauge('nodejs_heap_size_used_bytes', {
    description: 'V8 heap in use (live objects and garbage not yet collected), in bytes.',
  });
  const heapTotal = meter.createObservableGauge('nodejs_heap_size_total_bytes', { description: 'V8 heap reserved, in bytes.' });
  const external = meter.createObservableGauge('nodejs_external_memory_bytes', {
    description: 'Memory held by JS objects outside the V8 heap (buffers), in bytes.',
  });
  // One memoryUsage() per reading for the three (it walks V8's heap spaces).
  meter.addBatchObservableCallback(
    (r) => {
      const m = process.memoryUsage();
      r.observe(heapUsed, m.heapUsed);
      r.observe(heapTotal, m.heapTotal);
      r.observe(external, m.external);
    },
    [heapUsed, heapTotal, external],
  );

  const pauses = meter.createHistogram('nodejs_gc_duration_seconds', {
    description: 'Garbage-collection pauses by kind (minor = scavenge, major = full mark-compact), in seconds.',
    unit: 's',
    advice: { explicitBucketBoundaries: GC_BUCKETS },
  });
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) pauses.record(e.duration / 1000, { kind: gcKind(e) });
  });
  observer.observe({ entryTypes: ['gc'] });

  const loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
  loop.enable();
  let windowStart = now();
  // The quantiles cover the samples since the last reset (LOOP_WINDOW_MS), all three from one reading.
  const p50 = meter.createObservableGauge('nodejs_eventloop_lag_p50_seconds', {
    description: `Median event-loop delay over the last ${LOOP_WINDOW_MS / 1000} s or more, in seconds.`,
    unit: 's',
  });
  const p99 = meter.createObservableGauge('nodejs_eventloop_lag_p99_seconds', {
    description: `99th percentile of the event-loop delay over the last ${LOOP_WINDOW_MS / 1000} s or more, in seconds: how long a ready callback (a Redis reply, a new Check) waited to run.`,
    unit: 's',
  });
  const max = meter.createObservableGauge('nodejs_eventloop_lag_max_seconds', {
    description: `Longest event-loop delay over the last ${LOOP_WINDOW_MS / 1000} s or more, in seconds.`,
    unit: 's',
  });
  meter.addBatchObservableCallback(
    (r) => {
      if (loop.count > 0) {
        r.observe(p50, loop.percentile(50) / 1e9);
        r.observe(p99, loop.percentile(99) / 1e9);
        r.observe(max, loop.max / 1e9);
      }
      if (now() - windowStart >= LOOP_WINDOW_MS) {
        loop.reset();
        windowStart = now();
      }
    },
    [p50, p99, max],
  );

  return {
    stop() {
      observer.disconnect();
      loop.disable();
    },
  };
}

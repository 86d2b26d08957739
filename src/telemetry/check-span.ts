import { context, SpanKind, SpanStatusCode, trace, TraceFlags, type Attributes, type Tracer } from '@opentelemetry/api';
import type { Decision } from '../core/decide.js';
import type { CheckInput } from '../core/request.js';

// One span per Check, child of the gRPC server span when grpc instrumentation is on. The tenant id is a span
// attribute (spans are sampled and short-lived; metric labels are forever), the API key never is.

export const CHECK_SPAN_NAME = 'usage_limiter.check';

export const CheckSpanAttributes = {
  tenantId: 'usage_limiter.tenant_id',
  tier: 'usage_limiter.tier',
  decision: 'usage_limiter.decision',
  reason: 'usage_limiter.reason',
  degraded: 'usage_limiter.degraded',
  endpoint: 'usage_limiter.endpoint',
  period: 'usage_limiter.period',
  requestId: 'usage_limiter.request_id',
  error: 'usage_limiter.error',
} as const;

export type CheckRunner = (input: CheckInput, run: () => Promise<Decision>) => Promise<Decision>;

/** Wraps each Check in a span carrying the decision; CheckService calls it only when tracing is on. */
export function checkSpans(tracer: Tracer): CheckRunner {
  return (input, run) => {
    // Under a gRPC server span that was not sampled, a child span would not be either: skip even creating
    // it (a non-recording span still costs a few microseconds, and most Checks are not sampled).
    const parent = trace.getSpan(context.active());
    if (parent !== undefined && (parent.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return run();
    return tracer.startActiveSpan(
      CHECK_SPAN_NAME,
      {
        kind: SpanKind.INTERNAL,
        attributes: {
          'http.request.method': input.method,
          'url.path': input.path,
          [CheckSpanAttributes.requestId]: input.requestId,
        },
      },
      async (span) => {
        try {
          const d = await run();
          const attrs: Attributes = {
            [CheckSpanAttributes.decision]: d.outcome,
            [CheckSpanAttributes.reason]: d.code,
          };
          if (d.tenantId !== null) attrs[CheckSpanAttributes.tenantId] = d.tenantId;
          if (d.tierId !== null) attrs[CheckSpanAttributes.tier] = d.tierId;
          if (d.outcome === 'allow') {
            attrs[CheckSpanAttributes.degraded] = d.degraded;
            if (d.metering) {
              attrs[CheckSpanAttributes.endpoint] = d.metering.endpoint;
              attrs[CheckSpanAttributes.period] = d.metering.period;
            }
          } else {
            attrs['http.response.status_code'] = d.httpStatus;
          }
          // A dependency failure is an error of this service even when the tier's policy let the request pass.
          const failed = d.outcome === 'allow' ? d.degraded : d.code === 'USAGE_CHECK_UNAVAILABLE';
          if (failed) {
            const error = d.tenantId === null ? 'DatabaseError' : 'CacheError';
            attrs[CheckSpanAttributes.error] = error;
            span.setStatus({ code: SpanStatusCode.ERROR, message: error });
          }
          span.setAttributes(attrs);
          return d;
        } finally {
          span.end();
        }
      },
    );
  };
}

// Alerts: what a tenant nearing its quota or hammering its limits looks like to a webhook receiver.
// Each alert has a deterministic key, so the same alert raised twice (two replicas, a replayed flush, a
// restart) is one outbox row per target and one delivery.

export type AlertKind = 'usage.threshold' | 'usage.repeated_violations';

export interface Alert {
  /** Deterministic identity, e.g. `threshold:tenant_E_111:/verify:2025-09:80`. */
  readonly key: string;
  readonly kind: AlertKind;
  readonly tenantId: string;
  /** ISO 8601, when the alert was raised. */
  readonly occurredAt: string;
  readonly data: Readonly<Record<string, unknown>>;
}

export type AlertTarget = 'global' | 'tenant';

/** The JSON body POSTed to a webhook. Fixed when the alert is enqueued, so every retry sends the same event. */
export interface AlertPayload {
  /** Same for every target and every attempt: receivers de-duplicate on it. */
  readonly id: string;
  readonly type: AlertKind;
  readonly createdAt: string;
  readonly tenantId: string;
  readonly data: Readonly<Record<string, unknown>>;
}

export function thresholdAlert(
  e: { tenantId: string; endpoint: string; threshold: number; usage: number; limit: number },
  period: string,
  nowMs: number,
): Alert {
  const percent = Math.round(e.threshold * 100);
  return {
    key: `threshold:${e.tenantId}:${e.endpoint}:${period}:${percent}`,
    kind: 'usage.threshold',
    tenantId: e.tenantId,
    occurredAt: new Date(nowMs).toISOString(),
    data: { endpoint: e.endpoint, period, threshold: e.threshold, percent, usage: e.usage, limit: e.limit },
  };
}

export function repeatedViolationsAlert(
  tenantId: string,
  window: { startMs: number; lengthMs: number },
  count: number,
  limit: number,
  nowMs: number,
): Alert {
  return {
    key: `violations:${tenantId}:${Math.floor(window.startMs / 1000)}`,
    kind: 'usage.repeated_violations',
    tenantId,
    occurredAt: new Date(nowMs).toISOString(),
    data: {
      count,
      limit,
      windowSeconds: window.lengthMs / 1000,
      windowStart: new Date(window.startMs).toISOString(),
      windowEnd: new Date(window.startMs + window.lengthMs).toISOString(),
    },
  };
}

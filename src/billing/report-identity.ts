// Pure rules for what a usage batch sent to Stripe is called and when it happened.
import { createHash } from 'node:crypto';
import type { Period } from '../core/period.js';

const MAX_IDENTIFIER = 100;
/** Stripe accepts meter events up to 35 days old; keep an hour's margin. */
const MAX_EVENT_AGE_S = 35 * 24 * 3600 - 3600;

/**
 * The identifier of the batch that takes a (tenant, endpoint, period) from `fromUnits` to `toUnits`
 * reported units. It depends only on what the batch is, so a re-sent batch (after a crash, a timeout, or
 * by another replica) carries the same one and Stripe keeps a single event. Stripe allows 100 characters;
 * longer names (ids are up to 128) are hashed.
 */
export function meterEventIdentifier(
  tenantId: string,
  endpoint: string,
  period: string,
  fromUnits: number,
  toUnits: number,
): string {
  const readable = `ul:${tenantId}:${endpoint}:${period}:${fromUnits}-${toUnits}`;
  if (readable.length <= MAX_IDENTIFIER) return readable;
  return `ul:sha256:${createHash('sha256').update(readable).digest('hex')}`;
}

/**
 * The event's time (epoch s): when the batch was cut, kept inside the period it bills (so late reports of
 * a closed period land in that period's invoice) and inside Stripe's 35-day back-dating limit.
 */
export function meterEventTimestamp(batchAtMs: number, period: Period): number {
  const at = Math.floor(batchAtMs / 1000);
  const inPeriod = Math.min(Math.max(at, Math.ceil(period.startMs / 1000)), Math.floor((period.endMs - 1) / 1000));
  return Math.max(inPeriod, at - MAX_EVENT_AGE_S);
}

/** The meter event name of an endpoint: its own from STRIPE_METERS, else the shared STRIPE_METER_EVENT. */
export function eventNameFor(endpoint: string, meters: Readonly<Record<string, string>>, fallback: string): string {
  return meters[endpoint] ?? fallback;
}

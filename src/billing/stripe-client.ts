// The Stripe adapter: builds the client from the configuration and classifies its errors. The rest of
// billing sees two small interfaces (MeterEventSink, MeterSummaries), so tests and the no-Stripe setup can
// swap them, and only this file knows the `stripe` package's error classes.
import Stripe from 'stripe';

export interface StripeClientOptions {
  readonly secretKey: string;
  /** e.g. http://127.0.0.1:12111 for a local fake; unset: api.stripe.com. */
  readonly apiBase?: string;
  readonly timeoutMs: number;
}

/**
 * Retries are ours (see usage-reporter.ts): stripe-node retries neither 429 nor (without a key of ours) a
 * call whose answer was lost, and our loop re-sends with the same meter-event identifier, which Stripe
 * de-duplicates. So the client itself does not retry (beyond the one closed-connection retry it always
 * makes, which reuses its idempotency key and is therefore safe).
 */
export function createStripeClient(o: StripeClientOptions): Stripe {
  const config: Stripe.StripeConfig = { maxNetworkRetries: 0, timeout: o.timeoutMs, telemetry: false };
  if (o.apiBase !== undefined) {
    const u = new URL(o.apiBase);
    const protocol = u.protocol === 'http:' ? 'http' : 'https';
    config.protocol = protocol;
    config.host = u.hostname;
    config.port = u.port === '' ? (protocol === 'http' ? 80 : 443) : Number(u.port);
  }
  return new Stripe(o.secretKey, config);
}

/** One meter event as billing sends it. */
export interface MeterEventInput {
  readonly eventName: string;
  readonly stripeCustomerId: string;
  readonly value: number;
  readonly endpoint: string;
  /** Deterministic: re-sending a batch re-sends its identifier, and Stripe keeps one event per identifier. */
  readonly identifier: string;
  /** Epoch seconds. */
  readonly timestamp: number;
}

export interface MeterEventSink {
  /** Resolves `accepted`, or `duplicate` when Stripe already holds the identifier (delivered before). */
  send(event: MeterEventInput): Promise<'accepted' | 'duplicate'>;
}

export interface MeterSummaries {
  /**
   * The sum Stripe aggregated for a meter event name and customer in [startS, endS) (minute-aligned by the
   * caller), or null when no active meter has that event name.
   */
  total(eventName: string, stripeCustomerId: string, startS: number, endS: number): Promise<number | null>;
}

/**
 * Stripe refuses a meter event whose identifier it has seen (for at least 24 h) with HTTP 400,
 * `invalid_request_error`, no error code, and the message `An event already exists with identifier <id>.`
 * (with `stripe-should-retry: false`). The fake Stripe in test/helpers answers exactly that.
 */
export function isDuplicateIdentifier(err: unknown): boolean {
  if (!(err instanceof Stripe.errors.StripeError)) return false;
  return (
    err.statusCode === 400 &&
    (err.rawType === 'invalid_request_error' || err.type === 'StripeInvalidRequestError') &&
    /already exists with identifier/i.test(err.message)
  );
}

/** Worth another try: the connection failed or timed out, Stripe is rate limiting (429), or it failed (5xx, 409). */
export function isRetryable(err: unknown): boolean {
  if (!(err instanceof Stripe.errors.StripeError)) return false;
  if (err instanceof Stripe.errors.StripeConnectionError) return true;
  const status = err.statusCode;
  return status === undefined || status === 409 || status === 429 || status >= 500;
}

/** A short, log-safe description of a Stripe failure (never the request, which holds customer ids). */
export function describeStripeError(err: unknown): string {
  if (err instanceof Stripe.errors.StripeError) {
    return `${err.type}${err.statusCode === undefined ? '' : ` ${err.statusCode}`}: ${err.message}`;
  }
  return err instanceof Error ? err.message : String(err);
}

export function stripeMeterEvents(stripe: Stripe): MeterEventSink {
  return {
    async send(e) {
      const params: Stripe.Billing.MeterEventCreateParams = {
        event_name: e.eventName,
        identifier: e.identifier,
        timestamp: e.timestamp,
        payload: { stripe_customer_id: e.stripeCustomerId, value: String(e.value), endpoint: e.endpoint },
      };
      try {
        await stripe.billing.meterEvents.create(params);
        return 'accepted';
      } catch (err) {
        if (isDuplicateIdentifier(err)) return 'duplicate';
        throw err;
      }
    },
  };
}

const METER_CACHE_MS = 10 * 60_000;

export function stripeMeterSummaries(stripe: Stripe, now: () => number): MeterSummaries {
  let meters: { byEvent: Map<string, string>; at: number } | null = null;
  async function meterId(eventName: string): Promise<string | null> {
    if (meters === null || now() - meters.at > METER_CACHE_MS || !meters.byEvent.has(eventName)) {
      const byEvent = new Map<string, string>();
      for await (const m of stripe.billing.meters.list({ status: 'active', limit: 100 })) byEvent.set(m.event_name, m.id);
      meters = { byEvent, at: now() };
    }
    return meters.byEvent.get(eventName) ?? null;
  }
  return {
    async total(eventName, customer, startS, endS) {
      const id = await meterId(eventName);
      if (id === null) return null;
      let sum = 0;
      for await (const s of stripe.billing.meters.listEventSummaries(id, { customer, start_time: startS, end_time: endS })) {
        sum += s.aggregated_value;
      }
      return sum;
    },
  };
}

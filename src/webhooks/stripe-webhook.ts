// POST /webhooks/stripe on the HTTP port. The raw body (bounded) is verified against `Stripe-Signature`
// with STRIPE_WEBHOOK_SECRET before anything is parsed or stored; a missing or bad signature is a 400 and
// changes nothing. Answers are small JSON bodies that never echo the body, the header or the secret.
// 2xx tells Stripe to stop retrying, so it is sent only once the event is durably handled (or deliberately
// ignored); a database failure is a 500, and Stripe delivers again later.
import type http from 'node:http';
import Stripe from 'stripe';
import type { AppDatabase } from '../db/client.js';
import type { Logger } from '../logger.js';
import { applySubscriptionEvent, type SyncOptions } from './apply-subscription.js';
import { SUBSCRIPTION_EVENTS } from './subscription-sync.js';

export const STRIPE_WEBHOOK_PATH = '/webhooks/stripe';
/** Stripe's events are far smaller; anything bigger is not from Stripe. */
export const MAX_WEBHOOK_BODY_BYTES = 512 * 1024;

export interface StripeWebhookDeps {
  readonly db: AppDatabase;
  readonly logger: Logger;
  /** STRIPE_WEBHOOK_SECRET; unset: the route answers 503 and says so. */
  readonly secret: string | undefined;
  readonly sync: SyncOptions;
}

function send(res: http.ServerResponse, status: number, body: Record<string, unknown>, extra: http.OutgoingHttpHeaders = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...extra,
  });
  res.end(text);
}

class TooLarge extends Error {}

function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) return Promise.reject(new TooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.removeAllListeners('data');
        req.resume(); // drain without keeping it
        reject(new TooLarge());
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

const SUBSCRIPTION_TYPES: ReadonlySet<string> = new Set(SUBSCRIPTION_EVENTS);

/** The `routes` hook of the HTTP server: handles POST /webhooks/stripe, returns false for other paths. */
export function stripeWebhookRoute(deps: StripeWebhookDeps): (req: http.IncomingMessage, res: http.ServerResponse) => Promise<boolean> {
  return async (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== STRIPE_WEBHOOK_PATH) return false;
    if (req.method !== 'POST') {
      send(res, 405, { code: 'METHOD_NOT_ALLOWED', message: 'Use POST.' }, { allow: 'POST' });
      return true;
    }
    if (deps.secret === undefined) {
      send(res, 503, { code: 'WEBHOOKS_NOT_CONFIGURED', message: 'STRIPE_WEBHOOK_SECRET is not set on this server.' });
      return true;
    }
    let body: Buffer;
    try {
      body = await readBody(req, MAX_WEBHOOK_BODY_BYTES);
    } catch (err) {
      if (err instanceof TooLarge) {
        send(res, 413, { code: 'PAYLOAD_TOO_LARGE', message: `Webhook bodies are limited to ${MAX_WEBHOOK_BODY_BYTES} bytes.` }, { connection: 'close' });
        return true;
      }
      throw err;
    }
    const signature = req.headers['stripe-signature'];
    if (typeof signature !== 'string' || signature === '') {
      send(res, 400, { code: 'MISSING_SIGNATURE', message: 'The Stripe-Signature header is required.' });
      return true;
    }

    let event: Stripe.Event;
    try {
      event = Stripe.webhooks.constructEvent(body, signature, deps.secret);
    } catch (err) {
      const invalidSignature = err instanceof Stripe.errors.StripeSignatureVerificationError;
      deps.logger.warn(
        { event: 'stripe.webhook_rejected', reason: invalidSignature ? 'invalid signature' : 'invalid payload' },
        'Stripe webhook rejected',
      );
      send(
        res,
        400,
        invalidSignature
          ? { code: 'INVALID_SIGNATURE', message: 'The Stripe-Signature header does not match the body.' }
          : { code: 'INVALID_PAYLOAD', message: 'The body is not a Stripe event.' },
      );
      return true;
    }

    if (!SUBSCRIPTION_TYPES.has(event.type)) {
      send(res, 200, { received: true, outcome: 'ignored' });
      return true;
    }
    const result = await applySubscriptionEvent(
      deps.db,
      { id: event.id, type: event.type, createdS: event.created, object: event.data.object },
      deps.sync,
    );
    deps.logger.info(
      { event: 'stripe.webhook', eventId: event.id, type: event.type, ...result },
      `Stripe ${event.type}: ${result.outcome}`,
    );
    send(res, 200, { received: true, outcome: result.outcome });
    return true;
  };
}

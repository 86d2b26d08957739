// A local Stripe for tests: a real HTTP server speaking the wire format the `stripe` package uses
// (form-encoded POST bodies, JSON answers, `Authorization: Bearer sk_...`, `Idempotency-Key`), for the
// endpoints usage-limiter calls. Request and response shapes are the package's own TypeScript types, so a
// change in the package that the server code would trip over fails to compile here too.
//
// What it enforces like Stripe: meter event identifiers are unique (a repeat is the 400 Stripe answers:
// `invalid_request_error`, no code, "An event already exists with identifier <id>.", with
// `stripe-should-retry: false`); an Idempotency-Key replays its first answer (same parameters) or is a 400
// idempotency_error (different ones); events need an active meter for their event name; `value` must be a
// number. What it does not model: Stripe's 35-day back-dating window (tests pin clocks in 2025).
//
// It fails on demand: a status (500, 503, 429...), a dropped connection before or after the event is
// recorded (the socket is destroyed, the client sees ECONNRESET), or a slow answer (after recording).
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type Stripe from 'stripe';

export type Fault =
  /** Answer this status with a Stripe error body, recording nothing. */
  | { readonly kind: 'status'; readonly status: number }
  /** Destroy the connection without recording the event. */
  | { readonly kind: 'drop-before' }
  /** Record the event, then destroy the connection: the caller cannot know it landed. */
  | { readonly kind: 'drop-after' }
  /** Record the event, then answer after `ms` (longer than the client's timeout: it gives up first). */
  | { readonly kind: 'slow'; readonly ms: number };

export interface RequestRecord {
  readonly method: string;
  readonly path: string;
  /** The secret key the request was made with (tells apart the processes of a test). */
  readonly apiKey: string;
  readonly outcome: 'accepted' | 'replayed' | 'duplicate' | 'fault' | 'rejected' | 'ok';
  readonly fault?: Fault['kind'];
  readonly identifier?: string;
}

export interface AcceptedEvent {
  readonly event: Stripe.Billing.MeterEvent;
  readonly apiKey: string;
}

export interface FakeStripeOptions {
  /** Event names of the active meters. */
  readonly meters?: readonly string[];
}

type FaultPolicy = (req: { method: string; path: string; apiKey: string }) => Fault | null;

// Seeded, so a failure pattern can be reproduced from its seed.
export { seededRandom } from './prng.js';
import { seededRandom } from './prng.js';

/** Parses a form body the way the stripe package writes it (`payload[value]=5` → `{ payload: { value: '5' } }`). */
export function parseForm(body: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [rawKey, value] of new URLSearchParams(body)) {
    const m = /^([^[\]]+)\[([^[\]]*)\]$/.exec(rawKey);
    if (m) {
      const outer = m[1] as string;
      const inner = m[2] as string;
      const obj = (out[outer] ??= {}) as Record<string, unknown>;
      obj[inner] = value;
    } else {
      out[rawKey] = value;
    }
  }
  return out;
}

export class FakeStripe {
  readonly requests: RequestRecord[] = [];
  readonly accepted: AcceptedEvent[] = [];
  private readonly identifiers = new Set<string>();
  private readonly idempotency = new Map<string, { hash: string; status: number; body: string }>();
  private readonly meters = new Map<string, Stripe.Billing.Meter>();
  private readonly sockets = new Set<Socket>();
  private server: http.Server | null = null;
  private faultPolicy: FaultPolicy = () => null;
  /** Called after an event is recorded and before it is answered (a test may kill its sender here). */
  onAccepted: ((e: AcceptedEvent) => void | Promise<void>) | null = null;
  port = 0;

  constructor(opts: FakeStripeOptions = {}) {
    for (const name of opts.meters ?? ['api_requests']) this.addMeter(name);
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  addMeter(eventName: string): Stripe.Billing.Meter {
    const meter: Stripe.Billing.Meter = {
      id: `mtr_${createHash('sha256').update(eventName).digest('hex').slice(0, 16)}`,
      object: 'billing.meter',
      created: 1_750_000_000,
      customer_mapping: { event_payload_key: 'stripe_customer_id', type: 'by_id' },
      default_aggregation: { formula: 'sum' },
      display_name: eventName,
      event_name: eventName,
      event_time_window: null,
      livemode: false,
      status: 'active',
      status_transitions: { deactivated_at: null },
      updated: 1_750_000_000,
      value_settings: { event_payload_key: 'value' },
    };
    this.meters.set(meter.id, meter);
    return meter;
  }

  /** Decides, per request, whether (and how) to fail it. */
  setFaults(policy: FaultPolicy | null): void {
    this.faultPolicy = policy ?? (() => null);
  }

  /** Fails a `rate` share of meter-event calls, with kinds drawn evenly, reproducibly from `seed`. */
  failRandomly(rate: number, seed: number, kinds: readonly Fault[]): void {
    const random = seededRandom(seed);
    let faults = 0;
    this.setFaults(({ method, path }) => {
      if (method !== 'POST' || path !== '/v1/billing/meter_events') return null;
      if (random() >= rate) return null;
      // The first faults go through every kind in turn, so a run that fails a few calls has met each kind
      // (which calls fail depends on timing, and a random pick could miss one); later ones are random.
      const n = faults++;
      return (n < kinds.length ? kinds[n] : kinds[Math.floor(random() * kinds.length)]) ?? null;
    });
  }

  /** Records an event as if it had been sent earlier (Stripe holding usage that Postgres does not know of). */
  seedEvent(params: Stripe.Billing.MeterEventCreateParams): Stripe.Billing.MeterEvent {
    const event = this.toEvent(params);
    this.identifiers.add(event.identifier);
    this.accepted.push({ event, apiKey: 'seed' });
    return event;
  }

  /** Sum of accepted `value`s per customer (all meters). */
  totalsByCustomer(): Map<string, number> {
    const out = new Map<string, number>();
    for (const { event } of this.accepted) {
      const customer = event.payload.stripe_customer_id ?? '';
      out.set(customer, (out.get(customer) ?? 0) + Number(event.payload.value));
    }
    return out;
  }

  count(outcome: RequestRecord['outcome'], apiKey?: string): number {
    return this.requests.filter((r) => r.outcome === outcome && (apiKey === undefined || r.apiKey === apiKey)).length;
  }

  async start(): Promise<void> {
    const server = http.createServer((req, res) => void this.handle(req, res));
    server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    this.server = server;
    this.port = (server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private toEvent(p: Stripe.Billing.MeterEventCreateParams): Stripe.Billing.MeterEvent {
    const now = Math.floor(Date.now() / 1000);
    return {
      object: 'billing.meter_event',
      created: now,
      event_name: p.event_name,
      identifier: p.identifier ?? `fake_${this.accepted.length}_${now}`,
      livemode: false,
      payload: { ...p.payload },
      timestamp: p.timestamp ?? now,
    };
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fake');
    const method = req.method ?? 'GET';
    const body = await new Promise<string>((resolve) => {
      let text = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => (text += c));
      req.on('end', () => resolve(text));
    });
    const auth = /^Bearer (sk_\S+)$/.exec(req.headers.authorization ?? '');
    const apiKey = auth?.[1] ?? '';
    const record = (r: Omit<RequestRecord, 'method' | 'path' | 'apiKey'>) =>
      this.requests.push({ method, path: url.pathname, apiKey, ...r });

    if (apiKey === '') {
      record({ outcome: 'rejected' });
      return this.error(res, 401, { type: 'invalid_request_error', message: 'You did not provide an API key.' });
    }
    const fault = this.faultPolicy({ method, path: url.pathname, apiKey });
    if (fault?.kind === 'status') {
      record({ outcome: 'fault', fault: fault.kind });
      return this.error(
        res,
        fault.status,
        fault.status === 429
          ? { type: 'invalid_request_error', code: 'rate_limit', message: 'Too many requests hit the API too quickly.' }
          : { type: 'api_error', message: 'An unknown error occurred (fake Stripe, on purpose).' },
      );
    }
    if (fault?.kind === 'drop-before') {
      record({ outcome: 'fault', fault: fault.kind });
      req.socket.destroy();
      return;
    }

    if (method === 'POST' && url.pathname === '/v1/billing/meter_events') {
      return this.createMeterEvent(req, res, body, apiKey, fault, record);
    }
    const summaries = /^\/v1\/billing\/meters\/([^/]+)\/event_summaries$/.exec(url.pathname);
    if (method === 'GET' && summaries) {
      record({ outcome: 'ok' });
      return this.eventSummaries(res, decodeURIComponent(summaries[1] ?? ''), url);
    }
    if (method === 'GET' && url.pathname === '/v1/billing/meters') {
      record({ outcome: 'ok' });
      const list: Stripe.ApiList<Stripe.Billing.Meter> = {
        object: 'list',
        data: [...this.meters.values()].filter((m) => (url.searchParams.get('status') ?? m.status) === m.status),
        has_more: false,
        url: '/v1/billing/meters',
      };
      return this.json(res, 200, list);
    }
    record({ outcome: 'rejected' });
    return this.error(res, 404, { type: 'invalid_request_error', message: `Unrecognized request URL (${method}: ${url.pathname}).` });
  }

  private async createMeterEvent(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    body: string,
    apiKey: string,
    fault: Fault | null,
    record: (r: Omit<RequestRecord, 'method' | 'path' | 'apiKey'>) => void,
  ): Promise<void> {
    const form = parseForm(body);
    const payload = form.payload as Record<string, string> | undefined;
    const params: Stripe.Billing.MeterEventCreateParams = {
      event_name: String(form.event_name ?? ''),
      payload: payload ?? {},
      ...(typeof form.identifier === 'string' ? { identifier: form.identifier } : {}),
      ...(typeof form.timestamp === 'string' ? { timestamp: Number(form.timestamp) } : {}),
    };

    const key = req.headers['idempotency-key'];
    const hash = createHash('sha256').update(body).digest('hex');
    const saved = typeof key === 'string' ? this.idempotency.get(`${apiKey}\u0000${key}`) : undefined;
    if (saved) {
      if (saved.hash !== hash) {
        record({ outcome: 'rejected', identifier: params.identifier });
        return this.error(res, 400, {
          type: 'idempotency_error',
          message: `Keys for idempotent requests can only be used with the same parameters they were first used with.`,
        });
      }
      record({ outcome: 'replayed', identifier: params.identifier });
      res.writeHead(saved.status, { 'content-type': 'application/json', 'idempotent-replayed': 'true' });
      res.end(saved.body);
      return;
    }
    const remember = (status: number, text: string) => {
      if (typeof key === 'string') this.idempotency.set(`${apiKey}\u0000${key}`, { hash, status, body: text });
    };

    const invalid = this.validate(params);
    if (invalid !== null) {
      record({ outcome: 'rejected', identifier: params.identifier });
      return this.error(res, 400, { type: 'invalid_request_error', message: invalid });
    }
    if (params.identifier !== undefined && this.identifiers.has(params.identifier)) {
      record({ outcome: 'duplicate', identifier: params.identifier });
      const text = JSON.stringify({
        error: { type: 'invalid_request_error', message: `An event already exists with identifier ${params.identifier}.` },
      } satisfies { error: Stripe.StripeRawError });
      remember(400, text);
      res.writeHead(400, { 'content-type': 'application/json', 'stripe-should-retry': 'false' });
      res.end(text);
      return;
    }

    const event = this.toEvent(params);
    this.identifiers.add(event.identifier);
    const accepted = { event, apiKey };
    this.accepted.push(accepted);
    const text = JSON.stringify(event);
    remember(200, text);
    record({ outcome: fault ? 'fault' : 'accepted', ...(fault ? { fault: fault.kind } : {}), identifier: event.identifier });
    if (this.onAccepted) await this.onAccepted(accepted);
    if (res.socket?.destroyed) return;
    if (fault?.kind === 'drop-after') {
      req.socket.destroy();
      return;
    }
    if (fault?.kind === 'slow') await new Promise((resolve) => setTimeout(resolve, fault.ms));
    if (res.socket?.destroyed) return;
    this.json(res, 200, event);
  }

  private validate(p: Stripe.Billing.MeterEventCreateParams): string | null {
    if (p.event_name === '') return 'Missing required param: event_name.';
    if (![...this.meters.values()].some((m) => m.event_name === p.event_name && m.status === 'active')) {
      return `No active meter found for event_name ${p.event_name}.`;
    }
    if (!p.payload.stripe_customer_id) return 'Missing required param: payload[stripe_customer_id].';
    if (p.payload.value === undefined || !Number.isFinite(Number(p.payload.value))) return 'payload[value] must be a number.';
    if (p.identifier !== undefined && (p.identifier.length === 0 || p.identifier.length > 100)) {
      return 'identifier must be 1 to 100 characters.';
    }
    if (p.timestamp !== undefined && !Number.isInteger(p.timestamp)) return 'timestamp must be an integer.';
    return null;
  }

  private eventSummaries(res: http.ServerResponse, meterId: string, url: URL): void {
    const meter = this.meters.get(meterId);
    const params: Stripe.Billing.MeterListEventSummariesParams = {
      customer: url.searchParams.get('customer') ?? '',
      start_time: Number(url.searchParams.get('start_time')),
      end_time: Number(url.searchParams.get('end_time')),
    };
    if (!meter) return this.error(res, 404, { type: 'invalid_request_error', message: `No such meter: '${meterId}'` });
    if (params.customer === '' || params.start_time % 60 !== 0 || params.end_time % 60 !== 0) {
      return this.error(res, 400, { type: 'invalid_request_error', message: 'customer, and minute-aligned start_time and end_time, are required.' });
    }
    const value = this.accepted
      .filter(
        ({ event }) =>
          event.event_name === meter.event_name &&
          event.payload.stripe_customer_id === params.customer &&
          event.timestamp >= params.start_time &&
          event.timestamp < params.end_time,
      )
      .reduce((sum, { event }) => sum + Number(event.payload.value), 0);
    const summary: Stripe.Billing.MeterEventSummary = {
      id: `mtrusg_${params.start_time}_${params.end_time}`,
      object: 'billing.meter_event_summary',
      aggregated_value: value,
      end_time: params.end_time,
      livemode: false,
      meter: meter.id,
      start_time: params.start_time,
    };
    const list: Stripe.ApiList<Stripe.Billing.MeterEventSummary> = {
      object: 'list',
      data: [summary],
      has_more: false,
      url: `/v1/billing/meters/${meter.id}/event_summaries`,
    };
    this.json(res, 200, list);
  }

  private json(res: http.ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'request-id': `req_fake_${this.requests.length}` });
    res.end(text);
  }

  private error(res: http.ServerResponse, status: number, error: Stripe.StripeRawError): void {
    this.json(res, status, { error });
  }
}

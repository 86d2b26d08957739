// Signed webhook delivery, in the style of Stripe's: the signature header carries a timestamp and an
// HMAC-SHA256 over `<timestamp>.<raw body>`, so a receiver can check both who sent it and that it is fresh.
//
//   X-Usage-Limiter-Signature: t=1758217909,v1=5f2b…(hex)
//   X-Usage-Limiter-Event-Id:  evt_…   (the same on every retry: de-duplicate on it)
//
// The global webhook (ALERT_WEBHOOK_URL) is signed with ALERT_WEBHOOK_SECRET itself. A tenant's own webhook
// is signed with a secret derived from it for that tenant (`usage-limiter alerts secret --tenant T` prints
// it), so no tenant ever holds a secret that would let it forge another tenant's or the operator's alerts.
import { createHmac, timingSafeEqual } from 'node:crypto';

export const SIGNATURE_HEADER = 'x-usage-limiter-signature';
export const EVENT_ID_HEADER = 'x-usage-limiter-event-id';
export const ATTEMPT_HEADER = 'x-usage-limiter-attempt';

/** Signatures older (or newer) than this are rejected by `verifySignature` by default. */
export const DEFAULT_TOLERANCE_S = 300;

export function tenantWebhookSecret(globalSecret: string, tenantId: string): string {
  return createHmac('sha256', globalSecret).update(`usage-limiter tenant alert webhook:${tenantId}`).digest('hex');
}

export function signatureHeader(secret: string, timestampS: number, body: string): string {
  const mac = createHmac('sha256', secret).update(`${timestampS}.${body}`).digest('hex');
  return `t=${timestampS},v1=${mac}`;
}

/** What a receiver does (the README shows the same recipe). */
export function verifySignature(
  secret: string,
  header: string | undefined,
  body: string,
  nowS = Math.floor(Date.now() / 1000),
  toleranceS = DEFAULT_TOLERANCE_S,
): boolean {
  if (!header) return false;
  const parts = new Map<string, string[]>();
  for (const item of header.split(',')) {
    const i = item.indexOf('=');
    if (i <= 0) continue;
    const k = item.slice(0, i).trim();
    parts.set(k, [...(parts.get(k) ?? []), item.slice(i + 1).trim()]);
  }
  const t = Number(parts.get('t')?.[0]);
  if (!Number.isInteger(t) || Math.abs(nowS - t) > toleranceS) return false;
  const expected = Buffer.from(createHmac('sha256', secret).update(`${t}.${body}`).digest('hex'));
  return (parts.get('v1') ?? []).some((v) => {
    const got = Buffer.from(v);
    return got.length === expected.length && timingSafeEqual(got, expected);
  });
}

export interface DeliveryResult {
  readonly ok: boolean;
  /** HTTP status, or null when no response arrived. */
  readonly status: number | null;
  readonly error: string | null;
}

export interface WebhookRequest {
  readonly url: string;
  readonly body: string;
  readonly secret: string;
  readonly eventId: string;
  readonly attempt: number;
  readonly timeoutMs: number;
  readonly nowS: number;
}

export async function postWebhook(r: WebhookRequest): Promise<DeliveryResult> {
  try {
    const res = await fetch(r.url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json; charset=utf-8',
        'user-agent': 'usage-limiter-alerts/1',
        [SIGNATURE_HEADER]: signatureHeader(r.secret, r.nowS, r.body),
        [EVENT_ID_HEADER]: r.eventId,
        'idempotency-key': r.eventId,
        [ATTEMPT_HEADER]: String(r.attempt),
      },
      body: r.body,
      redirect: 'manual',
      signal: AbortSignal.timeout(r.timeoutMs),
    });
    // Drain the body so the connection can be reused; its content does not matter.
    await res.arrayBuffer().catch(() => undefined);
    const ok = res.status >= 200 && res.status < 300;
    return { ok, status: res.status, error: ok ? null : `HTTP ${res.status}` };
  } catch (err) {
    const e = err as Error & { cause?: { code?: string } };
    return { ok: false, status: null, error: e.cause?.code ?? e.name ?? e.message };
  }
}

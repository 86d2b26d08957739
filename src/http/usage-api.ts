// GET /v1/usage: the calling tenant's own usage. A tenant can only ever see itself, because the tenant is
// never taken from the request as such:
// - Directly (no Envoy), the caller presents its API key (x-api-key, or Authorization: Bearer), resolved
//   through the same KeyCache and judged by the same rules as a Check (unknown, revoked, expired → 401,
//   suspended → 403).
// - Behind Envoy, ext_authz has already authenticated the request and set x-tenant-id (Envoy strips any
//   copy the client sent, and removes the key header). The header is trusted only when
//   USAGE_API_TRUST_TENANT_HEADER=true, which is safe only if nothing but Envoy can reach the HTTP port.
import { randomUUID } from 'node:crypto';
import type http from 'node:http';
import { hashApiKey } from '../core/api-key.js';
import { planCheck } from '../core/decide.js';
import { MESSAGES, OUTCOMES, type DenyCode } from '../core/outcomes.js';
import { periodFor } from '../core/period.js';
import { extractKey } from '../core/request.js';
import type { ResolvedKey, Tenant, Tier } from '../core/types.js';
import type { KeyCache } from '../directory/key-cache.js';
import type { Logger } from '../logger.js';
import type { CounterStore, PeriodUsage } from '../store/types.js';
import { within } from '../timers.js';

export const USAGE_PATH = '/v1/usage';
export const TENANT_HEADER = 'x-tenant-id';

export interface UsageApiDeps {
  readonly cache: KeyCache;
  readonly store: CounterStore;
  readonly now: () => number;
  /** Bound on each Postgres or Redis call of one request. */
  readonly timeoutMs: number;
  readonly trustTenantHeader: boolean;
  readonly loadTenant: (tenantId: string) => Promise<{ tenant: Tenant; tier: Tier } | null>;
  readonly logger: Logger;
}

export interface UsageReport {
  readonly tenantId: string;
  readonly tier: string;
  readonly period: { readonly id: string; readonly start: string; readonly end: string };
  readonly limits: {
    readonly readRate: { readonly requests: number; readonly perSeconds: number } | null;
    readonly monthlyQuota: { readonly total: number | null; readonly endpoints: Readonly<Record<string, number>> };
  };
  readonly used: { readonly total: number; readonly endpoints: Readonly<Record<string, number>> };
  readonly remaining: { readonly total: number | null; readonly endpoints: Readonly<Record<string, number>> };
  readonly reset: { readonly at: string; readonly epochSeconds: number };
}

/** Pure: what the tenant sees, from its tier, the period and the stored counters. */
export function usageReport(tenant: Tenant, tier: Tier, nowMs: number, usage: PeriodUsage): UsageReport {
  const period = periodFor(nowMs, tenant.billingAnchorMs);
  const quota = tier.monthlyQuota;
  const usedEndpoints: Record<string, number> = {};
  const remaining: Record<string, number> = {};
  for (const [endpoint, limit] of Object.entries(quota.endpoints)) {
    const used = usage.endpoints[endpoint] ?? 0;
    usedEndpoints[endpoint] = used;
    remaining[endpoint] = Math.max(0, limit - used);
  }
  // Usage on endpoints the tier no longer meters (a tier change mid-period) is still shown.
  for (const [endpoint, used] of Object.entries(usage.endpoints)) usedEndpoints[endpoint] ??= used;
  const end = new Date(period.endMs);
  return {
    tenantId: tenant.id,
    tier: tier.id,
    period: { id: period.label, start: new Date(period.startMs).toISOString(), end: end.toISOString() },
    limits: {
      readRate: tier.readRateLimit ? { requests: tier.readRateLimit.requests, perSeconds: tier.readRateLimit.perSeconds } : null,
      monthlyQuota: { total: quota.total, endpoints: { ...quota.endpoints } },
    },
    used: { total: usage.total, endpoints: usedEndpoints },
    remaining: { total: quota.total === null ? null : Math.max(0, quota.total - usage.total), endpoints: remaining },
    reset: { at: end.toISOString(), epochSeconds: Math.ceil(period.endMs / 1000) },
  };
}

function send(res: http.ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    // Per-tenant data must never sit in a shared cache.
    'cache-control': 'private, no-store',
    ...extra,
  });
  res.end(text);
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return within(p, ms, () => {
    throw new Error(`no answer within ${ms} ms`);
  });
}

function headerMap(req: http.IncomingMessage): Map<string, string> {
  const m = new Map<string, string>();
  for (const [k, v] of Object.entries(req.headers)) {
    if (typeof v === 'string') m.set(k, v);
    else if (Array.isArray(v) && v[0] !== undefined) m.set(k, v[0]);
  }
  return m;
}

/** The route for http/server.ts: answers GET /v1/usage, returns false for any other path. */
export function usageRoutes(deps: UsageApiDeps): (req: http.IncomingMessage, res: http.ServerResponse) => Promise<boolean> {
  return async (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== USAGE_PATH && path !== `${USAGE_PATH}/`) return false;
    const headers = headerMap(req);
    const requestId = headers.get('x-request-id') ?? randomUUID();
    const denyWith = (code: DenyCode | 'NOT_FOUND' | 'METHOD_NOT_ALLOWED', message?: string) => {
      const status = code === 'NOT_FOUND' ? 404 : code === 'METHOD_NOT_ALLOWED' ? 405 : OUTCOMES[code].httpStatus;
      const text =
        message ?? (code === 'NOT_FOUND' ? 'Tenant not found.' : code === 'METHOD_NOT_ALLOWED' ? 'Use GET.' : MESSAGES[code as Exclude<DenyCode, 'USAGE_LIMIT_EXCEEDED'>]);
      const extra: Record<string, string> =
        code === 'USAGE_CHECK_UNAVAILABLE' ? { 'retry-after': '1' } : code === 'METHOD_NOT_ALLOWED' ? { allow: 'GET, HEAD' } : {};
      send(res, status, { code, message: text, requestId }, extra);
      return true;
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return denyWith('METHOD_NOT_ALLOWED');

    let tenant: Tenant;
    let tier: Tier;
    const claimed = headers.get(TENANT_HEADER);
    if (deps.trustTenantHeader && claimed !== undefined && claimed !== '') {
      let found: { tenant: Tenant; tier: Tier } | null;
      try {
        found = await withTimeout(deps.loadTenant(claimed), deps.timeoutMs);
      } catch (err) {
        deps.logger.error({ event: 'usage_api.dependency_failed', code: 'DatabaseError', err: String(err) }, 'tenant lookup failed');
        return denyWith('USAGE_CHECK_UNAVAILABLE');
      }
      if (found === null) return denyWith('NOT_FOUND');
      if (found.tenant.status !== 'active') return denyWith('TENANT_SUSPENDED');
      ({ tenant, tier } = found);
    } else {
      const presented = extractKey(headers);
      let key: ResolvedKey | null = null;
      if (presented.kind === 'present') {
        const hash = hashApiKey(presented.key);
        const cached = deps.cache.peek(hash);
        try {
          key = cached !== undefined ? cached : await withTimeout(deps.cache.load(hash), deps.timeoutMs);
        } catch (err) {
          deps.logger.error({ event: 'usage_api.dependency_failed', code: 'DatabaseError', err: String(err) }, 'key lookup failed');
          return denyWith('USAGE_CHECK_UNAVAILABLE');
        }
      }
      // The Check's own rules decide whether this key may act at all (missing, unknown, revoked, expired,
      // suspended), so the two doors cannot disagree.
      const plan = planCheck({ method: 'GET', path: USAGE_PATH, key: presented, requestId }, key, deps.now());
      if (plan.kind === 'decided' && plan.decision.outcome === 'deny') return denyWith(plan.decision.code, plan.decision.message);
      if (key === null) return denyWith('INVALID_API_KEY');
      ({ tenant, tier } = key);
    }

    const nowMs = deps.now();
    let usage: PeriodUsage;
    try {
      usage = await withTimeout(deps.store.usage(tenant.id, periodFor(nowMs, tenant.billingAnchorMs).label), deps.timeoutMs);
    } catch (err) {
      deps.logger.error(
        { event: 'usage_api.dependency_failed', code: 'CacheError', tenantId: tenant.id, err: String(err) },
        'usage read failed',
      );
      return denyWith('USAGE_CHECK_UNAVAILABLE');
    }
    const report = usageReport(tenant, tier, nowMs, usage);
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'private, no-store' });
      res.end();
      return true;
    }
    send(res, 200, report);
    return true;
  };
}

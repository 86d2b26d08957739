// The durable side of alerting: alert_outbox in Postgres. One row per alert and webhook target, written
// before any delivery attempt (ON CONFLICT DO NOTHING on the deterministic dedupe key, so re-enqueueing is
// harmless), and claimed for delivery with FOR UPDATE SKIP LOCKED plus a lease, so two replicas never send
// the same row at once and a replica that dies mid-send leaves it to another after the lease.
import { createHash } from 'node:crypto';
import { and, eq, inArray, isNotNull, isNull, lte, sql } from 'drizzle-orm';
import { withDeadlines, type DatabaseHandle } from '../db/client.js';
import { alertOutbox, tenants } from '../db/schema.js';
import type { Alert, AlertPayload, AlertTarget } from './types.js';

export interface OutboxRow {
  readonly id: number;
  readonly dedupeKey: string;
  readonly tenantId: string;
  readonly target: AlertTarget;
  readonly payload: AlertPayload;
  /** Attempts including this one. */
  readonly attempts: number;
  /** Where to POST: ALERT_WEBHOOK_URL for `global`, the tenant's alert_webhook_url for `tenant` (null if removed). */
  readonly url: string | null;
}

export interface Outbox {
  /** Writes one row per alert and enabled target; existing dedupe keys are left alone. */
  enqueue(alerts: readonly Alert[]): Promise<number>;
  /** Claims up to `limit` due rows for `leaseMs` (they are not due again before the lease ends). */
  claim(limit: number, leaseMs: number): Promise<OutboxRow[]>;
  markDelivered(id: number): Promise<void>;
  markFailed(id: number, retryInMs: number, error: string): Promise<void>;
  /** No more attempts: the row stays (for the runbook) but is never due again. */
  giveUp(id: number, error: string): Promise<void>;
  /** Undelivered rows that will still be attempted. */
  backlog(): Promise<number>;
}

export interface OutboxOptions {
  /** ALERT_WEBHOOK_URL, or undefined for no global target. */
  readonly globalUrl: string | undefined;
  /** Whether tenants' own alert_webhook_url receive alerts. */
  readonly tenantTargets: boolean;
}

/** The event id receivers de-duplicate on: the same for every target and attempt of one alert. */
export function eventId(alertKey: string): string {
  return `evt_${createHash('sha256').update(alertKey).digest('hex').slice(0, 32)}`;
}

export function toPayload(a: Alert): AlertPayload {
  return { id: eventId(a.key), type: a.kind, createdAt: a.occurredAt, tenantId: a.tenantId, data: a.data };
}

const INFINITY = sql`'infinity'::timestamptz`;

export function createOutbox(handle: DatabaseHandle, opts: OutboxOptions): Outbox {
  const { db } = handle;

  async function tenantsWithUrls(ids: readonly string[]): Promise<Map<string, string>> {
    const unique = [...new Set(ids)];
    if (unique.length === 0) return new Map();
    const rows = await db
      .select({ id: tenants.id, url: tenants.alertWebhookUrl })
      .from(tenants)
      .where(and(inArray(tenants.id, unique), isNotNull(tenants.alertWebhookUrl)));
    return new Map(rows.flatMap((r) => (r.url ? [[r.id, r.url] as const] : [])));
  }

  const outbox: Outbox = {
    async enqueue(alerts) {
      if (alerts.length === 0) return 0;
      const withUrl = opts.tenantTargets ? await tenantsWithUrls(alerts.map((a) => a.tenantId)) : new Map<string, string>();
      const rows: (typeof alertOutbox.$inferInsert)[] = [];
      for (const a of alerts) {
        const payload = toPayload(a) as unknown as Record<string, unknown>;
        const base = { tenantId: a.tenantId, kind: a.kind, payload };
        if (opts.globalUrl !== undefined) rows.push({ ...base, target: 'global', dedupeKey: `${a.key}:global` });
        if (withUrl.has(a.tenantId)) rows.push({ ...base, target: 'tenant', dedupeKey: `${a.key}:tenant` });
      }
      if (rows.length === 0) return 0;
      const inserted = await db
        .insert(alertOutbox)
        .values(rows)
        .onConflictDoNothing({ target: alertOutbox.dedupeKey })
        .returning({ id: alertOutbox.id });
      return inserted.length;
    },

    async claim(limit, leaseMs) {
      const due = db
        .select({ id: alertOutbox.id })
        .from(alertOutbox)
        .where(and(isNull(alertOutbox.deliveredAt), lte(alertOutbox.nextAttemptAt, sql`now()`)))
        .orderBy(alertOutbox.nextAttemptAt)
        .limit(limit)
        .for('update', { skipLocked: true });
      const claimed = await db
        .update(alertOutbox)
        .set({
          attempts: sql`${alertOutbox.attempts} + 1`,
          nextAttemptAt: sql`now() + ${Math.max(1, Math.round(leaseMs))} * interval '1 millisecond'`,
        })
        .where(inArray(alertOutbox.id, due))
        .returning();
      const urls = await tenantsWithUrls(claimed.filter((r) => r.target === 'tenant').map((r) => r.tenantId));
      return claimed
        .sort((a, b) => a.id - b.id)
        .map((r) => ({
          id: r.id,
          dedupeKey: r.dedupeKey,
          tenantId: r.tenantId,
          target: r.target,
          payload: r.payload as unknown as AlertPayload,
          attempts: r.attempts,
          url: r.target === 'global' ? (opts.globalUrl ?? null) : (urls.get(r.tenantId) ?? null),
        }));
    },

    async markDelivered(id) {
      await db.update(alertOutbox).set({ deliveredAt: sql`now()`, lastError: null }).where(eq(alertOutbox.id, id));
    },

    async markFailed(id, retryInMs, error) {
      await db
        .update(alertOutbox)
        .set({
          nextAttemptAt: sql`now() + ${Math.max(1, Math.round(retryInMs))} * interval '1 millisecond'`,
          lastError: error.slice(0, 1000),
        })
        .where(eq(alertOutbox.id, id));
    },

    async giveUp(id, error) {
      await db
        .update(alertOutbox)
        .set({ nextAttemptAt: INFINITY, lastError: error.slice(0, 1000) })
        .where(eq(alertOutbox.id, id));
    },

    async backlog() {
      const rows = await db
        .select({ n: sql<number>`count(*)::int` })
        .from(alertOutbox)
        .where(and(isNull(alertOutbox.deliveredAt), sql`${alertOutbox.nextAttemptAt} < ${INFINITY}`));
      return Number(rows[0]?.n ?? 0);
    },
  };
  // The queue writes and the dispatcher claims one round at a time: a call the driver never settles would
  // stop alerting for good. Past the deadline the call fails and is retried, which is safe: a re-written
  // batch conflicts on its dedupe keys, and a claimed row whose round was given up is due again once its
  // lease ends.
  return withDeadlines(outbox, ['enqueue', 'claim', 'markDelivered', 'markFailed', 'giveUp', 'backlog'], handle.deadlineMs, 'alert outbox');
}

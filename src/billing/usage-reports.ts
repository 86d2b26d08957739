// Durable usage-reporting progress (usage_reports). Two writes make a batch exactly-once together with
// Stripe's identifier de-duplication:
//   startBatch   records the batch (identifier, units) BEFORE it is sent, only if the row is still where the
//                reporter read it (no batch in flight, same reported_units): a compare-and-set, so two
//                reporters can never both start a batch for one row;
//   confirmBatch moves it into reported_units AFTER Stripe accepted it (or said it already had it), only if
//                that very batch is still pending: confirming twice adds nothing.
// A crash between the two leaves the batch pending, and whoever comes next re-sends the same identifier.
import { and, eq, isNotNull, sql } from 'drizzle-orm';
import type { AppDatabase } from '../db/client.js';
import { tenants, usageReports } from '../db/schema.js';

export interface ReportRow {
  readonly tenantId: string;
  readonly endpoint: string;
  readonly period: string;
  readonly reportedUnits: number;
  readonly pending: { readonly identifier: string; readonly units: number; readonly sinceMs: number } | null;
}

export interface BillableTenant {
  readonly id: string;
  readonly stripeCustomerId: string;
  readonly billingAnchorMs: number | null;
}

function toRow(r: typeof usageReports.$inferSelect): ReportRow {
  return {
    tenantId: r.tenantId,
    endpoint: r.endpoint,
    period: r.period,
    reportedUnits: Number(r.reportedUnits),
    pending:
      r.pendingIdentifier !== null && r.pendingUnits !== null
        ? { identifier: r.pendingIdentifier, units: Number(r.pendingUnits), sinceMs: r.pendingSince?.getTime() ?? 0 }
        : null,
  };
}

/** Tenants with a Stripe customer: the only ones whose usage is reported. */
export async function billableTenants(db: AppDatabase): Promise<BillableTenant[]> {
  const rows = await db
    .select({ id: tenants.id, customer: tenants.stripeCustomerId, anchor: tenants.billingAnchor })
    .from(tenants)
    .where(isNotNull(tenants.stripeCustomerId));
  return rows.flatMap((r) =>
    r.customer === null ? [] : [{ id: r.id, stripeCustomerId: r.customer, billingAnchorMs: r.anchor?.getTime() ?? null }],
  );
}

/** The customer of one tenant (a pending batch of a tenant that is no longer listed as billable). */
export async function customerOf(db: AppDatabase, tenantId: string): Promise<string | null> {
  const rows = await db.select({ customer: tenants.stripeCustomerId }).from(tenants).where(eq(tenants.id, tenantId));
  return rows[0]?.customer ?? null;
}

/** Every batch in flight, whatever its tenant or period: those are re-sent first. */
export async function pendingRows(db: AppDatabase): Promise<ReportRow[]> {
  return (await db.select().from(usageReports).where(isNotNull(usageReports.pendingIdentifier))).map(toRow);
}

export async function rowsFor(db: AppDatabase, tenantId: string, period: string): Promise<ReportRow[]> {
  const rows = await db
    .select()
    .from(usageReports)
    .where(and(eq(usageReports.tenantId, tenantId), eq(usageReports.period, period)));
  return rows.map(toRow);
}

export interface NewBatch {
  readonly tenantId: string;
  readonly endpoint: string;
  readonly period: string;
  /** reported_units as read: the batch starts only if the row still says so. */
  readonly fromUnits: number;
  readonly units: number;
  readonly identifier: string;
  readonly atMs: number;
}

/** Records a batch before it is sent. False: the row moved on (another reporter); nothing was written. */
export async function startBatch(db: AppDatabase, b: NewBatch): Promise<boolean> {
  const pending = { pendingIdentifier: b.identifier, pendingUnits: b.units, pendingSince: new Date(b.atMs) };
  const unchanged = sql`${usageReports.pendingIdentifier} IS NULL AND ${usageReports.reportedUnits} = ${b.fromUnits}`;
  if (b.fromUnits === 0) {
    // The first batch of a row: the row may not exist yet.
    const rows = await db
      .insert(usageReports)
      .values({ tenantId: b.tenantId, endpoint: b.endpoint, period: b.period, reportedUnits: 0, ...pending })
      .onConflictDoUpdate({
        target: [usageReports.tenantId, usageReports.endpoint, usageReports.period],
        set: { ...pending, updatedAt: sql`now()` },
        setWhere: unchanged,
      })
      .returning({ tenantId: usageReports.tenantId });
    return rows.length === 1;
  }
  const rows = await db
    .update(usageReports)
    .set({ ...pending, updatedAt: sql`now()` })
    .where(
      and(
        eq(usageReports.tenantId, b.tenantId),
        eq(usageReports.endpoint, b.endpoint),
        eq(usageReports.period, b.period),
        unchanged,
      ),
    )
    .returning({ tenantId: usageReports.tenantId });
  return rows.length === 1;
}

/** Marks a sent batch reported. False: it was confirmed already (by another reporter) or never started. */
export async function confirmBatch(
  db: AppDatabase,
  key: { tenantId: string; endpoint: string; period: string; identifier: string },
): Promise<boolean> {
  const rows = await db
    .update(usageReports)
    .set({
      reportedUnits: sql`${usageReports.reportedUnits} + ${usageReports.pendingUnits}`,
      pendingIdentifier: null,
      pendingUnits: null,
      pendingSince: null,
      updatedAt: sql`now()`,
    })
    .where(
      and(
        eq(usageReports.tenantId, key.tenantId),
        eq(usageReports.endpoint, key.endpoint),
        eq(usageReports.period, key.period),
        eq(usageReports.pendingIdentifier, key.identifier),
      ),
    )
    .returning({ reported: usageReports.reportedUnits });
  return rows.length === 1;
}

/**
 * What Postgres knows was (or is being) reported for a tenant's period, per endpoint: reported units plus
 * the batch in flight, which will be delivered (it is re-sent until it is).
 */
export async function reportedUsage(db: AppDatabase, tenantId: string, period: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const r of await rowsFor(db, tenantId, period)) out.set(r.endpoint, r.reportedUnits + (r.pending?.units ?? 0));
  return out;
}

/**
 * After a rebuild found Stripe holding more for an endpoint than Postgres recorded (Postgres lost progress),
 * raises reported_units to Stripe's figure, so those units are not reported again. Only when no batch is in
 * flight (its fate decides the figure) and only upwards.
 */
export async function raiseReported(
  db: AppDatabase,
  key: { tenantId: string; endpoint: string; period: string },
  units: number,
): Promise<boolean> {
  const rows = await db
    .insert(usageReports)
    .values({ ...key, reportedUnits: units })
    .onConflictDoUpdate({
      target: [usageReports.tenantId, usageReports.endpoint, usageReports.period],
      set: { reportedUnits: units, updatedAt: sql`now()` },
      setWhere: sql`${usageReports.pendingIdentifier} IS NULL AND ${usageReports.reportedUnits} < ${units}`,
    })
    .returning({ tenantId: usageReports.tenantId });
  return rows.length === 1;
}

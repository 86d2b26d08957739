// Backlog gauges read from Postgres at scrape time (bounded by the metrics module's timeout).
import { isNotNull, sql } from 'drizzle-orm';
import type { DatabaseHandle } from '../db/client.js';
import { usageReports } from '../db/schema.js';

/** Usage report batches in flight to Stripe: rows whose pending batch has not been confirmed yet. */
export function billingBacklog(handle: DatabaseHandle): () => Promise<number> {
  return async () => {
    const rows = await handle.db
      .select({ n: sql<number>`count(*)::int` })
      .from(usageReports)
      .where(isNotNull(usageReports.pendingIdentifier));
    return Number(rows[0]?.n ?? 0);
  };
}

// Applies one verified Stripe subscription event in one transaction: the event id is recorded in
// stripe_events together with the change, so a replayed delivery (Stripe retries, at-least-once) finds it
// and changes nothing, and a crash before commit leaves nothing recorded for Stripe's retry to skip. The
// tenant row is locked first, so two deliveries for one tenant apply one after the other. Stripe does not
// promise order, so a late event is recorded but not applied when the tenant has a newer event of the same
// subscription, or a newer one that put it on another subscription. The ending of another subscription does
// not make it stale: when a customer moves to a new subscription and cancels the old one, the new one's
// `created` may arrive (retried) after the old one's `deleted`, and must still apply. Tier and period changes
// bump directory_version through the existing triggers, so every replica enforces them within
// DIRECTORY_POLL_MS.
import { and, eq, gt, isNull, ne, or, sql } from 'drizzle-orm';
import type { AppDatabase } from '../db/client.js';
import { stripeEvents, tenants, tiers } from '../db/schema.js';
import { decideSync, readSubscription } from './subscription-sync.js';

export interface VerifiedEvent {
  readonly id: string;
  readonly type: string;
  /** event.created, epoch s. */
  readonly createdS: number;
  readonly object: unknown;
}

export interface SyncOptions {
  /** STRIPE_CANCELED_TIER; undefined: `free` when such a tier exists, else the tier is left as it is. */
  readonly canceledTier: string | undefined;
}

export type SyncOutcome = 'applied' | 'unchanged' | 'duplicate' | 'stale' | 'ignored';

export interface SyncResult {
  readonly outcome: SyncOutcome;
  readonly tenantId?: string;
  readonly tierId?: string;
  readonly reason?: string;
}

export async function applySubscriptionEvent(db: AppDatabase, event: VerifiedEvent, opts: SyncOptions): Promise<SyncResult> {
  const view = readSubscription(event.object);
  if (view === null) return { outcome: 'ignored', reason: 'the event carries no subscription' };
  const createdAt = new Date(event.createdS * 1000);

  return db.transaction(async (tx) => {
    const [tenant] = await tx
      .select({ id: tenants.id, tierId: tenants.tierId, subscriptionId: tenants.stripeSubscriptionId, anchor: tenants.billingAnchor })
      .from(tenants)
      .where(eq(tenants.stripeCustomerId, view.customerId))
      .for('update');

    const recorded = await tx
      .insert(stripeEvents)
      .values({ id: event.id, type: event.type, stripeCreatedAt: createdAt, tenantId: tenant?.id ?? null, subscriptionId: view.id })
      .onConflictDoNothing({ target: stripeEvents.id })
      .returning({ id: stripeEvents.id });
    if (recorded.length === 0) return { outcome: 'duplicate', tenantId: tenant?.id };
    if (tenant === undefined) return { outcome: 'ignored', reason: 'no tenant has this Stripe customer' };

    const [newer] = await tx
      .select({ id: stripeEvents.id })
      .from(stripeEvents)
      .where(
        and(
          eq(stripeEvents.tenantId, tenant.id),
          ne(stripeEvents.id, event.id),
          gt(stripeEvents.stripeCreatedAt, createdAt),
          // Rows recorded before the subscription was (null) count as before: any newer event.
          or(isNull(stripeEvents.subscriptionId), eq(stripeEvents.subscriptionId, view.id), eq(stripeEvents.setsSubscription, true)),
        ),
      )
      .limit(1);
    if (newer !== undefined) {
      return { outcome: 'stale', tenantId: tenant.id, reason: 'a newer subscription event was already applied' };
    }

    const tierRows = await tx.select({ id: tiers.id, stripePrices: tiers.stripePrices }).from(tiers);
    const decision = decideSync(
      event.type,
      view,
      tierRows.map((t) => ({ id: t.id, stripePrices: Array.isArray(t.stripePrices) ? t.stripePrices.map(String) : [] })),
    );

    let next: { tierId: string; subscriptionId: string | null; anchor: Date | null };
    if (decision.kind === 'ignore') return { outcome: 'ignored', tenantId: tenant.id, reason: decision.reason };
    if (decision.kind === 'set') await tx.update(stripeEvents).set({ setsSubscription: true }).where(eq(stripeEvents.id, event.id));
    if (decision.kind === 'cancel') {
      // An old subscription ending after the tenant moved to a new one must not downgrade it.
      if (tenant.subscriptionId !== null && tenant.subscriptionId !== decision.subscriptionId) {
        return { outcome: 'ignored', tenantId: tenant.id, reason: 'not the tenant’s current subscription' };
      }
      const fallback = opts.canceledTier ?? 'free';
      const exists = tierRows.some((t) => t.id === fallback);
      next = { tierId: exists ? fallback : tenant.tierId, subscriptionId: null, anchor: null };
    } else {
      next = {
        tierId: decision.tierId,
        subscriptionId: decision.subscriptionId,
        anchor: decision.anchorMs === null ? tenant.anchor : new Date(decision.anchorMs),
      };
    }

    const same =
      next.tierId === tenant.tierId &&
      next.subscriptionId === tenant.subscriptionId &&
      (next.anchor?.getTime() ?? null) === (tenant.anchor?.getTime() ?? null);
    if (same) return { outcome: 'unchanged', tenantId: tenant.id, tierId: next.tierId };
    await tx
      .update(tenants)
      .set({ tierId: next.tierId, stripeSubscriptionId: next.subscriptionId, billingAnchor: next.anchor, updatedAt: sql`now()` })
      .where(eq(tenants.id, tenant.id));
    return { outcome: 'applied', tenantId: tenant.id, tierId: next.tierId };
  });
}

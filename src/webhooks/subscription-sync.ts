// Stripe subscription events → which tier a tenant is on and when its billing period starts. Reading the
// subscription and deciding are pure (they take the event's object as Stripe sent it, in whatever API
// version the webhook endpoint uses); applying the decision is one transaction in apply-subscription.ts.

/** A subscription as far as tier sync cares, read from any API version's JSON. */
export interface SubscriptionView {
  readonly id: string;
  readonly customerId: string;
  readonly status: string;
  readonly items: readonly SubscriptionPrice[];
  /**
   * Start of the current billing period (epoch s): on the subscription item in newer API versions
   * (2025-03-31 and later), on the subscription itself in older ones. Null when neither says.
   */
  readonly currentPeriodStartS: number | null;
  /**
   * The subscription's `billing_cycle_anchor` (epoch s): the day of month (and time) every period starts on.
   * A period's start is not: from an anchor on the 31st, February's period starts on the 28th, and stepping
   * months from there would start every later period on the 28th while Stripe goes back to the 31st.
   */
  readonly billingCycleAnchorS: number | null;
}

export interface SubscriptionPrice {
  readonly priceId: string;
  readonly lookupKey: string | null;
  /** `usage_limiter_tier` from the price's metadata, else from its product's (when expanded). */
  readonly metadataTier: string | null;
}

export interface TierPrices {
  readonly id: string;
  readonly stripePrices: readonly string[];
}

export type SyncDecision =
  | { readonly kind: 'set'; readonly tierId: string; readonly subscriptionId: string; readonly anchorMs: number | null }
  | { readonly kind: 'cancel'; readonly subscriptionId: string }
  | { readonly kind: 'ignore'; readonly reason: string };

export const SUBSCRIPTION_EVENTS = [
  'customer.subscription.created',
  'customer.subscription.updated',
  'customer.subscription.deleted',
] as const;

export const METADATA_TIER_KEY = 'usage_limiter_tier';

/** Statuses whose subscription grants its tier; past_due keeps it while Stripe retries the payment. */
const GRANTING = new Set(['active', 'trialing', 'past_due']);
/** Statuses that end it. `incomplete` and `paused` change nothing until Stripe says more. */
const ENDED = new Set(['canceled', 'incomplete_expired', 'unpaid']);

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | null => (typeof v === 'string' && v !== '' ? v : null);
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

function metadataTier(o: unknown): string | null {
  return isObject(o) && isObject(o.metadata) ? str(o.metadata[METADATA_TIER_KEY]) : null;
}

/** Reads the parts of a Stripe subscription that matter; null when it is not one. */
export function readSubscription(object: unknown): SubscriptionView | null {
  if (!isObject(object) || object.object !== 'subscription') return null;
  const id = str(object.id);
  const customer = str(object.customer) ?? (isObject(object.customer) ? str(object.customer.id) : null);
  const status = str(object.status);
  if (id === null || customer === null || status === null) return null;
  const data = isObject(object.items) && Array.isArray(object.items.data) ? object.items.data : [];
  const items: SubscriptionPrice[] = [];
  let itemStart: number | null = null;
  for (const item of data) {
    if (!isObject(item) || !isObject(item.price)) continue;
    const price = item.price;
    const priceId = str(price.id);
    if (priceId === null) continue;
    items.push({
      priceId,
      lookupKey: str(price.lookup_key),
      metadataTier: metadataTier(price) ?? metadataTier(price.product),
    });
    itemStart ??= num(item.current_period_start);
  }
  return {
    id,
    customerId: customer,
    status,
    items,
    currentPeriodStartS: itemStart ?? num(object.current_period_start),
    billingCycleAnchorS: num(object.billing_cycle_anchor),
  };
}

/**
 * The tier of a subscription: the first item whose price's lookup key, else price id, is listed in a tier's
 * `stripePrices`; else whose price (or product) metadata `usage_limiter_tier` names an existing tier.
 * Tiers are searched by id, so a price listed twice (which `apply` refuses) still maps the same way every time.
 */
export function tierForSubscription(view: SubscriptionView, tiers: readonly TierPrices[]): string | null {
  const sorted = [...tiers].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  for (const item of view.items) {
    for (const candidate of [item.lookupKey, item.priceId]) {
      if (candidate === null) continue;
      const tier = sorted.find((t) => t.stripePrices.includes(candidate));
      if (tier) return tier.id;
    }
    if (item.metadataTier !== null && sorted.some((t) => t.id === item.metadataTier)) return item.metadataTier;
  }
  return null;
}

export function decideSync(eventType: string, view: SubscriptionView, tiers: readonly TierPrices[]): SyncDecision {
  if (eventType === 'customer.subscription.deleted' || ENDED.has(view.status)) {
    return { kind: 'cancel', subscriptionId: view.id };
  }
  if (!GRANTING.has(view.status)) return { kind: 'ignore', reason: `subscription status ${view.status}` };
  const tierId = tierForSubscription(view, tiers);
  if (tierId === null) return { kind: 'ignore', reason: 'no tier maps any of its prices' };
  // The anchor when Stripe sends it (it always does); a period's start only as the fallback.
  const anchorS = view.billingCycleAnchorS ?? view.currentPeriodStartS;
  return { kind: 'set', tierId, subscriptionId: view.id, anchorMs: anchorS === null ? null : anchorS * 1000 };
}

import { describe, expect, it } from 'vitest';
import { periodFor } from '../../src/core/period.js';
import { decideSync, readSubscription, tierForSubscription, type TierPrices } from '../../src/webhooks/subscription-sync.js';

const TIERS: TierPrices[] = [
  { id: 'free', stripePrices: [] },
  { id: 'pro', stripePrices: ['pro_monthly', 'price_1ProAnnual'] },
  { id: 'team', stripePrices: ['team_monthly'] },
];

function subscription(over: Record<string, unknown> = {}, price: Record<string, unknown> = {}, item: Record<string, unknown> = {}) {
  return {
    id: 'sub_1',
    object: 'subscription',
    customer: 'cus_1',
    status: 'active',
    items: {
      object: 'list',
      data: [{ id: 'si_1', object: 'subscription_item', current_period_start: 1_757_894_400, price: { id: 'price_X', lookup_key: null, metadata: {}, product: 'prod_1', ...price }, ...item }],
    },
    ...over,
  };
}

describe('readSubscription', () => {
  it('reads the period start from the item (newer API versions)', () => {
    expect(readSubscription(subscription())).toEqual({
      id: 'sub_1',
      customerId: 'cus_1',
      status: 'active',
      items: [{ priceId: 'price_X', lookupKey: null, metadataTier: null }],
      currentPeriodStartS: 1_757_894_400,
      billingCycleAnchorS: null,
    });
  });

  it('reads it from the subscription in older ones, and an expanded customer and product', () => {
    const old = subscription(
      { customer: { id: 'cus_2', object: 'customer' }, current_period_start: 1_756_684_800 },
      { product: { id: 'prod_1', metadata: { usage_limiter_tier: 'team' } } },
      { current_period_start: undefined },
    );
    expect(readSubscription(old)).toMatchObject({
      customerId: 'cus_2',
      items: [{ metadataTier: 'team' }],
      currentPeriodStartS: 1_756_684_800,
    });
  });

  it('is null for anything that is not a subscription', () => {
    expect(readSubscription({ object: 'invoice' })).toBeNull();
    expect(readSubscription(null)).toBeNull();
    expect(readSubscription({ object: 'subscription', id: 'sub_1' })).toBeNull();
  });
});

describe('tierForSubscription', () => {
  const view = (price: Record<string, unknown>) => readSubscription(subscription({}, price))!;

  it('maps the lookup key first, then the price id, then metadata naming an existing tier', () => {
    expect(tierForSubscription(view({ lookup_key: 'pro_monthly' }), TIERS)).toBe('pro');
    expect(tierForSubscription(view({ id: 'price_1ProAnnual' }), TIERS)).toBe('pro');
    expect(tierForSubscription(view({ lookup_key: 'team_monthly', id: 'price_1ProAnnual' }), TIERS)).toBe('team');
    expect(tierForSubscription(view({ metadata: { usage_limiter_tier: 'team' } }), TIERS)).toBe('team');
    expect(tierForSubscription(view({ metadata: { usage_limiter_tier: 'gold' } }), TIERS)).toBeNull();
    expect(tierForSubscription(view({}), TIERS)).toBeNull();
  });
});

describe('decideSync: the anchor', () => {
  it("anchors on the subscription's billing_cycle_anchor, not on the current period's start", () => {
    // Anchored on Jan 31: February's period started on the 28th, and March's starts on the 31st again.
    const jan31 = Date.UTC(2025, 0, 31, 9, 14, 37) / 1000;
    const feb28 = Date.UTC(2025, 1, 28, 9, 14, 37) / 1000;
    const view = readSubscription(subscription({ billing_cycle_anchor: jan31 }, { lookup_key: 'pro_monthly' }, { current_period_start: feb28 }))!;
    const d = decideSync('customer.subscription.updated', view, TIERS);
    expect(d).toMatchObject({ kind: 'set', anchorMs: jan31 * 1000 });
    const anchorMs = d.kind === 'set' ? d.anchorMs : null;
    expect(periodFor(Date.UTC(2025, 2, 15), anchorMs)).toMatchObject({ startMs: feb28 * 1000, endMs: Date.UTC(2025, 2, 31, 9, 14, 37) });
    expect(periodFor(Date.UTC(2025, 3, 2), anchorMs).startMs).toBe(Date.UTC(2025, 2, 31, 9, 14, 37));
  });
});

describe('decideSync', () => {
  const pro = readSubscription(subscription({}, { lookup_key: 'pro_monthly' }))!;

  it('sets the tier and anchors the period for a subscription that grants it', () => {
    for (const status of ['active', 'trialing', 'past_due']) {
      expect(decideSync('customer.subscription.updated', { ...pro, status }, TIERS)).toEqual({
        kind: 'set',
        tierId: 'pro',
        subscriptionId: 'sub_1',
        anchorMs: 1_757_894_400_000,
      });
    }
  });

  it('cancels on deletion and on ended statuses; waits on incomplete and paused', () => {
    expect(decideSync('customer.subscription.deleted', pro, TIERS)).toEqual({ kind: 'cancel', subscriptionId: 'sub_1' });
    for (const status of ['canceled', 'incomplete_expired', 'unpaid']) {
      expect(decideSync('customer.subscription.updated', { ...pro, status }, TIERS).kind).toBe('cancel');
    }
    for (const status of ['incomplete', 'paused']) {
      expect(decideSync('customer.subscription.created', { ...pro, status }, TIERS).kind).toBe('ignore');
    }
  });

  it('ignores a subscription none of whose prices map to a tier', () => {
    const unknown = readSubscription(subscription())!;
    expect(decideSync('customer.subscription.created', unknown, TIERS)).toEqual({ kind: 'ignore', reason: 'no tier maps any of its prices' });
  });
});

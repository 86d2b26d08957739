// POST /webhooks/stripe on a real HTTP port, signed the way Stripe signs, against real Postgres and Redis,
// with real gRPC Checks before and after: a bad signature changes nothing, a replay changes nothing twice,
// and an upgrade from free to pro lifts the tenant's limit on the next Check.
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import postgres from 'postgres';
import Stripe from 'stripe';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpStatus, responseHeaders, startHarness, type Harness } from '../helpers/harness.js';
import { createTestDatabase, hasPostgres, hasRedis, testPrefix, TEST_REDIS_URL, dropKeysWithPrefix } from '../helpers/services.js';

const services = (await hasRedis()) && (await hasPostgres());
const TENANTS = fileURLToPath(new URL('../fixtures/billing/tenants.yaml', import.meta.url));
const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
const SECRET = 'whsec_test_usage_limiter_webhooks';
const KEY = 'vk_test_HOOK_H_0001'; // hook_H, tier free (/verify 3 a month), customer cus_H
const NOW_S = () => Math.floor(Date.now() / 1000);

interface SubscriptionEventOptions {
  id: string;
  type?: string;
  created?: number;
  customer?: string;
  subscription?: string;
  status?: string;
  price?: { id: string; lookup_key?: string | null; metadata?: Record<string, string> };
  periodStartS?: number;
  /** Older API versions: the period on the subscription, not on its items. */
  periodOnSubscription?: boolean;
}

/** A Stripe event as Stripe sends it (the fields the server reads, in their places, plus a few around them). */
function subscriptionEvent(o: SubscriptionEventOptions): string {
  const periodStart = o.periodStartS ?? Date.UTC(2025, 8, 15) / 1000;
  const price = { object: 'price', lookup_key: null, metadata: {}, product: 'prod_X', ...(o.price ?? { id: 'price_1Pro', lookup_key: 'pro_monthly' }) };
  const item = {
    id: 'si_1',
    object: 'subscription_item',
    price,
    quantity: 1,
    ...(o.periodOnSubscription ? {} : { current_period_start: periodStart, current_period_end: periodStart + 30 * 86400 }),
  };
  return JSON.stringify({
    id: o.id,
    object: 'event',
    api_version: o.periodOnSubscription ? '2024-06-20' : '2025-03-31.basil',
    created: o.created ?? NOW_S(),
    livemode: false,
    type: o.type ?? 'customer.subscription.updated',
    data: {
      object: {
        id: o.subscription ?? 'sub_H1',
        object: 'subscription',
        customer: o.customer ?? 'cus_H',
        status: o.status ?? 'active',
        billing_cycle_anchor: periodStart,
        items: { object: 'list', data: [item] },
        ...(o.periodOnSubscription ? { current_period_start: periodStart, current_period_end: periodStart + 30 * 86400 } : {}),
      },
    },
  });
}

describe.skipIf(!services)('Stripe webhooks', () => {
  let h: Harness;
  let redis: Redis;
  let sql: postgres.Sql;
  let dropDb: () => Promise<void>;
  const prefix = testPrefix('hooks');

  const post = (body: string, headers: Record<string, string> = {}) =>
    fetch(`http://127.0.0.1:${h.app.httpPort}/webhooks/stripe`, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } });
  const signed = (body: string, secret = SECRET) =>
    post(body, { 'stripe-signature': Stripe.webhooks.generateTestHeaderString({ payload: body, secret }) });
  const tenant = async () =>
    (await sql<{ tier_id: string; stripe_subscription_id: string | null; billing_anchor: Date | null }[]>`
      select tier_id, stripe_subscription_id, billing_anchor from tenants where id = 'hook_H'`)[0]!;
  const verify = () => h.checkHttp({ key: KEY, method: 'POST', path: '/verify' });
  /** Tier changes reach the key cache within DIRECTORY_POLL_MS (or at once by NOTIFY): wait for the answer to change. */
  async function eventually(status: number): Promise<Awaited<ReturnType<typeof verify>>> {
    for (let i = 0; i < 60; i++) {
      const res = await verify();
      if (httpStatus(res) === status) return res;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no ${status} within 3 s`);
  }

  beforeAll(async () => {
    const db = await createTestDatabase('hooks');
    dropDb = db.drop;
    sql = postgres(db.url, { max: 1, onnotice: () => {} });
    redis = new Redis(TEST_REDIS_URL);
    h = await startHarness({
      env: {
        DATABASE_URL: db.url,
        REDIS_URL: TEST_REDIS_URL,
        REDIS_KEY_PREFIX: prefix,
        APPLY_ON_START: TENANTS,
        STRIPE_WEBHOOK_SECRET: SECRET,
      },
      nowMs: T0,
    });
  });

  afterAll(async () => {
    await h?.stop();
    await sql?.end();
    if (redis) {
      await dropKeysWithPrefix(redis, prefix);
      redis.disconnect();
    }
    await dropDb?.();
  });

  it('stores the Stripe prices of each tier from the tenants file', async () => {
    const rows = await sql<{ id: string; stripe_prices: string[] }[]>`select id, stripe_prices from tiers where id in ('free', 'pro') order by id`;
    expect(rows.map((r) => [r.id, r.stripe_prices])).toEqual([
      ['free', []],
      ['pro', ['pro_monthly', 'price_1ProAnnual']],
    ]);
  });

  it('the free tenant runs out of /verify calls', async () => {
    expect([httpStatus(await verify()), httpStatus(await verify()), httpStatus(await verify())]).toEqual([200, 200, 200]);
    expect(httpStatus(await verify())).toBe(429);
  });

  it('rejects a missing, a wrong or a foreign signature with 400, changing nothing and echoing nothing', async () => {
    const body = subscriptionEvent({ id: 'evt_bad_1' });
    const answers = [
      await post(body),
      await post(body, { 'stripe-signature': `t=${NOW_S()},v1=${'0'.repeat(64)}` }),
      await signed(body, 'whsec_someone_else'),
      await post(body.replace('pro_monthly', 'pro_monthIy'), {
        'stripe-signature': Stripe.webhooks.generateTestHeaderString({ payload: body, secret: SECRET }),
      }),
    ];
    expect(answers.map((r) => r.status)).toEqual([400, 400, 400, 400]);
    const bodies = await Promise.all(answers.map((r) => r.text()));
    expect(bodies.map((b) => (JSON.parse(b) as { code: string }).code)).toEqual([
      'MISSING_SIGNATURE',
      'INVALID_SIGNATURE',
      'INVALID_SIGNATURE',
      'INVALID_SIGNATURE',
    ]);
    for (const b of bodies) {
      expect(b).not.toContain(SECRET);
      expect(b).not.toContain('pro_monthly');
    }
    expect(await tenant()).toMatchObject({ tier_id: 'free', stripe_subscription_id: null });
    expect((await sql`select id from stripe_events`).length).toBe(0);
    expect(httpStatus(await verify())).toBe(429);
  });

  it('an upgrade to pro lifts the limit on the next Check and anchors the period on the subscription', async () => {
    const res = await signed(subscriptionEvent({ id: 'evt_upgrade', created: NOW_S() - 100 }));
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ received: true, outcome: 'applied' });
    expect(await tenant()).toEqual({
      tier_id: 'pro',
      stripe_subscription_id: 'sub_H1',
      billing_anchor: new Date(Date.UTC(2025, 8, 15)),
    });
    const allowed = await eventually(200);
    // The period now runs from the 15th to the 15th: its label is still 2025-09, its end is 15 October.
    expect(allowed.dynamic_metadata?.fields.period?.stringValue).toBe('2025-09');
    expect(responseHeaders(allowed)['X-RateLimit-Reset']).toBe(String(Date.UTC(2025, 9, 15) / 1000));
    expect(responseHeaders(allowed)['X-RateLimit-Remaining']).toBe(String(1000 - 4));
  });

  it('a replayed event is acknowledged and changes nothing a second time', async () => {
    // Someone moves the tenant back by hand; a replay of the upgrade must not undo that.
    await sql`update tenants set tier_id = 'free' where id = 'hook_H'`;
    await eventually(429);
    const replay = await signed(subscriptionEvent({ id: 'evt_upgrade', created: NOW_S() - 100 }));
    expect(replay.status).toBe(200);
    expect(await replay.json()).toEqual({ received: true, outcome: 'duplicate' });
    expect((await tenant()).tier_id).toBe('free');
    expect((await sql`select id from stripe_events where id = 'evt_upgrade'`).length).toBe(1);
    await sql`update tenants set tier_id = 'pro' where id = 'hook_H'`;
  });

  it('ignores a subscription event older than the last one applied (Stripe does not promise order)', async () => {
    const stale = await signed(
      subscriptionEvent({ id: 'evt_stale', created: NOW_S() - 500, price: { id: 'price_team', metadata: { usage_limiter_tier: 'team' } } }),
    );
    expect(await stale.json()).toEqual({ received: true, outcome: 'stale' });
    expect((await tenant()).tier_id).toBe('pro');
  });

  it('maps a price by its metadata, and reads the period from the subscription in older API versions', async () => {
    const res = await signed(
      subscriptionEvent({
        id: 'evt_team',
        created: NOW_S() - 50,
        price: { id: 'price_team', metadata: { usage_limiter_tier: 'team' } },
        periodStartS: Date.UTC(2025, 8, 3) / 1000,
        periodOnSubscription: true,
      }),
    );
    expect(await res.json()).toEqual({ received: true, outcome: 'applied' });
    expect(await tenant()).toMatchObject({ tier_id: 'team', billing_anchor: new Date(Date.UTC(2025, 8, 3)) });
    const annual = await signed(subscriptionEvent({ id: 'evt_annual', created: NOW_S() - 40, price: { id: 'price_1ProAnnual' } }));
    expect(await annual.json()).toEqual({ received: true, outcome: 'applied' });
    expect((await tenant()).tier_id).toBe('pro');
  });

  it('leaves the tier alone for an unmapped price, another subscription ending, unknown customers and other events', async () => {
    const outcomes = [];
    for (const body of [
      subscriptionEvent({ id: 'evt_unmapped', created: NOW_S() - 30, price: { id: 'price_unknown' } }),
      subscriptionEvent({ id: 'evt_old_sub', created: NOW_S() - 29, type: 'customer.subscription.deleted', subscription: 'sub_OLD', status: 'canceled' }),
      subscriptionEvent({ id: 'evt_stranger', customer: 'cus_nobody' }),
      subscriptionEvent({ id: 'evt_incomplete', created: NOW_S() - 28, status: 'incomplete', price: { id: 'p', metadata: { usage_limiter_tier: 'team' } } }),
      JSON.stringify({ id: 'evt_invoice', object: 'event', type: 'invoice.paid', created: NOW_S(), data: { object: { object: 'invoice' } } }),
    ]) {
      const res = await signed(body);
      expect(res.status).toBe(200);
      outcomes.push(((await res.json()) as { outcome: string }).outcome);
    }
    expect(outcomes).toEqual(['ignored', 'ignored', 'ignored', 'ignored', 'ignored']);
    expect((await tenant()).tier_id).toBe('pro');
  });

  it('moves a tenant whose subscription ended to free, back on the calendar month', async () => {
    const res = await signed(subscriptionEvent({ id: 'evt_deleted', created: NOW_S() - 10, type: 'customer.subscription.deleted', status: 'canceled' }));
    expect(await res.json()).toEqual({ received: true, outcome: 'applied' });
    expect(await tenant()).toEqual({ tier_id: 'free', stripe_subscription_id: null, billing_anchor: null });
    await eventually(429);
  });

  it("applies a new subscription's event that arrives after the old one's end, though older (a retried delivery)", async () => {
    // The customer started sub_NEW, then the old subscription ended; sub_NEW's first delivery had failed.
    const late = await signed(subscriptionEvent({ id: 'evt_new_sub_late', created: NOW_S() - 20, subscription: 'sub_NEW' }));
    expect(await late.json()).toEqual({ received: true, outcome: 'applied' });
    expect(await tenant()).toMatchObject({ tier_id: 'pro', stripe_subscription_id: 'sub_NEW' });
    // Still stale: a late event of the subscription that ended (its end is newer), and a late start of another
    // subscription than the one the tenant moved to since.
    const ended = await signed(subscriptionEvent({ id: 'evt_old_sub_late', created: NOW_S() - 15 }));
    expect(await ended.json()).toEqual({ received: true, outcome: 'stale' });
    const superseded = await signed(subscriptionEvent({ id: 'evt_other_sub_late', created: NOW_S() - 25, subscription: 'sub_OTHER' }));
    expect(await superseded.json()).toEqual({ received: true, outcome: 'stale' });
    expect((await tenant()).stripe_subscription_id).toBe('sub_NEW');
  });

  it('answers other methods with 405 and bodies over the limit with 413', async () => {
    const get = await fetch(`http://127.0.0.1:${h.app.httpPort}/webhooks/stripe`);
    expect(get.status).toBe(405);
    const big = await post('x'.repeat(600 * 1024), { 'stripe-signature': 't=1,v1=00' });
    expect(big.status).toBe(413);
    expect(((await big.json()) as { code: string }).code).toBe('PAYLOAD_TOO_LARGE');
  });
});

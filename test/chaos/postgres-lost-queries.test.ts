// Postgres dies (pg_ctl stop -m immediate) while background loops are writing to it, and comes back. The
// driver (postgres.js 3.4) leaves some of the queries issued just after the crash pending for good, even
// once the server is back; a half-open TCP connection does the same. The alert queue, the alert dispatcher
// and the key cache each run one round at a time, so one such promise used to stop them for the life of the
// process: alerts raised after the crash were never written, and the key cache stopped seeing revocations.
// This drives the real loops over the real driver through a real crash, and requires that every alert
// reaches the outbox and the cache keeps working, within the handle's client-side deadline.
import { randomUUID } from 'node:crypto';
import { sql } from 'drizzle-orm';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlertQueue } from '../../src/alerts/alert-queue.js';
import { createOutbox } from '../../src/alerts/outbox.js';
import { repeatedViolationsAlert, type Alert } from '../../src/alerts/types.js';
import { openDatabase, type DatabaseHandle } from '../../src/db/client.js';
import { runMigrations } from '../../src/db/migrate.js';
import { alertOutbox } from '../../src/db/schema.js';
import { KeyCache } from '../../src/directory/key-cache.js';
import { createPgDirectory } from '../../src/directory/pg-directory.js';
import { canRunPostgres, startOwnPostgres, type OwnPostgres } from '../helpers/own-services.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const logger = pino({ level: 'silent' });

describe.skipIf(!canRunPostgres())('background loops across a Postgres crash', () => {
  let pg: OwnPostgres;
  let handle: DatabaseHandle;

  beforeAll(async () => {
    pg = await startOwnPostgres();
    // Short server-side limits keep the client-side deadline (statement + connect + 1 s) at 3 s.
    handle = await openDatabase({ url: pg.url, statementTimeoutMs: 1_000, connectTimeoutSeconds: 1 });
    await runMigrations(handle);
  }, 60_000);

  afterAll(async () => {
    // (close waits its 5 s out when the driver still holds lost queries: porsager/postgres#1097.)
    await handle?.close().catch(() => {});
    await pg?.destroy();
  });

  it('writes every alert and keeps the key cache polling after queries the driver never settles', async () => {
    expect(handle.deadlineMs).toBe(3_000);
    const outbox = createOutbox(handle, { globalUrl: 'http://127.0.0.1:9/alerts', tenantTargets: false });
    const queue = new AlertQueue({ write: async (b) => void (await outbox.enqueue(b)), logger, flushMs: 20, maxItems: 10_000, batchSize: 50 });
    const cache = new KeyCache(createPgDirectory(handle), { ttlMs: 60_000, negativeTtlMs: 1, maxEntries: 100, pollMs: 50, now: Date.now, logger });
    queue.start();
    cache.start();

    // Every 10 ms: one alert, one key load through the cache, and one bare driver query (to see whether the
    // driver lost any this time; the assertions below do not depend on it).
    const pushed: Alert[] = [];
    const loads: Array<{ settled: boolean }> = [];
    const bare: Array<{ settled: boolean }> = [];
    const track = (list: Array<{ settled: boolean }>, p: Promise<unknown>) => {
      const t = { settled: false };
      list.push(t);
      p.then(() => (t.settled = true), () => (t.settled = true));
    };
    let i = 0;
    const ticker = setInterval(() => {
      const alert = repeatedViolationsAlert(`t${i}`, { startMs: 1_000 * i++, lengthMs: 60_000 }, 10, 5, Date.now());
      pushed.push(alert);
      queue.push(alert);
      track(loads, cache.load(randomUUID()));
      track(bare, handle.db.execute(sql`select 1`));
    }, 10);
    await sleep(300);
    await pg.stop();
    await sleep(1_000);
    await pg.start();
    await sleep(300);
    clearInterval(ticker);
    const stoppedAt = Date.now();

    // Within a deadline or two of the last push, every key load has settled (answered, or failed at its
    // deadline), the queue is empty and the outbox holds every alert.
    let written = 0;
    for (; Date.now() - stoppedAt < 3 * handle.deadlineMs; await sleep(100)) {
      if (queue.length > 0 || loads.some((l) => !l.settled)) continue;
      written = (await handle.db.select({ n: sql<number>`count(*)::int` }).from(alertOutbox))[0]!.n;
      if (written === pushed.length) break;
    }
    const lostByDriver = bare.filter((b) => !b.settled).length;
    console.info(
      `postgres crash: ${pushed.length} alerts pushed, ${written} in the outbox after ${Date.now() - stoppedAt} ms; ` +
        `the driver left ${lostByDriver} of ${bare.length} bare queries pending`,
    );
    expect(queue.length).toBe(0);
    expect(loads.filter((l) => !l.settled).length).toBe(0);
    expect(written).toBe(pushed.length);
    const rows = await handle.db.select({ key: alertOutbox.dedupeKey }).from(alertOutbox);
    expect(new Set(rows.map((r) => r.key))).toEqual(new Set(pushed.map((a) => `${a.key}:global`)));

    // The cache still loads and polls.
    expect(await cache.load(randomUUID())).toBeNull();
    const before = cache.stats.refreshes;
    await handle.db.execute(sql`update directory_version set version = version + 1 where id = 1`);
    for (let t = 0; t < 40 && cache.stats.refreshes === before; t++) await sleep(50);
    expect(cache.stats.refreshes).toBeGreaterThan(before);

    cache.stop();
    await queue.stop();
  }, 30_000);
});

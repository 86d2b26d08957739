// Regression (CI, while a test stopped Postgres): postgres.js 3.4.9 reads the array types on every new
// connection and drops that query's promise, so when the connection dies during it the error escapes as an
// unhandled rejection no caller can catch (porsager/postgres#1192). Our clients turn `fetch_types` off
// (postgresClient in src/db/client.ts). Here a TCP proxy in front of the real Postgres cuts the connection
// the moment it sees that query: the app's clients must never send it, and nothing may escape.
import net from 'node:net';
import { sql } from 'drizzle-orm';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/db/client.js';
import { listenForDirectoryChanges } from '../../src/directory/change-listener.js';
import { createTestDatabase, hasPostgres } from '../helpers/services.js';

const services = await hasPostgres();
const logger = pino({ level: 'silent' });

describe.skipIf(!services)("Postgres clients and the driver's array-types query", () => {
  let proxy: net.Server;
  let proxiedUrl = '';
  let drop: () => Promise<void>;
  let typesQueries = 0;
  const escaped: unknown[] = [];
  const onUnhandled = (err: unknown) => escaped.push(err);

  beforeAll(async () => {
    const db = await createTestDatabase('arraytypes');
    drop = db.drop;
    const target = new URL(db.url);
    proxy = net.createServer((client) => {
      const server = net.connect(Number(target.port || 5432), target.hostname);
      const cut = () => {
        client.destroy();
        server.destroy();
      };
      client.on('error', cut);
      server.on('error', cut);
      client.on('data', (chunk: Buffer) => {
        // The driver's query names pg_catalog.pg_type and typarray; nothing of ours does.
        if (chunk.includes('typarray')) {
          typesQueries++;
          cut(); // Postgres going away at that moment
          return;
        }
        server.write(chunk);
      });
      server.on('data', (chunk: Buffer) => client.write(chunk));
      client.on('close', cut);
      server.on('close', cut);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const proxied = new URL(db.url);
    proxied.hostname = '127.0.0.1';
    proxied.port = String((proxy.address() as net.AddressInfo).port);
    proxiedUrl = proxied.toString();
    process.on('unhandledRejection', onUnhandled);
  });

  afterAll(async () => {
    process.off('unhandledRejection', onUnhandled);
    await new Promise<void>((resolve) => proxy?.close(() => resolve()));
    await drop?.();
  });

  it('the pool and the LISTEN connection never ask for them, so a connection cut there cannot leak a rejection', async () => {
    const handle = await openDatabase({ url: proxiedUrl, logger: logger });
    try {
      // Several connections of the pool, each opened fresh through the proxy.
      const rows = await Promise.all(Array.from({ length: 4 }, (_, i) => handle.db.execute(sql`select ${i}::int as n, pg_sleep(0.05)`)));
      expect(rows).toHaveLength(4);
      await handle.ping();
    } finally {
      await handle.close();
    }
    const listener = listenForDirectoryChanges(proxiedUrl, () => {}, logger);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await listener.close();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(typesQueries).toBe(0);
    expect(escaped).toEqual([]);
  });
});

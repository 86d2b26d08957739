// One handle over either a real Postgres (DATABASE_URL) or the embedded PGlite, so every query is written once.
import { mkdirSync } from 'node:fs';
import { PGlite } from '@electric-sql/pglite';
import { sql } from 'drizzle-orm';
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import { within } from '../timers.js';
import * as schema from './schema.js';

export type DatabaseSchema = typeof schema;

/**
 * The query surface shared by both drivers. Only driver-neutral calls belong on it: the query builder and
 * transactions. `db.execute()` returns driver-specific shapes (an array for postgres-js, `{ rows }` for PGlite).
 */
export type AppDatabase = PgDatabase<PgQueryResultHKT, DatabaseSchema>;

export type DatabaseKind = 'postgres' | 'pglite';

export interface DatabaseHandle {
  readonly db: AppDatabase;
  readonly kind: DatabaseKind;
  /** Throws (AppError DatabaseError, retryable) when the database does not answer `select 1` in time. */
  ping(): Promise<void>;
  close(): Promise<void>;
  /**
   * How long a caller waits for one statement before giving up on it client-side: the statement timeout,
   * plus the connect timeout, plus a second. The server-side limits bound a query that runs; this bounds one
   * that the driver never settles at all (postgres.js leaves some queries issued just after the server died
   * pending forever, even once it is back; a half-open TCP connection does the same). Background loops that
   * run one round at a time put it on every call, so one lost promise cannot stop them for good.
   */
  readonly deadlineMs: number;
}

export interface OpenDatabaseOptions {
  /** postgres:// URL. Absent: embedded PGlite under `dataDir`. */
  url?: string;
  /** PGlite data folder (created if missing). Required when `url` is absent. */
  dataDir?: string;
  logger?: Logger;
  /** postgres only: connections in the pool. */
  poolSize?: number;
  /** postgres only: server-side cap on any one statement. */
  statementTimeoutMs?: number;
  /** postgres only: seconds to wait for a TCP connection and handshake. */
  connectTimeoutSeconds?: number;
  /** Client-side cap on `ping()`, which also covers a server that stopped answering altogether. */
  pingTimeoutMs?: number;
}

const DEFAULT_POOL_SIZE = 10;
const DEFAULT_STATEMENT_TIMEOUT_MS = 5_000;
const DEFAULT_CONNECT_TIMEOUT_S = 5;
const DEFAULT_PING_TIMEOUT_MS = 2_000;

/**
 * A postgres.js client with the settings every connection of this server shares (the pool, LISTEN, the
 * reporter's locks, migrations):
 * - NOTICEs (e.g. "schema already exists, skipping" from migrations) are dropped: noise in JSON logs.
 * - `fetch_types` is off. With it on, the driver's first statement on each new connection reads the array
 *   types from pg_type, and in postgres.js 3.4.9 that query's promise is dropped: when it fails (Postgres
 *   stopping or restarting while a connection opens) the error escapes as an unhandled rejection no caller
 *   can catch (porsager/postgres#1192, #1205; seen here in CI while a test stopped Postgres). Nothing here
 *   sends or reads Postgres arrays (lists are `in (...)` parameters, lists in rows are jsonb), so the types
 *   are not needed; every new connection also saves that round trip.
 */
export function postgresClient(url: string, options: postgres.Options<Record<string, postgres.PostgresType>>): postgres.Sql {
  return postgres(url, { ...options, onnotice: () => {}, fetch_types: false });
}

/** What `runMigrations` needs beyond the public handle, kept off it so callers cannot misuse it. */
export interface DatabaseInternals {
  readonly url?: string;
  readonly connectTimeoutSeconds: number;
  readonly logger?: Logger;
}
const internals = new WeakMap<DatabaseHandle, DatabaseInternals>();

export function databaseInternals(handle: DatabaseHandle): DatabaseInternals | undefined {
  return internals.get(handle);
}

export async function openDatabase(opts: OpenDatabaseOptions): Promise<DatabaseHandle> {
  const pingTimeoutMs = opts.pingTimeoutMs ?? DEFAULT_PING_TIMEOUT_MS;
  const connectTimeoutSeconds = opts.connectTimeoutSeconds ?? DEFAULT_CONNECT_TIMEOUT_S;
  let handle: DatabaseHandle;
  if (opts.url) {
    handle = openPostgres(opts.url, opts, connectTimeoutSeconds, pingTimeoutMs);
  } else {
    if (!opts.dataDir) {
      throw new AppError('CONFIG_INVALID', 'openDatabase: either a database URL or a PGlite data folder is required');
    }
    handle = await openPglite(opts.dataDir, opts.logger, pingTimeoutMs);
  }
  internals.set(handle, { url: opts.url, connectTimeoutSeconds, logger: opts.logger });
  return handle;
}

function openPostgres(
  url: string,
  opts: OpenDatabaseOptions,
  connectTimeoutSeconds: number,
  pingTimeoutMs: number,
): DatabaseHandle {
  const statementTimeoutMs = opts.statementTimeoutMs ?? DEFAULT_STATEMENT_TIMEOUT_MS;
  const client = postgresClient(url, {
    max: opts.poolSize ?? DEFAULT_POOL_SIZE,
    connect_timeout: connectTimeoutSeconds,
    idle_timeout: 60,
    connection: {
      application_name: 'usage-limiter',
      // Server-side limits, so a lock queue or a runaway query cannot hold a caller (or a connection) forever.
      statement_timeout: statementTimeoutMs,
      idle_in_transaction_session_timeout: 60_000,
    },
  });
  const db: AppDatabase = drizzlePostgres({ client, schema });
  return {
    db,
    kind: 'postgres',
    ping: () => pingWith(db, pingTimeoutMs),
    close: () => client.end({ timeout: 5 }),
    // statement_timeout 0 means none; the client-side deadline still applies, from the default.
    deadlineMs: (statementTimeoutMs || DEFAULT_STATEMENT_TIMEOUT_MS) + connectTimeoutSeconds * 1000 + 1_000,
  };
}

async function openPglite(dataDir: string, logger: Logger | undefined, pingTimeoutMs: number): Promise<DatabaseHandle> {
  mkdirSync(dataDir, { recursive: true });
  const client = await PGlite.create(dataDir);
  logger?.debug({ dataDir }, 'opened embedded PGlite database');
  const db: AppDatabase = drizzlePglite({ client, schema });
  let closed = false;
  return {
    db,
    kind: 'pglite',
    ping: () => pingWith(db, pingTimeoutMs),
    // In-process: nothing can be lost on a network, but a stuck call must not stop a loop either.
    deadlineMs: DEFAULT_STATEMENT_TIMEOUT_MS + 1_000,
    close: async () => {
      // PGlite throws on a second close; callers' shutdown paths may well call it twice.
      if (closed) return;
      closed = true;
      await client.close();
    },
  };
}

async function pingWith(db: AppDatabase, timeoutMs: number): Promise<void> {
  try {
    await withTimeout(db.execute(sql`select 1`), timeoutMs, 'database ping');
  } catch (err) {
    throw new AppError('DatabaseError', 'database is unreachable', { retryable: true, cause: err });
  }
}

/**
 * Rejects after `ms` even if the driver never answers (a half-open TCP connection outlives any server-side
 * timeout). The query itself is not cancelled; the caller just stops waiting for it.
 */
export function withTimeout<T>(promise: PromiseLike<T>, ms: number, what: string): Promise<T> {
  return within(
    promise,
    ms,
    () => {
      throw new AppError('DatabaseError', `${what} timed out after ${ms} ms`, { retryable: true });
    },
    { unref: true },
  );
}

/**
 * `withTimeout` for callers whose deadline is optional (`deadlineMs` in their deps): the bound function
 * applies it to each call, naming the step, or hands the promise back unchanged when there is none.
 */
export function deadlineFor(ms: number | undefined, what: string): <T>(p: Promise<T>, step: string) => Promise<T> {
  return (p, step) => (ms === undefined ? p : withTimeout(p, ms, `${what}: ${step}`));
}

type AsyncMethodNames<T> = { [K in keyof T]-?: T[K] extends ((...args: never[]) => Promise<unknown>) | undefined ? K : never }[keyof T];

/**
 * A copy of `target` whose named async methods reject after `ms` (see `withTimeout`): for stores that a
 * one-round-at-a-time loop calls, where a promise that never settles would stop the loop for good.
 */
export function withDeadlines<T extends object>(target: T, methods: readonly AsyncMethodNames<T>[], ms: number, what: string): T {
  const out: T = { ...target };
  for (const name of methods) {
    const fn = target[name] as ((...args: unknown[]) => Promise<unknown>) | undefined;
    if (typeof fn !== 'function') continue;
    (out as Record<PropertyKey, unknown>)[name] = (...args: unknown[]) => withTimeout(fn.apply(target, args), ms, `${what} ${String(name)}`);
  }
  return out;
}

// Applies the committed drizzle-kit migrations in `drizzle/`. Every replica runs this on start, so on real
// Postgres the run is serialised with an advisory lock: drizzle's migrator reads "last applied" outside its
// transaction, and two replicas starting together would otherwise both try to create the same tables.
import { fileURLToPath } from 'node:url';
import type { MigrationConfig } from 'drizzle-orm/migrator';
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js';
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator';
import type { PgliteDatabase } from 'drizzle-orm/pglite';
import { migrate as migratePostgres } from 'drizzle-orm/postgres-js/migrator';
import type { PostgresJsDatabase } from 'drizzle-orm/postgres-js';
import { AppError } from '../errors.js';
import { databaseInternals, postgresClient, type DatabaseHandle } from './client.js';

// `src/db/migrate.ts` (tests, tsx) and `dist/db/migrate.js` (built) are both two levels below the package root.
export const MIGRATIONS_FOLDER = fileURLToPath(new URL('../../drizzle', import.meta.url));

// Any fixed 64-bit number; it only has to differ from other advisory locks this database sees.
const MIGRATION_LOCK_ID = 7_345_092_118_204_331n;

// Two callers in one process (start-up plus an admin command, or tests) must not interleave either.
const inProcess = new WeakMap<DatabaseHandle, Promise<void>>();

export function runMigrations(handle: DatabaseHandle): Promise<void> {
  const previous = inProcess.get(handle) ?? Promise.resolve();
  const run = previous.catch(() => {}).then(() => migrateOnce(handle));
  inProcess.set(handle, run);
  return run;
}

async function migrateOnce(handle: DatabaseHandle): Promise<void> {
  const config: MigrationConfig = { migrationsFolder: MIGRATIONS_FOLDER };
  try {
    if (handle.kind === 'pglite') {
      // PGlite is one connection owned by this process: the in-process queue above is all the locking it needs.
      await migratePglite(handle.db as unknown as PgliteDatabase<Record<string, unknown>>, config);
      return;
    }
    const url = databaseInternals(handle)?.url;
    if (!url) {
      // A handle not made by openDatabase: migrate over it as is, without the lock.
      await migratePostgres(handle.db as unknown as PostgresJsDatabase<Record<string, unknown>>, config);
      return;
    }
    await migratePostgresLocked(url, databaseInternals(handle)?.connectTimeoutSeconds ?? 5, config);
  } catch (err) {
    if (err instanceof AppError) throw err;
    throw new AppError('DatabaseError', `database migration failed: ${describe(err)}`, { retryable: false, cause: err });
  }
}

async function migratePostgresLocked(url: string, connectTimeoutSeconds: number, config: MigrationConfig): Promise<void> {
  // A single dedicated connection: the session lock and the migration share it, and the pool's statement timeout
  // does not apply (waiting for another replica's migration, or a long CREATE INDEX, is legitimate here).
  const client = postgresClient(url, {
    max: 1,
    connect_timeout: connectTimeoutSeconds,
    connection: { application_name: 'usage-limiter-migrate', statement_timeout: 0 },
  });
  try {
    await client`select pg_advisory_lock(${MIGRATION_LOCK_ID.toString()}::bigint)`;
    try {
      await migratePostgres(drizzlePostgres({ client }), config);
    } finally {
      await client`select pg_advisory_unlock(${MIGRATION_LOCK_ID.toString()}::bigint)`;
    }
  } finally {
    await client.end({ timeout: 5 });
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

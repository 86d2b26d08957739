// Which reporter works on a tenant right now. On Postgres: session advisory locks held on one dedicated
// connection, so two reporter processes never send the same tenant's batches at once, and a reporter that
// dies (even SIGKILL) loses its locks with its connection. Correctness does not rest on them (usage-reports.ts
// writes are compare-and-set, and re-sent identifiers are de-duplicated by Stripe); they keep reporters from
// doing the same work twice. On the embedded PGlite there is one process, so an in-process set does.
import postgres from 'postgres';
import { databaseInternals, postgresClient, type DatabaseHandle } from '../db/client.js';

export interface TenantLocks {
  /** True when this process now holds the tenant; false when another reporter does. */
  tryLock(tenantId: string): Promise<boolean>;
  unlock(tenantId: string): Promise<void>;
  close(): Promise<void>;
}

// Any fixed number; the first half of the two-key advisory lock, so tenant hashes cannot meet other locks.
const LOCK_CLASS = 73_450;

export function createTenantLocks(handle: DatabaseHandle): TenantLocks {
  const url = databaseInternals(handle)?.url;
  return handle.kind === 'postgres' && url !== undefined ? advisoryLocks(url) : inProcessLocks();
}

function inProcessLocks(): TenantLocks {
  const held = new Set<string>();
  return {
    tryLock: async (tenantId) => {
      if (held.has(tenantId)) return false;
      held.add(tenantId);
      return true;
    },
    unlock: async (tenantId) => {
      held.delete(tenantId);
    },
    close: async () => {
      held.clear();
    },
  };
}

function advisoryLocks(url: string): TenantLocks {
  let client: postgres.Sql | null = null;
  const sql = () =>
    (client ??= postgresClient(url, {
      max: 1,
      connect_timeout: 5,
      // The locks live as long as this session: it must not be closed for being idle.
      idle_timeout: 0,
      connection: { application_name: 'usage-limiter-reporter-locks', statement_timeout: 5_000 },
    }));
  return {
    async tryLock(tenantId) {
      const rows = await sql()<{ ok: boolean }[]>`select pg_try_advisory_lock(${LOCK_CLASS}, hashtext(${tenantId})) as ok`;
      return rows[0]?.ok === true;
    },
    async unlock(tenantId) {
      await sql()`select pg_advisory_unlock(${LOCK_CLASS}, hashtext(${tenantId}))`;
    },
    async close() {
      const c = client;
      client = null;
      await c?.end({ timeout: 2 });
    },
  };
}

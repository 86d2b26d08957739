import type { ResolvedKey } from '../core/types.js';

/**
 * Where tenants, tiers and API keys live (Postgres). The Check never calls this directly on a warm key:
 * it goes through the in-process KeyCache, which calls `resolveMany` and `version` off the hot path.
 */
export interface TenantDirectory {
  /** Looks keys up by SHA-256 hex hash. Missing hashes are absent from the map. */
  resolveMany(keyHashes: readonly string[]): Promise<Map<string, ResolvedKey>>;
  /**
   * Up to `limit` keys (the newest first), keyed by hash: the cache preloads them at start so that a
   * restarted replica under traffic does not send every first request of every key to the database.
   */
  resolveAll?(limit: number): Promise<Map<string, ResolvedKey>>;
  /**
   * A counter bumped (by database triggers) on every change to tiers, tenants or keys.
   * Replicas poll it to learn within about a second that cached entries must be refreshed.
   */
  version(): Promise<bigint>;
  /** Throws when the database is unreachable. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

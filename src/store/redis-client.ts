// The one place that creates Redis connections (the counter store's, the violation counters'), standalone
// or Redis Cluster, with the same fail-fast settings: a Check must never wait on a Redis that is not there,
// and a command whose fate is unknown must never be replayed (a replayed reservation counts a unit twice).
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';

export interface ClusterNode {
  readonly host: string;
  readonly port: number;
}

/** Where the counters live: one Redis (`REDIS_URL`) or the seed nodes of a Redis Cluster (`REDIS_CLUSTER_NODES`). */
export type RedisTarget = { readonly url: string } | { readonly clusterNodes: readonly ClusterNode[] };

export type RedisClient = Redis | Cluster;

const MAX_RECONNECT_DELAY_MS = 2_000;
/** TRYAGAIN (keys of one slot half-migrated during a resharding) means the command did not run: retry soon. */
const TRYAGAIN_DELAY_MS = 5;

/** The configured target, or null when counters stay in process memory. */
export function redisTarget(c: {
  readonly redisUrl?: string | undefined;
  readonly redisClusterNodes?: readonly ClusterNode[] | undefined;
}): RedisTarget | null {
  if (c.redisClusterNodes !== undefined && c.redisClusterNodes.length > 0) return { clusterNodes: c.redisClusterNodes };
  if (c.redisUrl !== undefined) return { url: c.redisUrl };
  return null;
}

function reconnectDelay(times: number): number {
  return Math.min(50 * 2 ** Math.min(times, 6), MAX_RECONNECT_DELAY_MS);
}

/** Client options that make failures fast: a Check must never wait on a Redis that is not there. */
export function redisClientOptions(commandTimeoutMs: number): RedisOptions {
  return {
    commandTimeout: commandTimeoutMs,
    connectTimeout: Math.max(1_000, commandTimeoutMs * 10),
    // While disconnected, commands fail at once instead of queueing until a reconnect.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    // A reservation lost with its connection must not be replayed later: its Check has already been
    // answered (by the failure policy), and a replay would count a unit twice.
    autoResendUnfulfilledCommands: false,
    retryStrategy: reconnectDelay,
  };
}

export interface ClientTuning {
  /**
   * Cluster only. The client opens a connection to a master when it first needs it (at start, and after a
   * failover moves a slot to a new master); commands that arrive meanwhile wait for it, each at most
   * `commandTimeoutMs`, instead of failing at once. The counter store wants this (a burst of Checks right
   * after a failover would otherwise all get the failure policy) and never sends while the cluster as a
   * whole is down (it checks the status first). Without it (the default) every such command fails at once,
   * and nothing ever waits in a queue: what a background job that may be stopped at any time needs.
   */
  readonly waitForNodeConnections?: boolean;
}

/**
 * The same promises for a Redis Cluster. Only masters are read (`scaleReads: 'master'`): a replica lags,
 * and enforcement must read what the last reservation wrote. A MOVED or ASK redirect (a failover, a
 * resharding) is followed at once: the command did not run where it was first sent.
 */
export function clusterClientOptions(commandTimeoutMs: number, tuning: ClientTuning = {}): ClusterOptions {
  const { commandTimeout, connectTimeout, maxRetriesPerRequest, autoResendUnfulfilledCommands } =
    redisClientOptions(commandTimeoutMs);
  return {
    scaleReads: 'master',
    enableOfflineQueue: tuning.waitForNodeConnections ?? false,
    // A command whose connection closed may have run: failing it is safe, sending it again is not.
    retryDelayOnFailover: 0,
    // CLUSTERDOWN: no master for the slot; the failure policy answers rather than a retry past the deadline.
    retryDelayOnClusterDown: 0,
    retryDelayOnTryAgain: TRYAGAIN_DELAY_MS,
    retryDelayOnMoved: 0,
    // Lost every node: reconnect from the seeds, as the standalone client does.
    clusterRetryStrategy: reconnectDelay,
    slotsRefreshTimeout: Math.max(1_000, commandTimeoutMs * 10),
    redisOptions: { commandTimeout, connectTimeout, maxRetriesPerRequest, autoResendUnfulfilledCommands },
  };
}

/** A new connection (or, for a cluster, a pool of them) to the target, failing fast as above. */
export function createRedisClient(target: RedisTarget, commandTimeoutMs: number, tuning: ClientTuning = {}): RedisClient {
  if ('clusterNodes' in target) {
    return new Cluster(
      target.clusterNodes.map((n) => ({ host: n.host, port: n.port })),
      clusterClientOptions(commandTimeoutMs, tuning),
    );
  }
  return new Redis(target.url, redisClientOptions(commandTimeoutMs));
}

/**
 * A PING that means "every tenant's counters can be reached": a cluster asks each master it knows for
 * CLUSTER INFO, and each must say `cluster_state:ok` (a master that lost its slots' owner, or cannot reach
 * a majority, says `fail` and refuses commands until a replica takes over).
 */
export async function pingAll(client: RedisClient): Promise<void> {
  if (!(client instanceof Cluster)) {
    await client.ping();
    return;
  }
  const masters = client.nodes('master');
  if (masters.length === 0) throw new Error('Redis Cluster: no master connected');
  await Promise.all(
    masters.map(async (m) => {
      const info = String(await m.cluster('INFO'));
      if (!info.includes('cluster_state:ok')) {
        throw new Error(`Redis Cluster: ${m.options.host}:${m.options.port} reports ${/cluster_state:\w+/.exec(info)?.[0] ?? 'no state'}`);
      }
    }),
  );
}

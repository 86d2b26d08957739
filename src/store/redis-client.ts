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

/**
 * Client options that make failures fast: a Check must never wait on a Redis that is not there.
 * `backstopMs` is ioredis's own per-command timer (default `commandTimeoutMs`); see ClientTuning.
 */
export function redisClientOptions(commandTimeoutMs: number, backstopMs = commandTimeoutMs): RedisOptions {
  return {
    commandTimeout: backstopMs,
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
  /**
   * ioredis's own per-command timer, when the caller bounds its calls itself (the counter store's `run`
   * does, reading arrived replies first: src/timers.ts). ioredis's timer rejects in the timers phase, before
   * a reply waiting in the socket is read, so it must fire later than the caller's: it is only a backstop.
   * Default: `commandTimeoutMs`.
   */
  readonly backstopMs?: number;
}

/**
 * The same promises for a Redis Cluster. Only masters are read (`scaleReads: 'master'`): a replica lags,
 * and enforcement must read what the last reservation wrote. A MOVED or ASK redirect (a failover, a
 * resharding) is followed at once: the command did not run where it was first sent.
 */
export function clusterClientOptions(commandTimeoutMs: number, tuning: ClientTuning = {}): ClusterOptions {
  const { commandTimeout, connectTimeout, maxRetriesPerRequest, autoResendUnfulfilledCommands } =
    redisClientOptions(commandTimeoutMs, tuning.backstopMs);
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
  return new Redis(target.url, redisClientOptions(commandTimeoutMs, tuning.backstopMs));
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

/**
 * Coalesces the commands sent in one turn of the event loop into one socket write per connection.
 *
 * Why: ioredis writes every command to its socket as it is sent, one write syscall each, and on loopback
 * that syscall (which also wakes Redis) was the largest single item in the Check's profile. The first
 * command of a turn corks the connection and a `setImmediate` uncorks it once the turn's I/O callbacks have
 * run, so every Check decoded from the HTTP/2 reads of that turn goes out in one `writev` and Redis reads
 * them in one go (about 8 commands per write at the benchmark's maximum; the write syscall's share of the
 * profile went from 8.6% to 2.8%). A tick-queue flush (`process.nextTick`) batched nothing: grpc-js hands
 * each call to the service in its own tick pass. The wait is bounded by the turn itself, no timer is
 * involved. Replies, their order and the per-command timeouts are unchanged (this is the socket's own
 * buffering, not a pipeline object), and in a Cluster each master's connection is corked, so a command
 * still goes to the node of its own slot.
 *
 * Call the returned function just before sending a command.
 */
export function writeCoalescer(client: RedisClient): () => void {
  let corked: NodeJS.WritableStream[] | null = null;
  const flush = (): void => {
    const streams = corked ?? [];
    corked = null;
    // A stream that closed meanwhile ignores the uncork; its commands have already failed.
    for (const s of streams) (s as unknown as { uncork(): void }).uncork();
  };
  return () => {
    if (corked !== null) return;
    const connections = client instanceof Cluster ? client.nodes('master') : [client];
    corked = [];
    for (const c of connections) {
      const s = c.stream as (NodeJS.WritableStream & { cork(): void; writable: boolean }) | undefined;
      if (s?.writable) {
        s.cork();
        corked.push(s);
      }
    }
    setImmediate(flush);
  };
}

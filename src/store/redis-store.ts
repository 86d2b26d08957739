// The shared counter store: every Check is one EVALSHA of check-and-reserve.lua, so limits hold across
// replicas and racing requests. Redis trouble must surface as a fast rejection (the caller's failure
// policy decides what then happens), never as a hang past Envoy's deadline or a crashed process.
import fs from 'node:fs';
import { Cluster } from 'ioredis';
import {
  COUNTER_GRACE_MS,
  DEFAULT_SETTLEMENT_WINDOW_MS,
  TOTAL_FIELD,
  assertValidCheckRequest,
  assertValidWindow,
  endpointField,
  normalizePercents,
  settlementHorizon,
  storeKeys,
  type StoreKeyOptions,
  type TenantKeys,
} from './keys.js';
import {
  parseCheckAndReserveReply,
  parseSettleReply,
  parseSettledUsageReply,
  parseUsageHash,
} from './parse-reply.js';
import { within } from '../timers.js';
import { createRedisClient, pingAll, writeCoalescer, type ClusterNode, type RedisClient } from './redis-client.js';
import { assertValidRestore } from './restore.js';
import type {
  CheckAndReserveRequest,
  CheckAndReserveResult,
  CounterStore,
  PeriodUsage,
  SettledUsage,
  SettleOutcome,
  SettleRequest,
} from './types.js';

export interface RedisStoreOptions {
  /** Used when no `client` or `clusterNodes` is given; defaults to redis://127.0.0.1:6379. */
  readonly url?: string;
  /** Seed nodes of a Redis Cluster (REDIS_CLUSTER_NODES): the store connects with an ioredis Cluster. */
  readonly clusterNodes?: readonly ClusterNode[];
  /** A client owned by the caller: the store does not quit it on close(). */
  readonly client?: RedisClient;
  readonly prefix?: string;
  /**
   * Wrap tenants in `{}` in key names so a tenant's keys share a Redis Cluster slot. Default: true with
   * `clusterNodes` or a Cluster `client` (where it cannot be turned off), else false.
   */
  readonly cluster?: boolean;
  /** Upper bound of every store call, including a wait for a connection in progress. Default 100. */
  readonly commandTimeoutMs?: number;
  /** Connection errors (reported again on every failed reconnect); without it they are dropped. */
  readonly onError?: (err: Error) => void;
  /** How long a reservation waits for its access-log entry (SETTLEMENT_WINDOW_SECONDS). Default 120 s. */
  readonly settlementWindowMs?: number;
}

export interface RedisCounterStore extends CounterStore {
  /** The underlying client, for tests and diagnostics. */
  readonly redis: RedisClient;
  /** The key names this store uses for a tenant. */
  keys(tenantId: string): TenantKeys;
}

const DEFAULT_COMMAND_TIMEOUT_MS = 100;
// Prefixed names, so a client shared with other code cannot have a command of the same name.
const COMMANDS = {
  checkAndReserve: 'usageLimiterCheckAndReserve',
  release: 'usageLimiterRelease',
  settle: 'usageLimiterSettle',
  settledUsage: 'usageLimiterSettledUsage',
  restoreUsage: 'usageLimiterRestoreUsage',
} as const;
type ScriptName = keyof typeof COMMANDS;

type ScriptCommands = Record<(typeof COMMANDS)[ScriptName], (numKeys: number, ...keysAndArgs: string[]) => Promise<unknown>>;

const SCRIPT_FILES: Record<ScriptName, string> = {
  checkAndReserve: './check-and-reserve.lua',
  release: './release.lua',
  settle: './settle.lua',
  settledUsage: './settled-usage.lua',
  restoreUsage: './restore-usage.lua',
};

let scripts: Record<ScriptName, string> | undefined;

// Read on first use rather than at import, so a process that runs with the memory store never needs them.
function loadScripts(): Record<ScriptName, string> {
  if (scripts === undefined) {
    const loaded = {} as Record<ScriptName, string>;
    for (const name of Object.keys(SCRIPT_FILES) as ScriptName[]) {
      loaded[name] = fs.readFileSync(new URL(SCRIPT_FILES[name], import.meta.url), 'utf8');
    }
    scripts = loaded;
  }
  return scripts;
}

export { redisClientOptions } from './redis-client.js';

export function createRedisStore(opts: RedisStoreOptions = {}): RedisCounterStore {
  const timeoutMs = opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
  const clusterClient = opts.clusterNodes !== undefined || opts.client instanceof Cluster;
  const cluster = opts.cluster ?? clusterClient;
  if (clusterClient && !cluster) {
    // Without the hash tag a script's keys land in different slots: every call would fail with CROSSSLOT.
    throw new RangeError('a Redis Cluster client needs cluster key names (cluster: true)');
  }
  const prefix = opts.prefix ?? '';
  if (cluster && /[{}]/.test(prefix)) {
    // Redis hashes the first {...} of a key: braces in the prefix would replace the tenant's hash tag.
    throw new RangeError('the key prefix must not contain { or } with cluster key names');
  }
  const owned = opts.client === undefined;
  const client =
    opts.client ??
    createRedisClient(
      opts.clusterNodes !== undefined ? { clusterNodes: opts.clusterNodes } : { url: opts.url ?? 'redis://127.0.0.1:6379' },
      timeoutMs,
      // A node connection opened after a failover is waited for (within timeoutMs); `run` below never sends
      // while the cluster as a whole is down. `run` bounds every call, so ioredis's own timer is only a
      // backstop, set a second past it: it fires before the poll phase, so until then a long stall of the
      // event loop still reads the replies that arrived during it (timers.ts).
      { waitForNodeConnections: true, backstopMs: timeoutMs + 1_000 },
    );
  // An 'error' event without a listener kills Node; a dead Redis must only fail calls.
  client.on('error', (err: Error) => opts.onError?.(err));

  const lua = loadScripts();
  // defineCommand sends EVALSHA, falling back to EVAL on NOSCRIPT: one round trip per call.
  for (const name of Object.keys(COMMANDS) as ScriptName[]) client.defineCommand(COMMANDS[name], { lua: lua[name] });
  const commands = client as unknown as ScriptCommands;
  const keyOpts: StoreKeyOptions = { prefix, cluster };
  const coalesce = writeCoalescer(client);
  const settlementWindowMs = opts.settlementWindowMs ?? DEFAULT_SETTLEMENT_WINDOW_MS;
  assertValidWindow(settlementWindowMs);

  // One shared wait for a connection attempt in progress, so a burst of Checks adds one listener pair.
  let connecting: Promise<void> | null = null;
  function connected(): Promise<void> {
    connecting ??= new Promise<void>((resolve, reject) => {
      const settle = (err?: Error): void => {
        client.off('ready', onReady);
        client.off('close', onClose);
        connecting = null;
        if (err) reject(err);
        else resolve();
      };
      const onReady = (): void => settle();
      const onClose = (): void => settle(new Error('Redis connection closed before it was ready'));
      client.on('ready', onReady);
      client.on('close', onClose);
    });
    return connecting;
  }

  /** Runs `op` once the client is ready, all within timeoutMs, and never sends it after giving up. */
  function run<T>(what: string, op: () => Promise<T>): Promise<T> {
    const status = client.status;
    if (status !== 'ready') {
      if (status === 'wait') client.connect().catch(() => {});
      // Only a connection attempt under way is worth waiting for; 'reconnecting' means it is known down.
      else if (status !== 'connecting' && status !== 'connect') {
        return Promise.reject(new Error(`Redis ${what} failed: not connected (${status})`));
      }
    }
    // From the moment the budget is spent nothing is sent for this call, even if the connection becomes
    // ready during the poll grace: its Check is about to take the failure policy (the call then never
    // settles, and the timeout answers).
    let expired = false;
    let work: Promise<T>;
    try {
      work = client.status === 'ready' ? op() : connected().then(() => (expired ? new Promise<T>(() => {}) : op()));
    } catch (err) {
      work = Promise.reject(err);
    }
    // A reply already in the socket buffer when the timer is due is read first (see timers.ts).
    return within(
      work,
      timeoutMs,
      () => {
        throw new Error(`Redis ${what} timed out after ${timeoutMs} ms`);
      },
      {
        poll: true,
        onDue: () => {
          expired = true;
        },
      },
    );
  }

  return {
    get redis() {
      return client;
    },

    keys: (tenantId) => storeKeys(keyOpts, tenantId),

    async checkAndReserve(req: CheckAndReserveRequest): Promise<CheckAndReserveResult> {
      assertValidCheckRequest(req);
      const k = storeKeys(keyOpts, req.tenantId);
      const rr = req.readRate;
      const q = req.quota;
      const percents = q ? normalizePercents(q.thresholdPercents) : [];
      const keys = [k.readRate, k.readRateSeq];
      if (q) {
        keys.push(k.usage(q.period), k.pending(q.endpoint, q.period));
        for (const p of percents) keys.push(k.threshold(q.endpoint, q.period, p));
        if (q.totalLimit !== null) for (const p of percents) keys.push(k.threshold(TOTAL_FIELD, q.period, p));
      }
      const args = [
        String(req.nowMs),
        rr ? String(rr.limit) : '-1',
        rr ? String(rr.windowMs) : '1',
        q ? '1' : '0',
        q ? endpointField(q.endpoint) : '',
        q ? String(q.endpointLimit) : '0',
        q && q.totalLimit !== null ? String(q.totalLimit) : '-1',
        q ? String(q.periodEndMs + COUNTER_GRACE_MS) : '0',
        q ? req.requestId : '',
        String(settlementWindowMs),
        q && q.ifUsageMissing === 'report' ? '1' : '0',
        String(percents.length),
        ...percents.map(String),
      ];
      const reply = await run('checkAndReserve', () => {
        coalesce();
        return commands[COMMANDS.checkAndReserve](keys.length, ...keys, ...args);
      });
      return parseCheckAndReserveReply(reply);
    },

    async release(tenantId: string, period: string, endpoint: string, units: number): Promise<void> {
      if (!Number.isSafeInteger(units) || units < 0) {
        throw new RangeError(`units must be an integer >= 0, got ${units}`);
      }
      if (units === 0) return;
      const key = storeKeys(keyOpts, tenantId).usage(period);
      await run('release', () => commands[COMMANDS.release](1, key, endpointField(endpoint), String(units)));
    },

    async settle(entries: readonly SettleRequest[], nowMs: number): Promise<SettleOutcome[]> {
      if (entries.length === 0) return [];
      // One script per entry (each touches one tenant's keys, so each stays in one cluster slot), all
      // written before any reply is read, in one socket write (see writeCoalescer): one round trip.
      const replies = await run('settle', () => {
        coalesce();
        return Promise.all(
          entries.map((e) => {
            const k = storeKeys(keyOpts, e.tenantId);
            return commands[COMMANDS.settle](
              2,
              k.usage(e.period),
              k.pending(e.endpoint, e.period),
              e.requestId,
              e.failed ? '1' : '0',
              endpointField(e.endpoint),
              String(nowMs),
              String(settlementWindowMs),
            );
          }),
        );
      });
      return replies.map(parseSettleReply);
    },

    async settledUsage(tenantId: string, period: string, nowMs: number): Promise<SettledUsage> {
      const k = storeKeys(keyOpts, tenantId);
      // Which endpoints the period has: an operator may have added one by hand, so ask the hash itself.
      const fields = Object.keys(await run('settledUsage', () => client.hgetall(k.usage(period)))).filter((f) =>
        f.startsWith('op:'),
      );
      const endpoints = fields.map((f) => f.slice(3));
      const horizon = nowMs - settlementHorizon(settlementWindowMs);
      const reply = await run('settledUsage', () =>
        commands[COMMANDS.settledUsage](
          1 + endpoints.length,
          k.usage(period),
          ...endpoints.map((e) => k.pending(e, period)),
          String(horizon),
          ...fields,
        ),
      );
      return parseSettledUsageReply(reply, endpoints);
    },

    async restoreUsage(
      tenantId: string,
      period: string,
      usage: PeriodUsage,
      periodEndMs: number,
      nowMs: number,
    ): Promise<boolean> {
      assertValidRestore(usage, periodEndMs, nowMs);
      const k = storeKeys(keyOpts, tenantId);
      const endpoints = Object.keys(usage.endpoints);
      const ttl = Math.max(1, periodEndMs + COUNTER_GRACE_MS - nowMs);
      const reply = await run('restoreUsage', () =>
        commands[COMMANDS.restoreUsage](
          1 + endpoints.length,
          k.usage(period),
          ...endpoints.map((e) => k.pending(e, period)),
          String(ttl),
          String(usage.total),
          ...endpoints.map((e) => String(usage.endpoints[e] ?? 0)),
          ...endpoints.map(endpointField),
        ),
      );
      return Number(reply) === 1;
    },

    async usage(tenantId: string, period: string): Promise<PeriodUsage> {
      const key = storeKeys(keyOpts, tenantId).usage(period);
      return parseUsageHash(await run('usage', () => client.hgetall(key)));
    },

    async ping(): Promise<void> {
      // In a cluster every master must answer: a tenant's counters may live on any of them.
      await run('ping', () => pingAll(client));
    },

    async close(): Promise<void> {
      if (!owned || client.status === 'end') return;
      if (client.status === 'ready') {
        // QUIT lets the replies in flight arrive first, but a hung Redis never answers it: bounded by the
        // store's budget (ioredis's own timer is only the backstop, a second later), then disconnected.
        const quitting = client.quit().then(
          () => true,
          () => false, // a quit that fails leaves nothing worth waiting for
        );
        if (await within(quitting, timeoutMs, () => false)) return;
      }
      client.disconnect();
    },
  };
}

// A private Redis Cluster for tests: three masters and three replicas (`redis-server --cluster-enabled yes`
// on spare ports in a temp folder, joined with `redis-cli --cluster create`), so that tests can run the
// store contract against a real cluster and trigger a CLUSTER FAILOVER. Never touches the shared Redis.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Cluster, Redis } from 'ioredis';

const run = promisify(execFile);

export interface TestCluster {
  readonly nodes: ReadonlyArray<{ host: string; port: number }>;
  /** A connected ioredis Cluster client (the test's own). */
  readonly client: Cluster;
  /** Promotes the replica of the master that owns `key`'s slot; resolves once the client sees the new master. */
  failoverFor(key: string): Promise<{ oldMaster: number; newMaster: number }>;
  /**
   * SIGKILLs the master that owns `key`'s slot, as a crash would; resolves once the cluster has promoted its
   * replica (failure detection takes the node timeout, 2 s here, then an election).
   */
  crashMasterFor(key: string): Promise<{ oldMaster: number; newMaster: number }>;
  stop(): Promise<void>;
}

export function redisServerAvailable(): Promise<boolean> {
  return run('redis-server', ['--version']).then(
    () => true,
    () => false,
  );
}

async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, () => new Promise<net.Server>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => resolve(s));
    })),
  );
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Runs `fn` on a short-lived connection to one node (never retried: a node that is not up fails the call). */
async function onNode<T>(port: number, fn: (r: Redis) => Promise<T>): Promise<T> {
  const r = new Redis({ port, lazyConnect: true, retryStrategy: () => null });
  r.on('error', () => {});
  try {
    await r.connect();
    return await fn(r);
  } finally {
    r.disconnect();
  }
}

export async function startTestCluster(): Promise<TestCluster> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ul-cluster-'));
  const ports = await freePorts(6);
  const procs: ChildProcess[] = ports.map((port) =>
    spawn(
      'redis-server',
      [
        '--port', String(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes',
        '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '2000',
        '--save', '', '--appendonly', 'no', '--dir', dir,
        // Redis 7 waits 5 s before a diskless full sync; until a replica has synced, CLUSTER FAILOVER stalls.
        '--repl-diskless-sync-delay', '0',
      ],
      { stdio: 'ignore' },
    ),
  );
  const stopAll = async () => {
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 100));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const port of ports) {
      await waitFor(async () => (await onNode(port, (r) => r.ping())) === 'PONG', `redis-server on ${port}`);
    }
    await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '1', '--cluster-yes']);
    const nodes = ports.map((port) => ({ host: '127.0.0.1', port }));
    const client = new Cluster(nodes, { redisOptions: { connectTimeout: 2000 } });
    client.on('error', () => {});
    await waitFor(async () => (await client.cluster('INFO')).includes('cluster_state:ok'), 'cluster_state:ok');
    // A failover needs an in-sync replica: wait until every replica's link to its master is up.
    await waitFor(async () => {
      const infos = await Promise.all(ports.map((port) => onNode(port, (r) => r.info('replication'))));
      const replicas = infos.filter((i) => i.includes('role:slave'));
      return replicas.length === 3 && replicas.every((i) => i.includes('master_link_status:up'));
    }, 'replicas in sync');
    // Masters vote in a failover only for a node they know to be a replica: wait until every node's view of
    // the cluster has all three pairings (gossip takes a moment after `--cluster create`).
    await waitFor(async () => {
      const views = await Promise.all(ports.map((port) => onNode(port, async (r) => String(await r.cluster('NODES')))));
      return views.every((v) => v.split('\n').filter((l) => /[ ,]slave [0-9a-f]{40} /.test(l)).length === 3);
    }, 'every node to see the three replicas');

    /** The master that owns `key`'s slot, and its replica (named by the master itself). */
    const roles = async (key: string) => {
      const slot = Number(await client.cluster('KEYSLOT', key));
      const owner = async (): Promise<number> => {
        const slots = await client.cluster('SLOTS');
        const range = slots.find(([from, to]) => slot >= from && slot <= to);
        const master = range?.[2];
        if (!master) throw new Error(`no owner for slot ${slot}`);
        return master[1];
      };
      const oldMaster = await owner();
      // Another node's CLUSTER NODES may not show the pairing yet. After a failover the old master is the
      // new replica, in sync a moment later.
      let replicaPort = 0;
      await waitFor(async () => {
        const replication = await onNode(oldMaster, (r) => r.info('replication'));
        replicaPort = Number(/slave0:[^\r\n]*port=(\d+),state=online/.exec(replication)?.[1] ?? 0);
        return replicaPort > 0;
      }, `a replica in sync with the master on ${oldMaster}`, 10_000);
      return { slot, owner, oldMaster, replicaPort };
    };

    return {
      nodes,
      client,
      async failoverFor(key: string) {
        // The replica runs the manual failover (a coordinated, lossless switch).
        const { slot, owner, oldMaster, replicaPort } = await roles(key);
        const replica = new Redis({ port: replicaPort });
        replica.on('error', () => {});
        try {
          // A manual failover that cannot finish is abandoned by Redis after 5 s: ask again (three tries).
          for (let attempt = 1; ; attempt++) {
            await replica.cluster('FAILOVER');
            try {
              await waitFor(async () => (await owner()) === replicaPort, `failover of slot ${slot} to ${replicaPort}`, 6_000);
              break;
            } catch (err) {
              if (attempt === 3) throw err;
            }
          }
        } finally {
          replica.disconnect();
        }
        return { oldMaster, newMaster: replicaPort };
      },
      async crashMasterFor(key: string) {
        const { slot, owner, oldMaster, replicaPort } = await roles(key);
        procs[ports.indexOf(oldMaster)]?.kill('SIGKILL');
        await waitFor(async () => (await owner()) === replicaPort, `promotion of ${replicaPort} for slot ${slot}`, 30_000);
        return { oldMaster, newMaster: replicaPort };
      },
      async stop() {
        client.disconnect();
        await stopAll();
      },
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

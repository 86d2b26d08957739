// What tests of the Redis Cluster mode share beside the cluster itself (redis-cluster.ts): whether one can
// be started here, and cluster-wide key listing (a SCAN sees one node only, so it runs on every master).
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Cluster } from 'ioredis';
import { redisServerAvailable } from './redis-cluster.js';

const run = promisify(execFile);
const REQUIRED = process.env.REQUIRE_SERVICES === '1';

/** redis-server and redis-cli are installed; locally a missing one skips, under REQUIRE_SERVICES=1 it fails. */
export async function canRunCluster(): Promise<boolean> {
  const cli = await run('redis-cli', ['--version']).then(
    () => true,
    () => false,
  );
  const ok = cli && (await redisServerAvailable());
  if (!ok && REQUIRED) throw new Error('redis-server and redis-cli are required (REQUIRE_SERVICES=1) for the Redis Cluster tests');
  if (!ok) console.warn('redis-server or redis-cli not installed: skipping the Redis Cluster tests');
  return ok;
}

/** Every key matching `pattern` on every master of the cluster, sorted. */
export async function scanCluster(client: Cluster, pattern: string): Promise<string[]> {
  const found: string[] = [];
  for (const master of client.nodes('master')) {
    let cursor = '0';
    do {
      const [next, keys] = await master.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      cursor = next;
      found.push(...keys);
    } while (cursor !== '0');
  }
  return found.sort();
}

export async function deleteClusterKeys(client: Cluster, prefix: string): Promise<void> {
  // One DEL per key: a multi-key DEL must stay within one slot.
  await Promise.all((await scanCluster(client, `${prefix}*`)).map((k) => client.del(k)));
}

/** The port of the master that owns `key`'s slot, as the cluster reports it now. */
export async function masterOf(client: Cluster, key: string): Promise<number> {
  const slot = Number(await client.cluster('KEYSLOT', key));
  const ranges = await client.cluster('SLOTS');
  const owner = ranges.find(([from, to]) => slot >= from && slot <= to)?.[2];
  if (!owner) throw new Error(`no master owns slot ${slot}`);
  return owner[1];
}

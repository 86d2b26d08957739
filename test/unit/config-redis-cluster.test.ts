import { describe, expect, it } from 'vitest';
import { describeConfig, loadConfig } from '../../src/config/env.js';
import { clusterClientOptions, redisTarget } from '../../src/store/redis-client.js';
import { problems } from '../helpers/config-problems.js';

describe('REDIS_CLUSTER_NODES', () => {
  it('reads comma-separated host:port seeds (names, IPv4, bracketed IPv6), ignoring blanks', () => {
    const c = loadConfig({ REDIS_CLUSTER_NODES: ' redis-0.redis:6379, 10.0.0.7:7001,,[::1]:7002 ' });
    expect(c.redisClusterNodes).toEqual([
      { host: 'redis-0.redis', port: 6379 },
      { host: '10.0.0.7', port: 7001 },
      { host: '::1', port: 7002 },
    ]);
    expect(c.redisUrl).toBeUndefined();
    expect(Object.isFrozen(c.redisClusterNodes)).toBe(true);
    expect(redisTarget(c)).toEqual({ clusterNodes: c.redisClusterNodes });
  });

  it.each(['redis-0', 'redis://redis-0:6379', 'redis-0:0', 'redis-0:70000', 'a:1,b', ',', 'a b:1'])(
    '%j is rejected naming the variable, without echoing it',
    (value) => {
      const p = problems({ REDIS_CLUSTER_NODES: value });
      expect(p).toEqual(['REDIS_CLUSTER_NODES: must be comma-separated host:port seeds, e.g. redis-0:6379,redis-1:6379']);
    },
  );

  it('is exclusive with REDIS_URL, and the error names both', () => {
    const p = problems({ REDIS_CLUSTER_NODES: 'a:1', REDIS_URL: 'redis://:secret@b:6379' });
    expect(p).toHaveLength(1);
    expect(p[0]).toMatch(/^REDIS_CLUSTER_NODES: /);
    expect(p[0]).toContain('REDIS_URL');
    expect(p.join('\n')).not.toContain('secret');
  });

  it('refuses braces in REDIS_KEY_PREFIX, which would replace the tenant hash tag', () => {
    expect(problems({ REDIS_CLUSTER_NODES: 'a:1', REDIS_KEY_PREFIX: 'app{1}:' })).toEqual([
      'REDIS_KEY_PREFIX: must not contain { or } with REDIS_CLUSTER_NODES',
    ]);
    // Standalone Redis has no slots: any prefix goes.
    expect(problems({ REDIS_URL: 'redis://a:1', REDIS_KEY_PREFIX: 'app{1}:' })).toEqual([]);
  });

  it('shows the seeds in the start-up line, not an in-memory store', () => {
    const d = describeConfig(loadConfig({ REDIS_CLUSTER_NODES: 'a:1,[::1]:2' }));
    expect(d.redisClusterNodes).toBe('a:1,[::1]:2');
    expect(d.redisUrl).toBeUndefined();
    expect(describeConfig(loadConfig({})).redisUrl).toBe('(in-process memory)');
  });

  it('picks the standalone target with REDIS_URL, none without either', () => {
    expect(redisTarget(loadConfig({ REDIS_URL: 'redis://a:1' }))).toEqual({ url: 'redis://a:1' });
    expect(redisTarget(loadConfig({}))).toBeNull();
  });
});

describe('cluster client options', () => {
  it('fail fast like the standalone client, read masters only, and never replay a command', () => {
    const o = clusterClientOptions(100);
    expect(o).toMatchObject({
      scaleReads: 'master',
      enableOfflineQueue: false,
      retryDelayOnFailover: 0,
      retryDelayOnClusterDown: 0,
      retryDelayOnMoved: 0,
      redisOptions: { commandTimeout: 100, maxRetriesPerRequest: 1, autoResendUnfulfilledCommands: false },
    });
    expect(o.clusterRetryStrategy?.(1)).toBe(100);
    expect(o.clusterRetryStrategy?.(20)).toBe(2_000);
    // The counter store waits (each command at most its timeout) for a node connection being opened.
    expect(clusterClientOptions(100, { waitForNodeConnections: true }).enableOfflineQueue).toBe(true);
  });
});

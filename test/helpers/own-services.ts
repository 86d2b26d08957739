// Redis and Postgres servers of a test's own, on spare ports, that it may kill, pause (SIGSTOP) and restart
// without touching the shared ones. Missing binaries skip the tests locally (fail under REQUIRE_SERVICES=1).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { freePort } from './server-process.js';

const run = promisify(execFile);
const REQUIRED = process.env.REQUIRE_SERVICES === '1';
const REDIS_SERVER = '/usr/bin/redis-server';
const PG_BIN = '/usr/lib/postgresql/15/bin';

function need(name: string, ok: boolean): boolean {
  if (!ok && REQUIRED) throw new Error(`${name} is required (REQUIRE_SERVICES=1) but not installed`);
  if (!ok) console.warn(`${name} not installed: skipping tests that start their own`);
  return ok;
}

export const canRunRedis = (): boolean => need('redis-server', existsSync(REDIS_SERVER));
export const canRunPostgres = (): boolean =>
  need('Postgres 15 (initdb, pg_ctl, runuser as root)', existsSync(`${PG_BIN}/initdb`) && process.getuid?.() === 0);

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export interface OwnRedis {
  readonly url: string;
  readonly port: number;
  /** SIGKILL: connections drop at once, as on a crash. */
  kill(): Promise<void>;
  /** SIGSTOP: connections stay open and nothing answers, as on a hung server or a partition. */
  pause(): void;
  resume(): void;
  /** Starts a server on the same port: empty, or with the data it had when started with `appendOnly`. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export interface OwnRedisOptions {
  /**
   * Keep data across kill and restart, as a production Redis does (and docker-compose.yml's): an append-only
   * file fsynced before each reply, so whatever a client was told is stored survives a SIGKILL.
   */
  readonly appendOnly?: boolean;
}

export async function startOwnRedis(opts: OwnRedisOptions = {}): Promise<OwnRedis> {
  const port = await freePort();
  let child: ChildProcess | null = null;
  const dir = opts.appendOnly ? mkdtempSync(path.join(os.tmpdir(), 'ul-redis-')) : null;
  const persistence = dir === null ? ['--appendonly', 'no'] : ['--dir', dir, '--appendonly', 'yes', '--appendfsync', 'always'];
  const launch = async () => {
    child = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', ...persistence], { stdio: 'ignore' });
    await waitFor(`redis-server on ${port}`, async () => {
      const c = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      c.on('error', () => {});
      try {
        await c.connect();
        return (await c.ping()) === 'PONG';
      } catch {
        return false;
      } finally {
        c.disconnect();
      }
    });
  };
  const killNow = async (signal: NodeJS.Signals) => {
    const c = child as ChildProcess | null;
    if (c === null || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGCONT');
    c.kill(signal);
    await exited;
  };
  await launch();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    kill: () => killNow('SIGKILL'),
    pause: () => void (child as ChildProcess | null)?.kill('SIGSTOP'),
    resume: () => void (child as ChildProcess | null)?.kill('SIGCONT'),
    restart: async () => {
      await killNow('SIGKILL');
      await launch();
    },
    stop: async () => {
      await killNow('SIGKILL');
      if (dir !== null) rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface OwnPostgres {
  /** postgres://postgres@127.0.0.1:<port>/postgres */
  readonly url: string;
  readonly port: number;
  /** The server's log (pg_ctl -l): with `log_statement = 'all'`, every statement and its parameters. */
  readonly logFile: string;
  /** pg_ctl stop -m immediate: the server is gone, connections are refused. */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** SIGSTOP every process of the cluster: open connections hang, new ones are never answered. */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Stops it and deletes its data folder. */
  destroy(): Promise<void>;
}

const asPostgres = (args: string[]) => run('runuser', ['-u', 'postgres', '--', ...args]);

export async function startOwnPostgres(): Promise<OwnPostgres> {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ul-pg-'));
  const { stdout: uid } = await run('id', ['-u', 'postgres']);
  const { stdout: gid } = await run('id', ['-g', 'postgres']);
  chownSync(dir, Number(uid), Number(gid));
  const data = path.join(dir, 'data');
  await asPostgres([`${PG_BIN}/initdb`, '-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '--no-instructions']);
  const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50`;
  let stopped = true;
  const pids = async (): Promise<number[]> => {
    const pidFile = path.join(data, 'postmaster.pid');
    if (!existsSync(pidFile)) return [];
    const main = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
    const { stdout } = await run('pgrep', ['-P', String(main)]).catch(() => ({ stdout: '' }));
    return [main, ...stdout.split('\n').filter(Boolean).map(Number)];
  };
  const pg: OwnPostgres = {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    logFile: path.join(dir, 'log'),
    start: async () => {
      await asPostgres([`${PG_BIN}/pg_ctl`, '-D', data, '-o', opts, '-l', path.join(dir, 'log'), '-w', 'start']);
      stopped = false;
      await waitFor('postgres to accept connections', () => portOpen(port));
    },
    stop: async () => {
      if (stopped) return;
      await pg.resume();
      await asPostgres([`${PG_BIN}/pg_ctl`, '-D', data, '-m', 'immediate', '-w', 'stop']);
      stopped = true;
    },
    pause: async () => {
      for (const p of await pids()) process.kill(p, 'SIGSTOP');
    },
    resume: async () => {
      for (const p of await pids()) process.kill(p, 'SIGCONT');
    },
    destroy: async () => {
      await pg.stop().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await pg.start();
  return pg;
}

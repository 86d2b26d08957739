// The real binary as a child process (`bin/usage-limiter.js serve`, compiled by the global setup), for tests
// that need separate processes: two replicas, or a SIGTERM. Plus a persistent gRPC client to Check it.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { buildCheckRequest } from '../../src/cli/check-command.js';
import type { CheckResponseMessage } from '../../src/grpc/check-mapping.js';
import { authorizationService, httpStatusNumber } from '../../src/grpc/protos.js';

export const BIN = path.resolve('bin/usage-limiter.js');
const run = promisify(execFile);

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
    srv.once('error', reject);
  });
}

/** Only what a fresh shell has, plus `extra`: nothing from the test runner's environment leaks in. */
export function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, HOME: process.env.HOME, ...extra };
}

export interface ServerProcess {
  readonly child: ChildProcess;
  readonly grpcPort: number;
  readonly httpPort: number;
  /** Everything it wrote (stdout and stderr), as it arrives. */
  output(): string;
  /** JSON log lines so far. */
  records(): Array<Record<string, unknown>>;
  /** Sends SIGTERM and resolves with the exit code. */
  terminate(): Promise<number | null>;
  exited(): Promise<number | null>;
}

export async function startServerProcess(env: Record<string, string>, cwd?: string): Promise<ServerProcess> {
  const grpcPort = await freePort();
  const httpPort = await freePort();
  const child = spawn(process.execPath, [BIN, 'serve'], {
    cwd,
    env: cleanEnv({ GRPC_HOST: '127.0.0.1', HTTP_HOST: '127.0.0.1', GRPC_PORT: String(grpcPort), HTTP_PORT: String(httpPort), ...env }),
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + 30_000;
  while (!out.includes('usage-limiter serving')) {
    if (Date.now() > deadline || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`server did not start:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    child,
    grpcPort,
    httpPort,
    output: () => out,
    records: () =>
      out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    terminate: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exit;
    },
    exited: () => exit,
  };
}

/** Runs a CLI command (`keys create ...`) against the same database; resolves with stdout and stderr. */
export async function cli(args: string[], env: Record<string, string>): Promise<{ stdout: string; stderr: string }> {
  return run(process.execPath, [BIN, ...args], { env: cleanEnv(env) });
}

export interface Checker {
  check(o: { key?: string; method?: string; path?: string; deadlineMs?: number }): Promise<CheckResponseMessage>;
  status(o: { key?: string; method?: string; path?: string; deadlineMs?: number }): Promise<number>;
  close(): void;
}

/** A long-lived gRPC client, as Envoy keeps one: no connection set-up in the timings. */
export function checker(port: number): Checker {
  const Client = authorizationService();
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    Check: (req: unknown, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: CheckResponseMessage) => void) => void;
  };
  const check: Checker['check'] = (o) =>
    new Promise((resolve, reject) => {
      const req = buildCheckRequest({
        key: o.key,
        method: o.method ?? 'GET',
        path: o.path ?? '/usage',
        target: '',
        headers: [],
        requestId: undefined,
        timeoutMs: 0,
      });
      client.Check(req, { deadline: Date.now() + (o.deadlineMs ?? 5_000) }, (err, res) => (err ? reject(err) : resolve(res)));
    });
  return {
    check,
    status: async (o) => {
      const res = await check(o);
      return res.denied_response ? httpStatusNumber(res.denied_response.status.code) : 200;
    },
    close: () => client.close(),
  };
}

// The newcomer's path with the real binary: `serve` with nothing configured (embedded PGlite, memory
// counters, demo tenants), `check` against it, and a bad variable stopping start-up with its name.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { sendCheck } from '../../src/cli/check-command.js';
import { BIN, cleanEnv, freePort } from '../helpers/server-process.js';

const run = promisify(execFile);

describe('usage-limiter CLI with embedded defaults', () => {
  let server: ChildProcess;
  let dir: string;
  let grpcPort: number;
  let httpPort: number;
  let output = '';

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'ul-cli-'));
    grpcPort = await freePort();
    httpPort = await freePort();
    server = spawn(process.execPath, [BIN, 'serve'], {
      cwd: dir,
      env: cleanEnv({ GRPC_PORT: String(grpcPort), HTTP_PORT: String(httpPort), GRPC_HOST: '127.0.0.1', HTTP_HOST: '127.0.0.1' }),
    });
    server.stdout?.on('data', (d: Buffer) => (output += d.toString()));
    server.stderr?.on('data', (d: Buffer) => (output += d.toString()));
    const deadline = Date.now() + 30_000;
    while (!output.includes('usage-limiter serving')) {
      if (Date.now() > deadline || server.exitCode !== null) throw new Error(`server did not start:\n${output}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  afterAll(async () => {
    if (server && server.exitCode === null) {
      server.kill('SIGTERM');
      await new Promise((r) => server.once('exit', r));
    }
    rmSync(dir, { recursive: true, force: true });
  });

  const check = (...args: string[]) =>
    run(process.execPath, [BIN, 'check', '--target', `127.0.0.1:${grpcPort}`, ...args], { env: cleanEnv({}) });

  it('starts with PGlite, memory counters (with a warning) and the demo tenants', () => {
    expect(output).toContain('DATABASE_URL not set: using embedded PGlite');
    expect(output).toContain('REDIS_URL not set: counters are kept in process memory and are NOT shared between replicas');
  });

  it('check prints an allowed answer as HTTP, then the seed 429 on the eleventh read', async () => {
    const first = await check('--key', 'vk_live_FREE_PLAN_KEY', '--method', 'GET', '--path', '/usage');
    expect(first.stdout).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(first.stdout).toContain('X-RateLimit-Limit: 10\nX-RateLimit-Remaining: 9\n');
    expect(first.stdout).toContain('x-tenant-id: tenant_C_789');
    // Requests 2–10 only use up the window: sent in-process, so the test's time goes to the binary's output.
    for (let i = 2; i <= 10; i++) {
      await sendCheck({ key: 'vk_live_FREE_PLAN_KEY', method: 'GET', path: '/usage', target: `127.0.0.1:${grpcPort}`, headers: [], requestId: undefined, timeoutMs: 5000 });
    }
    const denied = await check('--key', 'vk_live_FREE_PLAN_KEY', '--request-id', 'rid-cli');
    const [head, body] = denied.stdout.split('\n\n');
    expect(head?.split('\n')[0]).toBe('HTTP/1.1 429 Too Many Requests');
    expect(head).toMatch(/\nRetry-After: \d+\n/);
    expect(head).toContain('Content-Type: application/json; charset=utf-8');
    expect(JSON.parse(body ?? '')).toEqual({ code: 'READ_RATE_LIMIT_EXCEEDED', message: 'Too many read requests. Please slow down.', requestId: 'rid-cli' });
  });

  it('serves /readyz and keeps API keys out of its log', async () => {
    const ready = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
    expect(ready.status).toBe(200);
    // The log is written through a buffer flushed every 0.1 s (src/logger.ts): the line arrives shortly.
    await vi.waitFor(() => expect(output).toContain('[billing] GET rate limit exceeded'), { timeout: 3000, interval: 50 });
    expect(output).not.toContain('vk_live_FREE_PLAN_KEY');
  });

  it('drains and exits 0 on SIGTERM', async () => {
    server.kill('SIGTERM');
    const code = await new Promise((r) => server.once('exit', r));
    expect(code).toBe(0);
    expect(output).toContain('shutdown complete');
  });

  it('a bad variable stops start-up naming it, without echoing the value', async () => {
    const err = await run(process.execPath, [BIN, 'serve'], { cwd: dir, env: cleanEnv({ GRPC_PORT: 'ninety', REDIS_URL: 'localhost:6379' }) }).catch((e: { code: number; stderr: string }) => e);
    expect(err).toMatchObject({ code: 78 });
    const stderr = (err as { stderr: string }).stderr;
    expect(stderr).toMatch(/GRPC_PORT: /);
    expect(stderr).toMatch(/REDIS_URL: must be a redis:\/\/ or rediss:\/\/ URL/);
    expect(stderr).not.toContain('ninety');
  });

  it('a Node without crypto.hash (before 20.12) is refused at start, naming the version needed', async () => {
    // crypto.hash removed before the binary loads, as on Node 20.11.
    const older = path.join(dir, 'no-crypto-hash.cjs');
    writeFileSync(older, "delete require('node:crypto').hash;\n");
    const err = await run(process.execPath, ['--require', older, BIN, 'serve'], { cwd: dir, env: cleanEnv({}) }).catch((e: { code: number; stderr: string }) => e);
    expect(err).toMatchObject({ code: 1 });
    expect((err as { stderr: string }).stderr).toBe(`usage-limiter: Node 20.12 or later is required (this is ${process.version})\n`);
  });

  it('an option a command does not take is a usage error that points at --help', async () => {
    for (const args of [['check', '--bogus'], ['keys', 'list', '--tenant'], ['apply', '--nope']]) {
      const err = await run(process.execPath, [BIN, ...args], { cwd: dir, env: cleanEnv({}) }).catch((e: { code: number; stderr: string }) => e);
      expect(err, args.join(' ')).toMatchObject({ code: 2 });
      const [first, second] = (err as { stderr: string }).stderr.split('\n');
      expect(first).toMatch(new RegExp(`^usage-limiter ${args[0]}: .*(Unknown option|argument missing)`));
      expect(second).toBe("(usage-limiter --help lists every command's options)");
    }
  });

  it('apply rejects a bad file listing every problem, and check without a server says so', async () => {
    const bad = path.resolve('test/fixtures/apply/several-problems.yaml');
    const err = await run(process.execPath, [BIN, 'apply', '-f', bad], { cwd: dir, env: cleanEnv({}) }).catch((e: { code: number; stderr: string }) => e);
    expect((err as { code: number }).code).toBe(1);
    expect((err as { stderr: string }).stderr.split('\n').filter((l) => l.includes('several-problems.yaml:')).length).toBeGreaterThan(1);
    const noServer = await run(process.execPath, [BIN, 'check', '--key', 'k', '--target', '127.0.0.1:1', '--timeout-ms', '500'], { env: cleanEnv({}) }).catch((e: { code: number; stderr: string }) => e);
    expect((noServer as { stderr: string }).stderr).toMatch(/Check to 127\.0\.0\.1:1 failed/);
  });
});

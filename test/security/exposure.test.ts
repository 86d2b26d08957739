// Who can reach what (README "Threat model"):
// - With no GRPC_HOST and HTTP_HOST, the real binary listens on loopback only (the image, docker compose and
//   k8s open 0.0.0.0 deliberately, behind their own fences: test/deploy/hardening.test.ts).
// - The access-log stream trusts what it is sent: whoever reaches the gRPC port and knows the request id of a
//   metered request of its own (clients see it: Envoy returns x-request-id) can have that unit given back by
//   forging a failed entry. This test pins down the blast radius the README states, which is why the port
//   must face Envoy alone: one unit per reservation still pending, within SETTLEMENT_WINDOW_SECONDS, never
//   twice, never below zero, never for a request that did not reserve, never across tenants.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/env.js';
import { createMemoryStore } from '../../src/store/memory-store.js';
import { AccessLogClient, entryFor } from '../helpers/access-log-client.js';
import { httpStatus, startHarness, type Harness } from '../helpers/harness.js';
import { BIN, cleanEnv, freePort } from '../helpers/server-process.js';

/** Listening TCP sockets of a process on `port`, as local `ip:port` strings (from /proc/<pid>/net/tcp{,6}). */
function listeners(pid: number, port: number): string[] {
  const out: string[] = [];
  for (const file of ['tcp', 'tcp6']) {
    let text = '';
    try {
      text = readFileSync(`/proc/${pid}/net/${file}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      const [addr, p] = (cols[1] ?? '').split(':');
      if (cols[3] !== '0A' || p === undefined || parseInt(p, 16) !== port) continue; // 0A: LISTEN
      const ip =
        file === 'tcp'
          ? (addr!.match(/../g) ?? []).reverse().map((h) => parseInt(h, 16)).join('.')
          : addr === '00000000000000000000000000000000'
            ? '::'
            : addr === '00000000000000000000000001000000'
              ? '::1'
              : addr!;
      out.push(`${ip}:${port}`);
    }
  }
  return out;
}

describe('listeners', () => {
  it('default to loopback in the configuration', () => {
    const c = loadConfig({});
    expect([c.grpcHost, c.httpHost]).toEqual(['127.0.0.1', '127.0.0.1']);
  });

  it('are bound to loopback only by the real binary started without GRPC_HOST and HTTP_HOST', { timeout: 60_000 }, async () => {
    const [grpcPort, httpPort] = [await freePort(), await freePort()];
    const dataDir = mkdtempSync(path.join(os.tmpdir(), 'ul-exposure-'));
    const child = spawn(process.execPath, [BIN, 'serve'], {
      env: cleanEnv({ GRPC_PORT: String(grpcPort), HTTP_PORT: String(httpPort), DATA_DIR: dataDir }),
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    try {
      const end = Date.now() + 45_000;
      while (!out.includes('usage-limiter serving')) {
        if (Date.now() > end || child.exitCode !== null) throw new Error(`server did not start:\n${out}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(listeners(child.pid!, grpcPort)).toEqual([`127.0.0.1:${grpcPort}`]);
      expect(listeners(child.pid!, httpPort)).toEqual([`127.0.0.1:${httpPort}`]);
    } finally {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('a forged access-log entry, from someone who reached the gRPC port', () => {
  const T0 = Date.UTC(2025, 8, 18, 12, 0, 0);
  const PRO = 'vk_live_PRO_ALMOST_FULL_KEY'; // tenant_E_111: /verify 10 a month
  let h: Harness;
  let logs: AccessLogClient;

  beforeAll(async () => {
    h = await startHarness({ env: { DATA_DIR: mkdtempSync(path.join(os.tmpdir(), 'ul-forge-')), SETTLEMENT_WINDOW_SECONDS: '60' }, nowMs: T0, store: createMemoryStore({ settlementWindowMs: 60_000 }) });
    logs = new AccessLogClient(h.app.grpcPort);
  });

  afterAll(async () => {
    logs?.close();
    await h?.stop();
  });

  const used = async () => (await h.app.store.usage('tenant_E_111', '2025-09')).endpoints['/verify'] ?? 0;

  it('gives back at most the unit of a pending reservation of its own, once, within the window', async () => {
    const served = await h.checkHttp({ key: PRO, method: 'POST', path: '/verify', requestId: 'mine-1' });
    expect(httpStatus(served)).toBe(200);
    expect(await used()).toBe(1);

    // The upstream answered 200, but a forged entry says 503: the unit comes back. This is the threat the
    // NetworkPolicy (and loopback by default) answers; the stream itself cannot tell Envoy from anyone else.
    await logs.send([[entryFor(served, 503)]]);
    expect(await used()).toBe(0);

    // Not twice, and Envoy's genuine entry arriving later refunds nothing more.
    await logs.send([[entryFor(served, 503), entryFor(served, 200)]]);
    expect(await used()).toBe(0);

    // Not for a request id that never reserved, not for another tenant's counters, never below zero.
    const fake = entryFor(served, 503);
    const fields = fake.common_properties!.metadata!.filter_metadata!['envoy.filters.http.ext_authz']!.fields!;
    fields.request_id = { stringValue: 'never-reserved' };
    await logs.send([[fake]]);
    const other = entryFor(served, 503);
    other.common_properties!.metadata!.filter_metadata!['envoy.filters.http.ext_authz']!.fields!.tenant_id = { stringValue: 'tenant_C_789' };
    await logs.send([[other]]);
    expect(await used()).toBe(0);
    expect((await h.app.store.usage('tenant_C_789', '2025-09')).endpoints['/verify'] ?? 0).toBe(0);

    // Not after the settlement window: by then the unit counts as served (and may be billed).
    const later = await h.checkHttp({ key: PRO, method: 'POST', path: '/verify', requestId: 'mine-2' });
    h.clock.now += 61_000;
    await logs.send([[entryFor(later, 503)]]);
    expect(await used()).toBe(1);
  });
});

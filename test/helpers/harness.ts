// Starts the whole server in-process on real ports (gRPC and HTTP on 127.0.0.1, port 0) against the real
// services, with a pinned clock and captured logs, and gives tests a real gRPC client.
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { startApp, type App, type AppOptions } from '../../src/app.js';
import { DEMO_TENANTS_FILE, loadConfig } from '../../src/config/env.js';
import type { CheckResponseMessage } from '../../src/grpc/check-mapping.js';
import { authorizationService, httpStatusNumber } from '../../src/grpc/protos.js';
import { buildCheckRequest } from '../../src/cli/check-command.js';
import { createLogger } from '../../src/logger.js';
import type { CounterStore } from '../../src/store/types.js';

export class LogCapture extends Writable {
  readonly lines: string[] = [];
  override _write(chunk: Buffer, _enc: string, cb: () => void): void {
    for (const l of chunk.toString('utf8').split('\n')) if (l.trim() !== '') this.lines.push(l);
    cb();
  }
  records(): Array<Record<string, unknown>> {
    return this.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  }
}

export interface Harness {
  readonly app: App;
  readonly logs: LogCapture;
  readonly clock: { now: number };
  check(req: unknown, deadlineMs?: number): Promise<CheckResponseMessage>;
  checkHttp(o: { key?: string; method?: string; path?: string; requestId?: string; headers?: Array<[string, string]> }): Promise<CheckResponseMessage>;
  stop(): Promise<void>;
}

export async function startHarness(o: {
  env: Record<string, string>;
  nowMs: number;
  store?: CounterStore;
  /** More AppOptions (telemetry, alert timings, a webhook POST stand-in). */
  app?: Omit<AppOptions, 'logger' | 'now' | 'store'>;
  /** Run on the wall clock instead of `clock` (tests with other processes that cannot share a pinned one). */
  realClock?: boolean;
}): Promise<Harness> {
  const config = loadConfig({
    GRPC_HOST: '127.0.0.1',
    GRPC_PORT: '0',
    HTTP_HOST: '127.0.0.1',
    HTTP_PORT: '0',
    LOG_LEVEL: 'info',
    APPLY_ON_START: DEMO_TENANTS_FILE,
    DIRECTORY_POLL_MS: '200',
    CHECK_TIMEOUT_MS: '1000',
    ...o.env,
  });
  const logs = new LogCapture();
  const clock = { now: o.nowMs };
  const app = await startApp(config, {
    logger: createLogger(config.logLevel, logs),
    now: o.realClock ? () => Date.now() : () => clock.now,
    ...(o.store ? { store: o.store } : {}),
    ...o.app,
  });
  const Client = authorizationService();
  const client = new Client(`127.0.0.1:${app.grpcPort}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    Check: (req: unknown, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: CheckResponseMessage) => void) => void;
  };
  const check = (req: unknown, deadlineMs = 5000) =>
    new Promise<CheckResponseMessage>((resolve, reject) => {
      client.Check(req, { deadline: Date.now() + deadlineMs }, (err, res) => (err ? reject(err) : resolve(res)));
    });
  return {
    app,
    logs,
    clock,
    check,
    checkHttp: (r) =>
      check(
        buildCheckRequest({
          key: r.key,
          method: r.method ?? 'GET',
          path: r.path ?? '/usage',
          target: '',
          headers: r.headers ?? [],
          requestId: r.requestId,
          timeoutMs: 5000,
        }),
      ),
    stop: async () => {
      client.close();
      await app.stop(1000);
    },
  };
}

/** Response headers of a CheckResponse as a plain name → value map (allowed or denied). */
export function responseHeaders(res: CheckResponseMessage): Record<string, string> {
  const list = res.denied_response?.headers ?? res.ok_response?.response_headers_to_add ?? [];
  return Object.fromEntries(list.map((h) => [h.header.key, h.header.value]));
}

export function httpStatus(res: CheckResponseMessage): number {
  return res.denied_response ? httpStatusNumber(res.denied_response.status.code) : 200;
}

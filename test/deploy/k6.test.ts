// There is no k6 binary here, so the load scripts are parsed with TypeScript's transpiler and then run in a
// Node vm against stand-ins for the k6 modules: the init context (options, proto loading) and a few
// iterations of every scenario. That catches syntax errors, wrong proto paths, CheckRequests Envoy's protos
// would reject, and checks that can never fail.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import vm from 'node:vm';
import protobuf from 'protobufjs';
import ts from 'typescript';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseApplyFile } from '../../src/admin/apply-schema.js';
import { EnvoyProtoValidator, formatProblems, PROTO_DEPS_ROOT } from './support/envoy-proto.js';
import { readYaml, repoPath, type Obj } from './support/repo.js';
import { seededRandom } from '../helpers/prng.js';

const require = createRequire(import.meta.url);

const K6_MODULES = new Set(['k6', 'k6/execution', 'k6/net/grpc', 'k6/http', 'k6/metrics', 'k6/data', 'k6/crypto', 'k6/encoding']);
const EXECUTORS = new Set([
  'shared-iterations', 'per-vu-iterations', 'constant-vus', 'ramping-vus',
  'constant-arrival-rate', 'ramping-arrival-rate', 'externally-controlled',
]);

interface CheckResult {
  readonly name: string;
  readonly passed: boolean;
}

/** Stand-ins for k6's modules that record what the script does with them. */
class K6Sandbox {
  readonly imports: string[] = [];
  readonly checks: CheckResult[] = [];
  readonly metrics = new Map<string, Array<number | boolean>>();
  readonly grpcLoads: Array<{ importPaths: string[]; files: string[] }> = [];
  readonly grpcCalls: Array<{ method: string; request: Obj }> = [];
  readonly httpCalls: Array<{ method: string; url: string; body: unknown; params: Obj }> = [];
  responseCallback: unknown;
  scenario = '';
  grpcAnswer: (request: Obj) => Obj = () => ({ status: 0, message: { status: { code: 0 } } });
  httpAnswer: (method: string, url: string, params: Obj) => Obj = () => ({ status: 200, headers: {}, body: '{}' });

  modules(): Record<string, unknown> {
    const sandbox = this;
    const metric = (kind: string) =>
      class {
        constructor(readonly name: string) {
          sandbox.metrics.set(name, []);
        }
        add(v: number | boolean) {
          sandbox.metrics.get(this.name)!.push(v);
        }
        get kind() {
          return kind;
        }
      };
    const check = (value: unknown, checks: Record<string, (v: unknown) => boolean>) => {
      let all = true;
      for (const [name, fn] of Object.entries(checks)) {
        const passed = Boolean(fn(value));
        sandbox.checks.push({ name, passed });
        all &&= passed;
      }
      return all;
    };
    const response = (method: string, url: string, params: Obj) => {
      const r = sandbox.httpAnswer(method, url, params);
      return { ...r, request: { url, method }, json: () => JSON.parse(r.body as string) };
    };
    return {
      k6: { check, sleep: () => undefined },
      'k6/execution': { __esModule: true, default: { scenario: { get name() { return sandbox.scenario; } } } },
      'k6/metrics': { Counter: metric('counter'), Rate: metric('rate'), Trend: metric('trend'), Gauge: metric('gauge') },
      'k6/net/grpc': {
        __esModule: true,
        default: {
          StatusOK: 0,
          Client: class {
            load(importPaths: string[], ...files: string[]) {
              sandbox.grpcLoads.push({ importPaths, files });
            }
            connect() {}
            close() {}
            invoke(method: string, request: Obj) {
              sandbox.grpcCalls.push({ method, request });
              return sandbox.grpcAnswer(request);
            }
          },
        },
      },
      'k6/http': {
        __esModule: true,
        default: {
          get: (url: string, params: Obj = {}) => {
            sandbox.httpCalls.push({ method: 'GET', url, body: undefined, params });
            return response('GET', url, params);
          },
          post: (url: string, body: unknown, params: Obj = {}) => {
            sandbox.httpCalls.push({ method: 'POST', url, body, params });
            return response('POST', url, params);
          },
          file: (data: string, filename: string, contentType: string) => ({ data, filename, contentType }),
          expectedStatuses: (...statuses: unknown[]) => ({ expectedStatuses: statuses }),
          setResponseCallback: (cb: unknown) => {
            sandbox.responseCallback = cb;
          },
        },
      },
    };
  }
}

interface LoadedScript {
  readonly sandbox: K6Sandbox;
  readonly exports: Obj;
  run(fn: string, times?: number): void;
}

function transpile(rel: string): string {
  const source = readFileSync(repoPath(rel), 'utf8');
  const out = ts.transpileModule(source, {
    fileName: path.basename(rel),
    reportDiagnostics: true,
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2020, allowJs: true, esModuleInterop: true },
  });
  const errors = (out.diagnostics ?? []).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'));
  if (errors.length > 0) throw new Error(`${rel}: ${errors.join('; ')}`);
  return out.outputText;
}

/** Runs the script's init context like k6 does, with k6's globals and our module stand-ins. */
function loadScript(rel: string, env: Record<string, string> = {}): LoadedScript {
  const sandbox = new K6Sandbox();
  const modules = sandbox.modules();
  const module = { exports: {} as Obj };
  const k6Require = (name: string) => {
    sandbox.imports.push(name);
    if (!(name in modules)) throw new Error(`${rel} imports ${name}, which is not a k6 module we know`);
    return modules[name];
  };
  const context = vm.createContext({ module, exports: module.exports, require: k6Require, __ENV: env, __VU: 1, __ITER: 0, console });
  // The scripts pick tenants and branches with Math.random; a seeded generator makes every run of these
  // tests see the same requests, so a rare branch cannot be missed by chance.
  (vm.runInContext('Math', context) as { random: () => number }).random = seededRandom(20261123);
  new vm.Script(transpile(rel), { filename: rel }).runInContext(context, { timeout: 5000 });
  return {
    sandbox,
    exports: module.exports,
    run(fn, times = 25) {
      const scenario = Object.entries<Obj>(module.exports.options.scenarios).find(([, s]) => s.exec === fn);
      sandbox.scenario = scenario ? scenario[0] : fn;
      for (let i = 0; i < times; i++) (module.exports[fn] as () => void)();
    },
  };
}

function expectSoundOptions(options: Obj, durationMetric: string, errorMetrics: string[]) {
  const scenarios = Object.entries<Obj>(options.scenarios);
  expect(scenarios.length).toBeGreaterThanOrEqual(3);
  for (const [name, s] of scenarios) {
    expect(EXECUTORS.has(s.executor), `${name}: executor ${s.executor}`).toBe(true);
    expect(typeof s.exec, name).toBe('string');
  }
  const thresholds = options.thresholds as Record<string, string[]>;
  const p95 = Object.entries(thresholds).filter(
    ([metric, rules]) => metric.startsWith(durationMetric) && rules.some((r) => /^p\(95\)<\d+$/.test(r)),
  );
  expect(p95.length, `a p(95) threshold on ${durationMetric}`).toBeGreaterThan(0);
  for (const m of errorMetrics) expect(thresholds[m], m).toEqual(expect.arrayContaining([expect.stringMatching(/^rate<0\.\d+$/)]));
  expect(thresholds.checks).toEqual(['rate>0.99']);
}

function failedChecks(sandbox: K6Sandbox): string[] {
  return sandbox.checks.filter((c) => !c.passed).map((c) => c.name);
}

const loadKeys = new Set(
  (readYaml('test/load/load-tenants.yaml').tenants as Obj[]).flatMap((t) => t.apiKeys as string[]),
);
const demoKeys = new Set(['vk_live_FREE_PLAN_KEY', 'vk_live_PRO_ALMOST_FULL_KEY']);

describe('test/load/load-tenants.yaml', () => {
  it('is a valid `usage-limiter apply` file', () => {
    const parsed = parseApplyFile(readFileSync(repoPath('test/load/load-tenants.yaml'), 'utf8'), 'load-tenants.yaml');
    expect(parsed.ok ? [] : parsed.problems).toEqual([]);
  });
});

describe('test/load/grpc-check.js', () => {
  const env = { PROTO_ROOT: PROTO_DEPS_ROOT, GRPC_ADDR: 'localhost:9191' };
  let script: LoadedScript;
  let validator: EnvoyProtoValidator;

  beforeAll(() => {
    script = loadScript('test/load/grpc-check.js', env);
    validator = EnvoyProtoValidator.load();
  });

  // Canned answers keyed on the API key, shaped like k6 decodes a CheckResponse.
  const answer = (request: Obj): Obj => {
    const key = request.attributes.request.http.headers['x-api-key'] as string;
    const deny = (status: string, code: string) => ({
      status: 0,
      message: { status: { code: 8 }, deniedResponse: { status: { code: status }, body: JSON.stringify({ code }) } },
    });
    if (loadKeys.has(key)) return { status: 0, message: { status: { code: 0 }, okResponse: {} } };
    if (key === 'vk_live_FREE_PLAN_KEY') return deny('TooManyRequests', 'READ_RATE_LIMIT_EXCEEDED');
    if (key === 'vk_live_PRO_ALMOST_FULL_KEY') return deny('TooManyRequests', 'USAGE_LIMIT_EXCEEDED');
    return deny('Unauthorized', 'INVALID_API_KEY');
  };

  it('imports only k6 modules', () => {
    expect(script.sandbox.imports.every((m) => K6_MODULES.has(m))).toBe(true);
    expect(script.sandbox.imports).toContain('k6/net/grpc');
  });

  it("loads Envoy's external_auth.proto from the PROTO_ROOT include folders, which hold it and its imports", () => {
    expect(script.sandbox.grpcLoads).toHaveLength(1);
    const { importPaths, files } = script.sandbox.grpcLoads[0]!;
    expect(files).toEqual(['envoy/service/auth/v3/external_auth.proto']);
    for (const p of importPaths) expect(existsSync(p), p).toBe(true);
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) => {
      const found = importPaths.map((d) => path.join(d, target)).find((p) => existsSync(p));
      // descriptor.proto is built into k6's parser (and shipped with protobufjs here).
      return found ?? path.join(path.dirname(require.resolve('protobufjs/package.json')), target);
    };
    root.loadSync(files, { keepCase: true });
    root.resolveAll();
    const [service, method] = (script.exports.CHECK_METHOD as string).split('/');
    expect(root.lookupService(service!).methods[method!]).toBeDefined();
  });

  it('finds the protos at its default PROTO_ROOT, relative to the script', () => {
    const defaultRoot = loadScript('test/load/grpc-check.js').sandbox.grpcLoads[0]!.importPaths[0]!;
    expect(existsSync(path.resolve(repoPath('test/load'), defaultRoot))).toBe(true);
  });

  it('sets p95 latency and error-rate thresholds over scenarios that name exported functions', () => {
    const { options } = script.exports;
    expectSoundOptions(options, 'grpc_req_duration', ['check_errors']);
    for (const s of Object.values<Obj>(options.scenarios)) expect(typeof script.exports[s.exec]).toBe('function');
  });

  it('sends CheckRequests that Envoy’s protos accept, for a mix of tenants', () => {
    script.sandbox.grpcAnswer = answer;
    for (const s of Object.values<Obj>(script.exports.options.scenarios)) script.run(s.exec);
    const calls = script.sandbox.grpcCalls;
    expect(new Set(calls.map((c) => c.method))).toEqual(new Set([script.exports.CHECK_METHOD]));
    for (const { request } of calls.slice(0, 50)) {
      const { problems } = validator.validate('envoy.service.auth.v3.CheckRequest', request);
      expect(problems, formatProblems(problems)).toEqual([]);
    }
    const keys = new Set(calls.map((c) => c.request.attributes.request.http.headers['x-api-key'] as string));
    expect([...keys].filter((k) => loadKeys.has(k)).length).toBeGreaterThan(5);
    expect([...keys].filter((k) => demoKeys.has(k))).toHaveLength(2);
    expect([...keys].some((k) => !loadKeys.has(k) && !demoKeys.has(k))).toBe(true);
    // Each request has its own id, as Envoy would give it.
    const ids = calls.map((c) => c.request.attributes.request.http.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(failedChecks(script.sandbox)).toEqual([]);
    expect(script.sandbox.metrics.get('check_errors')!.every((v) => v === false)).toBe(true);
  });

  it('counts an unexpected decision as an error', () => {
    const s = loadScript('test/load/grpc-check.js', env);
    s.sandbox.grpcAnswer = () => ({
      status: 0,
      message: { status: { code: 14 }, deniedResponse: { status: { code: 'ServiceUnavailable' }, body: '{}' } },
    });
    s.run('payingTenants', 3);
    expect(s.sandbox.metrics.get('check_errors')).toEqual([true, true, true]);
    expect(failedChecks(s.sandbox)).toHaveLength(3);
    s.sandbox.grpcAnswer = () => ({ status: 4, message: null });
    s.run('unknownKeys', 1);
    expect(s.sandbox.metrics.get('check_errors')!.at(-1)).toBe(true);
  });
});

describe('test/load/http-envoy.js', () => {
  const BASE = 'http://envoy.test:3000';
  const envoy = readYaml('envoy/envoy.yaml');
  const routes = envoy.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config
    .virtual_hosts[0].routes as Obj[];

  const answer = (_method: string, url: string, params: Obj): Obj => {
    const key = params.headers?.['X-API-Key'] as string | undefined;
    const requestId = 'b6f1c0de-0000-4000-8000-000000000000';
    const deny = (status: number, code: string, extra: Obj = {}) => ({
      status,
      headers: { 'Content-Type': 'application/json; charset=utf-8', 'X-Request-Id': requestId, ...extra },
      body: JSON.stringify({ code, message: code, requestId }),
    });
    const limited = { 'X-Ratelimit-Limit': '10', 'X-Ratelimit-Remaining': '0', 'X-Ratelimit-Reset': '1758217909', 'Retry-After': '58' };
    if (key === undefined) return deny(401, 'MISSING_API_KEY');
    if (key === 'vk_live_FREE_PLAN_KEY') return deny(429, 'READ_RATE_LIMIT_EXCEEDED', limited);
    if (key === 'vk_live_PRO_ALMOST_FULL_KEY') return deny(429, 'USAGE_LIMIT_EXCEEDED', limited);
    if (!loadKeys.has(key)) return deny(401, 'INVALID_API_KEY');
    const body = url.endsWith('/v1/usage') ? { tier: 'load' } : { tenantId: 'load_tenant_001', apiKeyForwarded: false };
    return { status: 200, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) };
  };

  it('imports only k6 modules and sets p95 latency and error-rate thresholds', () => {
    const s = loadScript('test/load/http-envoy.js', { BASE_URL: BASE });
    expect(s.sandbox.imports.every((m) => K6_MODULES.has(m))).toBe(true);
    expectSoundOptions(s.exports.options, 'http_req_duration', ['http_req_failed', 'unexpected_responses']);
    for (const sc of Object.values<Obj>(s.exports.options.scenarios)) expect(typeof s.exports[sc.exec]).toBe('function');
    // 401 and 429 are answers the scenarios expect, not failed requests.
    expect(s.sandbox.responseCallback).toEqual({ expectedStatuses: [{ min: 200, max: 299 }, 401, 429] });
  });

  it('calls the seed endpoints through Envoy for a mix of tenants, and its checks pass on correct answers', () => {
    const s = loadScript('test/load/http-envoy.js', { BASE_URL: BASE });
    s.sandbox.httpAnswer = answer;
    for (const sc of Object.values<Obj>(s.exports.options.scenarios)) s.run(sc.exec);
    const calls = s.sandbox.httpCalls;
    expect(calls.every((c) => c.url.startsWith(`${BASE}/`))).toBe(true);
    const paths = new Set(calls.map((c) => `${c.method} ${new URL(c.url).pathname}`));
    expect(paths).toEqual(new Set(['GET /usage', 'POST /verify', 'GET /v1/usage']));
    // /v1/usage must hit the route Envoy sends to the server, not the upstream catch-all.
    expect(routes.some((r) => r.match.prefix === '/v1/usage')).toBe(true);
    const keys = new Set(calls.map((c) => c.params.headers?.['X-API-Key']));
    expect([...keys].filter((k) => demoKeys.has(k))).toHaveLength(2);
    expect(keys.has(undefined)).toBe(true);
    const upload = calls.find((c) => c.method === 'POST')!;
    expect((upload.body as Obj).file.filename).toBe('sample.txt');
    expect(failedChecks(s.sandbox)).toEqual([]);
    expect(s.sandbox.metrics.get('unexpected_responses')!.every((v) => v === false)).toBe(true);
  });

  it('fails its checks when a 429 lacks the rate-limit headers or the request id', () => {
    const s = loadScript('test/load/http-envoy.js', { BASE_URL: BASE });
    s.sandbox.httpAnswer = () => ({
      status: 429,
      headers: { 'Content-Type': 'application/json; charset=utf-8' },
      body: JSON.stringify({ code: 'READ_RATE_LIMIT_EXCEEDED', requestId: 'x' }),
    });
    s.run('freeTierReads', 1);
    expect(failedChecks(s.sandbox)).toEqual(
      expect.arrayContaining(["429 requestId is Envoy's x-request-id", '429 has X-RateLimit-* and Retry-After']),
    );
  });
});

describe('test/load/README.md', () => {
  it('says how to run both scripts and where PROTO_ROOT points', () => {
    const readme = readFileSync(repoPath('test/load/README.md'), 'utf8');
    expect(readme).toContain('k6 run');
    expect(readme).toContain('test/load/grpc-check.js');
    expect(readme).toContain('test/load/http-envoy.js');
    expect(readme).toContain('PROTO_ROOT');
    expect(readme).toContain('node_modules/@grpc/grpc-js-xds/deps');
  });
});

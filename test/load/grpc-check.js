// k6 load test of usage-limiter's ext_authz Check, called directly over gRPC the way Envoy calls it.
// It loads Envoy's own protos from @grpc/grpc-js-xds (never copied into this repo):
//
//   k6 run -e PROTO_ROOT="$PWD/node_modules/@grpc/grpc-js-xds/deps" -e GRPC_ADDR=localhost:9191 \
//     test/load/grpc-check.js
//
// Scenarios mix tenants the way production traffic does: many paying tenants within their limits (the latency
// that matters), the seed's free tenant hammering its read-rate limit, the seed's pro tenant past its monthly
// quota, and callers with unknown keys. Apply test/load/load-tenants.yaml first. See test/load/README.md.
import { check } from 'k6';
import exec from 'k6/execution';
import grpc from 'k6/net/grpc';
import { Counter, Rate } from 'k6/metrics';

const PROTO_ROOT = __ENV.PROTO_ROOT || '../../node_modules/@grpc/grpc-js-xds/deps';
const GRPC_ADDR = __ENV.GRPC_ADDR || 'localhost:9191';
const DURATION = __ENV.DURATION || '1m';
const RATE = Number(__ENV.RATE || 200); // Checks per second from paying tenants
const LOAD_TENANTS = Number(__ENV.LOAD_TENANTS || 50); // how many of load-tenants.yaml to use
const P95_MS = Number(__ENV.P95_MS || 25);
const P99_MS = Number(__ENV.P99_MS || 50);

export const CHECK_METHOD = 'envoy.service.auth.v3.Authorization/Check';

const client = new grpc.Client();
// The include folders Envoy's protos need: its API, xDS/udpa annotations, googleapis (google/rpc/status),
// and protoc-gen-validate (validate/validate.proto).
client.load(
  [`${PROTO_ROOT}/envoy-api`, `${PROTO_ROOT}/xds`, `${PROTO_ROOT}/googleapis`, `${PROTO_ROOT}/protoc-gen-validate`],
  'envoy/service/auth/v3/external_auth.proto',
);

// Counted as errors: transport failures and any answer a scenario does not expect.
const checkErrors = new Rate('check_errors');
const allowed = new Counter('check_allowed');
const denied = new Counter('check_denied');

export const options = {
  scenarios: {
    paying_tenants: {
      executor: 'constant-arrival-rate',
      exec: 'payingTenants',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 20,
      maxVUs: 200,
    },
    free_tier_reads: {
      executor: 'constant-arrival-rate',
      exec: 'freeTierReads',
      rate: 5,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 2,
      maxVUs: 10,
    },
    exhausted_quota: {
      executor: 'constant-arrival-rate',
      exec: 'exhaustedQuota',
      rate: 2,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 2,
      maxVUs: 10,
    },
    unknown_keys: {
      executor: 'constant-arrival-rate',
      exec: 'unknownKeys',
      rate: 10,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 2,
      maxVUs: 20,
    },
  },
  thresholds: {
    // The budget that matters: Envoy gives the Check 250 ms, the server answers within 100 ms.
    'grpc_req_duration{scenario:paying_tenants}': [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`],
    grpc_req_duration: [`p(95)<${P95_MS}`],
    check_errors: ['rate<0.01'],
    checks: ['rate>0.99'],
  },
};

// Denials carry Envoy's HttpStatus enum, by name in k6's JSON view.
const HTTP_STATUS = { OK: 200, Unauthorized: 401, Forbidden: 403, TooManyRequests: 429, ServiceUnavailable: 503 };

function uuid() {
  return 'xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx'.replace(/[xy]/g, (c) => {
    const r = (Math.random() * 16) | 0;
    return (c === 'x' ? r : (r & 0x3) | 0x8).toString(16);
  });
}

export function loadTenantKey(i) {
  const n = String(i).padStart(3, '0');
  return `vk_load_${n}_LOAD_TEST_KEY`;
}

/** A CheckRequest shaped like the one Envoy sends for a client request. */
export function checkRequest(method, path, apiKey) {
  const id = uuid();
  const headers = {
    ':authority': 'api.example.com',
    ':method': method,
    ':path': path,
    ':scheme': 'http',
    'user-agent': 'k6-usage-limiter-load',
    'x-request-id': id,
  };
  if (apiKey) headers['x-api-key'] = apiKey;
  return {
    attributes: {
      source: { address: { socketAddress: { address: '203.0.113.10', portValue: 40000 } } },
      destination: { address: { socketAddress: { address: '10.0.0.1', portValue: 3000 } } },
      request: {
        time: new Date().toISOString(),
        http: { id, method, path, host: 'api.example.com', scheme: 'http', protocol: 'HTTP/1.1', headers },
      },
    },
  };
}

/** { allowed, status, code } from a CheckResponse as k6 decodes it (lowerCamel JSON). */
export function outcome(message) {
  const rpcStatus = (message && message.status && message.status.code) || 0;
  if (rpcStatus === 0) return { allowed: true, status: 200, code: null };
  const deniedResponse = message.deniedResponse || {};
  const raw = deniedResponse.status && deniedResponse.status.code;
  const status = typeof raw === 'number' ? raw : HTTP_STATUS[raw] || 0;
  let code = null;
  try {
    code = JSON.parse(deniedResponse.body || '{}').code || null;
  } catch (e) {
    code = null;
  }
  return { allowed: false, status, code };
}

let connected = false;

function callCheck(method, path, apiKey, expected) {
  if (!connected) {
    client.connect(GRPC_ADDR, { plaintext: true, timeout: '5s' });
    connected = true;
  }
  const res = client.invoke(CHECK_METHOD, checkRequest(method, path, apiKey), { timeout: '1s' });
  if (res.status !== grpc.StatusOK) {
    checkErrors.add(true);
    check(res, { 'Check RPC succeeded': () => false });
    return;
  }
  const got = outcome(res.message);
  if (got.allowed) allowed.add(1);
  else denied.add(1);
  const ok = expected.some((e) => e.allowed === got.allowed && e.status === got.status && e.code === got.code);
  checkErrors.add(!ok);
  check(got, { [`${exec.scenario.name}: expected decision`]: () => ok });
}

const ALLOWED = { allowed: true, status: 200, code: null };

export function payingTenants() {
  const key = loadTenantKey(1 + Math.floor(Math.random() * LOAD_TENANTS));
  // Mostly reads, some metered calls, a few usage lookups.
  const r = Math.random();
  if (r < 0.7) callCheck('GET', '/usage', key, [ALLOWED]);
  else if (r < 0.9) callCheck('POST', '/verify', key, [ALLOWED]);
  else callCheck('GET', '/v1/usage', key, [ALLOWED]);
}

export function freeTierReads() {
  // The seed's tenant_C_789: 10 GETs per 60 s, so most of these are 429s.
  callCheck('GET', '/usage', 'vk_live_FREE_PLAN_KEY', [
    ALLOWED,
    { allowed: false, status: 429, code: 'READ_RATE_LIMIT_EXCEEDED' },
  ]);
}

export function exhaustedQuota() {
  // The seed's tenant_E_111: 10 calls to /verify a month, then 429s.
  callCheck('POST', '/verify', 'vk_live_PRO_ALMOST_FULL_KEY', [
    ALLOWED,
    { allowed: false, status: 429, code: 'USAGE_LIMIT_EXCEEDED' },
  ]);
}

export function unknownKeys() {
  // A handful of keys, as a misconfigured client or a scraper would send: exercises the negative cache
  // rather than a database lookup per request.
  const key = `vk_live_UNKNOWN_KEY_${1 + Math.floor(Math.random() * 5)}`;
  callCheck('GET', '/usage', key, [{ allowed: false, status: 401, code: 'INVALID_API_KEY' }]);
}

// k6 load test of the whole HTTP path: client -> Envoy (:3000) -> ext_authz Check -> upstream, as users see it.
//
//   docker compose up -d --build
//   docker compose run --rm -v "$PWD/test/load:/load:ro" usage-limiter apply -f /load/load-tenants.yaml
//   k6 run test/load/http-envoy.js                     # BASE_URL defaults to http://localhost:3000
//
// Scenarios mix tenants: paying tenants within their limits (the latency budget), the seed's free tenant
// over its read-rate limit, the seed's pro tenant over its /verify quota, and callers without a valid key.
// Besides latency it checks the contract clients rely on: 429s carry X-RateLimit-* and Retry-After and a JSON
// body whose requestId is the x-request-id Envoy returned. See test/load/README.md.
import { check } from 'k6';
import exec from 'k6/execution';
import http from 'k6/http';
import { Rate } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://localhost:3000').replace(/\/$/, '');
const DURATION = __ENV.DURATION || '1m';
const RATE = Number(__ENV.RATE || 100); // requests per second from paying tenants
const LOAD_TENANTS = Number(__ENV.LOAD_TENANTS || 50);
const P95_MS = Number(__ENV.P95_MS || 50);
const P99_MS = Number(__ENV.P99_MS || 150);
// The compose demo upstream echoes what it received; a real API will not, so these checks can be turned off.
const ECHO_UPSTREAM = (__ENV.ECHO_UPSTREAM || '1') !== '0';

// Only statuses no scenario expects count as failed requests (401 and 429 are answers, not failures).
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }, 401, 429));

const unexpected = new Rate('unexpected_responses');

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
      rate: 2,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 2,
      maxVUs: 10,
    },
    exhausted_quota: {
      executor: 'constant-arrival-rate',
      exec: 'exhaustedQuota',
      rate: 1,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 2,
      maxVUs: 10,
    },
    bad_keys: {
      executor: 'constant-arrival-rate',
      exec: 'badKeys',
      rate: 5,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 2,
      maxVUs: 10,
    },
  },
  thresholds: {
    'http_req_duration{scenario:paying_tenants,expected_response:true}': [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`],
    // Denials are answered by Envoy from the Check alone: no upstream, so they must be fast too.
    'http_req_duration{scenario:free_tier_reads}': [`p(95)<${P95_MS}`],
    http_req_failed: ['rate<0.01'],
    unexpected_responses: ['rate<0.01'],
    checks: ['rate>0.99'],
  },
};

export function loadTenantKey(i) {
  const n = String(i).padStart(3, '0');
  return `vk_load_${n}_LOAD_TEST_KEY`;
}

function jsonBody(res) {
  try {
    return res.json();
  } catch (e) {
    return null;
  }
}

/** Checks a response against what the scenario allows; returns whether it was one of them. */
function expectOneOf(res, allowedStatuses) {
  const ok = allowedStatuses.indexOf(res.status) >= 0;
  unexpected.add(!ok);
  check(res, { [`${exec.scenario.name}: status in ${allowedStatuses.join('/')}`]: () => ok });
  return ok;
}

function checkAllowed(res) {
  if (res.status !== 200 || !ECHO_UPSTREAM || res.request.url.indexOf('/v1/usage') >= 0) return;
  const body = jsonBody(res) || {};
  check(res, {
    'upstream got x-tenant-id from the Check': () => typeof body.tenantId === 'string' && body.tenantId.length > 0,
    'upstream never sees the API key': () => body.apiKeyForwarded === false,
  });
}

function checkDenied(res, status, code) {
  if (res.status !== status) return;
  const body = jsonBody(res) || {};
  const checks = {
    [`${status} has a JSON body`]: () => String(res.headers['Content-Type']).indexOf('application/json; charset=utf-8') === 0,
    [`${status} body code is ${code}`]: () => body.code === code,
    [`${status} requestId is Envoy's x-request-id`]: () =>
      typeof body.requestId === 'string' && body.requestId === res.headers['X-Request-Id'],
  };
  if (status === 429) {
    checks['429 has X-RateLimit-* and Retry-After'] = () =>
      ['X-Ratelimit-Limit', 'X-Ratelimit-Remaining', 'X-Ratelimit-Reset', 'Retry-After'].every(
        (h) => res.headers[h] !== undefined,
      );
  }
  check(res, checks);
}

function get(path, key, name) {
  const headers = key ? { 'X-API-Key': key } : {};
  return http.get(`${BASE_URL}${path}`, { headers, tags: { name } });
}

function verify(key) {
  const payload = { file: http.file('hello from k6\n', 'sample.txt', 'text/plain') };
  return http.post(`${BASE_URL}/verify`, payload, { headers: { 'X-API-Key': key }, tags: { name: 'POST /verify' } });
}

export function payingTenants() {
  const key = loadTenantKey(1 + Math.floor(Math.random() * LOAD_TENANTS));
  const r = Math.random();
  let res;
  if (r < 0.7) res = get('/usage', key, 'GET /usage');
  else if (r < 0.9) res = verify(key);
  else res = get('/v1/usage', key, 'GET /v1/usage');
  if (expectOneOf(res, [200])) checkAllowed(res);
}

export function freeTierReads() {
  // The seed transcript's first half: 10 GETs per 60 s for tenant_C_789, then 429s.
  const res = get('/usage', 'vk_live_FREE_PLAN_KEY', 'GET /usage (free tier)');
  expectOneOf(res, [200, 429]);
  checkAllowed(res);
  checkDenied(res, 429, 'READ_RATE_LIMIT_EXCEEDED');
}

export function exhaustedQuota() {
  // The seed transcript's second half: tenant_E_111 at its /verify quota.
  const res = verify('vk_live_PRO_ALMOST_FULL_KEY');
  expectOneOf(res, [200, 429]);
  checkAllowed(res);
  checkDenied(res, 429, 'USAGE_LIMIT_EXCEEDED');
}

export function badKeys() {
  if (Math.random() < 0.5) {
    const res = get('/usage', null, 'GET /usage (no key)');
    expectOneOf(res, [401]);
    checkDenied(res, 401, 'MISSING_API_KEY');
  } else {
    const res = get('/usage', `vk_live_UNKNOWN_KEY_${1 + Math.floor(Math.random() * 5)}`, 'GET /usage (unknown key)');
    expectOneOf(res, [401]);
    checkDenied(res, 401, 'INVALID_API_KEY');
  }
}

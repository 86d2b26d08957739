// Every Envoy config we ship (envoy/*.yaml and those embedded in k8s ConfigMaps) is checked against Envoy's
// own API protos, then against the choices the README promises. There is no Envoy binary here, so this is
// what stands between a typo and an Envoy that refuses to start.
import { readdirSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { EnvoyProtoValidator, formatProblems, type Visited } from './support/envoy-proto.js';
import { envoyConfigsInConfigMaps, KUSTOMIZE_TARGETS, kustomize, readYaml, type Obj } from './support/repo.js';

const T = {
  hcm: 'envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
  extAuthz: 'envoy.extensions.filters.http.ext_authz.v3.ExtAuthz',
  extAuthzPerRoute: 'envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute',
  als: 'envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig',
  cluster: 'envoy.config.cluster.v3.Cluster',
  route: 'envoy.config.route.v3.Route',
  listener: 'envoy.config.listener.v3.Listener',
  headerValueOption: 'envoy.config.core.v3.HeaderValueOption',
  httpProtocolOptions: 'envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
} as const;

// The server's defaults (src/config/env.ts): GRPC_PORT, HTTP_PORT and CHECK_TIMEOUT_MS.
const SERVER_GRPC_PORT = 9191;
const SERVER_HTTP_PORT = 8081;
const SERVER_CHECK_TIMEOUT_S = 0.1;

interface Subject {
  readonly name: string;
  readonly config: Obj;
}

function collectConfigs(): Subject[] {
  const subjects: Subject[] = readdirSync(new URL('../../envoy/', import.meta.url))
    .filter((f) => /\.ya?ml$/.test(f))
    .sort()
    .map((f) => ({ name: `envoy/${f}`, config: readYaml(`envoy/${f}`) }));
  const seen = new Set<string>();
  for (const target of KUSTOMIZE_TARGETS) {
    for (const cm of envoyConfigsInConfigMaps(kustomize(target))) {
      const key = JSON.stringify(cm.config);
      if (seen.has(key)) continue;
      seen.add(key);
      subjects.push({ name: `${target} ConfigMap ${cm.name}/${cm.key}`, config: cm.config });
    }
  }
  return subjects;
}

const SUBJECTS = collectConfigs();
let validator: EnvoyProtoValidator;

beforeAll(() => {
  validator = EnvoyProtoValidator.load();
});

const seconds = (d: string) => Number(d.replace(/s$/, ''));
const ofType = (visited: readonly Visited[], type: string) => visited.filter((v) => v.type === type);

function clusterEndpoints(cluster: Obj): Array<{ address: string; port: number }> {
  return (cluster.load_assignment?.endpoints ?? []).flatMap((e: Obj) =>
    (e.lb_endpoints ?? []).map((lb: Obj) => ({
      address: lb.endpoint.address.socket_address.address as string,
      port: lb.endpoint.address.socket_address.port_value as number,
    })),
  );
}

function extAuthzDisabled(route: Obj): boolean {
  const perRoute = route.typed_per_filter_config?.['envoy.filters.http.ext_authz'];
  return perRoute?.['@type']?.endsWith(`/${T.extAuthzPerRoute}`) === true && perRoute.disabled === true;
}

describe('Envoy configs shipped with the project', () => {
  it('includes the docker compose config and the one embedded in the plain-envoy k8s ConfigMap', () => {
    const names = SUBJECTS.map((s) => s.name);
    expect(names).toContain('envoy/envoy.yaml');
    expect(names.some((n) => n.startsWith('k8s/overlays/plain-envoy ConfigMap usage-limiter-envoy'))).toBe(true);
  });
});

describe.each(SUBJECTS)('$name', ({ config }) => {
  let visited: Visited[];

  beforeAll(() => {
    const result = validator.validateBootstrap(config);
    visited = result.visited;
    // Surfacing every problem at once beats fixing them one failed run at a time.
    expect(result.problems, `\n${formatProblems(result.problems)}`).toEqual([]);
  });

  const extAuthz = () => {
    const found = ofType(visited, T.extAuthz);
    expect(found).toHaveLength(1);
    return found[0]!.value;
  };
  const clusters = () => new Map(ofType(visited, T.cluster).map((c) => [c.value.name as string, c.value]));
  const routes = () => ofType(visited, T.route).map((r) => r.value);
  const authzClusterName = () => extAuthz().grpc_service.envoy_grpc.cluster_name as string;

  it('listens on port 3000 like the seed API', () => {
    const ports = ofType(visited, T.listener).map((l) => l.value.address.socket_address.port_value);
    expect(ports).toContain(3000);
  });

  it('calls the server over gRPC with the v3 API, an explicit timeout above its own deadline, failing closed with 503', () => {
    const f = extAuthz();
    expect(f.transport_api_version).toBe('V3');
    expect(f.grpc_service.envoy_grpc.cluster_name).toBeTruthy();
    const timeout = seconds(f.grpc_service.timeout);
    expect(timeout).toBeGreaterThan(SERVER_CHECK_TIMEOUT_S);
    expect(timeout).toBeLessThanOrEqual(1);
    expect(f.failure_mode_allow).toBe(false);
    expect(f.status_on_error).toEqual({ code: 'ServiceUnavailable' });
    // Request bodies (uploads) are never buffered or sent to the server.
    expect(f.with_request_body).toBeUndefined();
    expect(f.withRequestBody).toBeUndefined();
  });

  it('runs ext_authz before the router, and only once', () => {
    const hcm = ofType(visited, T.hcm);
    expect(hcm).toHaveLength(1);
    const names = (hcm[0]!.value.http_filters as Obj[]).map((f) => f.name);
    expect(names).toEqual(['envoy.filters.http.ext_authz', 'envoy.filters.http.router']);
  });

  it('speaks HTTP/2 to the authz cluster, with a gRPC health check on the Authorization service', () => {
    const cluster = clusters().get(authzClusterName());
    expect(cluster).toBeDefined();
    const opts = cluster!.typed_extension_protocol_options?.['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'];
    expect(opts?.['@type']).toBe(`type.googleapis.com/${T.httpProtocolOptions}`);
    expect(opts.explicit_http_config.http2_protocol_options).toBeDefined();
    const grpcChecks = (cluster!.health_checks as Obj[]).filter((h) => h.grpc_health_check);
    expect(grpcChecks).toHaveLength(1);
    expect(grpcChecks[0]!.grpc_health_check.service_name).toBe('envoy.service.auth.v3.Authorization');
    expect(clusterEndpoints(cluster!).map((e) => e.port)).toEqual([SERVER_GRPC_PORT]);
  });

  it('streams access logs (with ext_authz metadata) to the server cluster for settlement', () => {
    const als = ofType(visited, T.als);
    expect(als).toHaveLength(1);
    const common = als[0]!.value.common_config;
    expect(common.transport_api_version).toBe('V3');
    expect(common.log_name).toBeTruthy();
    expect(common.grpc_service.envoy_grpc.cluster_name).toBe(authzClusterName());
    // Only entries whose Check reserved quota are streamed: the server sets reserved=true in the ext_authz
    // namespace (src/grpc/check-mapping.ts); anything looser floods the stream, anything tighter loses refunds.
    const hcm = ofType(visited, T.hcm)[0]!.value;
    const logger = (hcm.access_log as Obj[]).find((l) => l.name === 'envoy.access_loggers.http_grpc')!;
    expect(logger.filter.metadata_filter).toEqual({
      matcher: { filter: 'envoy.filters.http.ext_authz', path: [{ key: 'reserved' }], value: { bool_match: true } },
      match_if_key_not_found: false,
    });
  });

  it('sets append_action on every header option and never the deprecated append', () => {
    for (const hvo of ofType(visited, T.headerValueOption)) {
      expect(hvo.value.append_action ?? hvo.value.appendAction, hvo.path).toBe('OVERWRITE_IF_EXISTS_OR_ADD');
      expect(hvo.value.append, hvo.path).toBeUndefined();
    }
  });

  it('skips ext_authz for health endpoints and the Stripe webhook, and only for them', () => {
    const all = routes();
    const byPath = (p: string) => all.filter((r) => r.match.path === p || r.match.prefix === p);
    for (const p of ['/healthz', '/readyz', '/webhooks/stripe']) {
      const matching = byPath(p);
      expect(matching, p).toHaveLength(1);
      expect(extAuthzDisabled(matching[0]!), p).toBe(true);
    }
    const disabled = all.filter(extAuthzDisabled).map((r) => r.match.path ?? r.match.prefix);
    expect(disabled.sort()).toEqual(['/healthz', '/readyz', '/webhooks/stripe']);
  });

  it('routes /v1/usage (authorised) and the webhook to the server HTTP port, everything else upstream', () => {
    const all = routes();
    const cl = clusters();
    const usage = all.find((r) => r.match.prefix === '/v1/usage' || r.match.path === '/v1/usage');
    expect(usage).toBeDefined();
    expect(extAuthzDisabled(usage!)).toBe(false);
    const serverHttp = cl.get(usage!.route.cluster)!;
    expect(clusterEndpoints(serverHttp).map((e) => e.port)).toEqual([SERVER_HTTP_PORT]);
    const webhook = all.find((r) => r.match.path === '/webhooks/stripe')!;
    expect(webhook.route.cluster).toBe(usage!.route.cluster);

    const catchAll = all.at(-1)!;
    expect(catchAll.match).toEqual({ prefix: '/' });
    expect(extAuthzDisabled(catchAll)).toBe(false);
    expect([usage!.route.cluster, authzClusterName()]).not.toContain(catchAll.route.cluster);
  });

  it('makes Envoy generate every x-request-id and strips identity headers clients could forge', () => {
    const hcm = ofType(visited, T.hcm)[0]!.value;
    expect(hcm.generate_request_id).not.toBe(false);
    expect(hcm.preserve_external_request_id ?? false).toBe(false);
    const removed = (hcm.early_header_mutation_extensions as Obj[]).flatMap((e) =>
      (e.typed_config.mutations as Obj[]).map((m) => m.remove),
    );
    expect(removed).toEqual(
      expect.arrayContaining(['x-request-id', 'x-tenant-id', 'x-tenant-tier', 'x-usage-limiter-degraded']),
    );
  });
});

describe('the k8s Envoy config', () => {
  // Only addresses, admin binding and DNS settings may differ from the documented compose config.
  it('has the same filters and routes as envoy/envoy.yaml', () => {
    const compose = SUBJECTS.find((s) => s.name === 'envoy/envoy.yaml')!.config;
    const k8s = SUBJECTS.find((s) => s.name.includes('plain-envoy'))!.config;
    const hcmOf = (c: Obj) => c.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
    const normalise = (routes: Obj[]) =>
      routes.map((r) => ({ ...r, route: r.route ? { ...r.route, cluster: r.route.cluster.replace('demo_upstream', 'api_upstream') } : undefined }));
    const a = hcmOf(compose);
    const b = hcmOf(k8s);
    expect(b.http_filters).toEqual(a.http_filters);
    expect(b.access_log).toEqual(a.access_log);
    expect(b.early_header_mutation_extensions).toEqual(a.early_header_mutation_extensions);
    expect(normalise(b.route_config.virtual_hosts[0].routes)).toEqual(normalise(a.route_config.virtual_hosts[0].routes));
  });
});

describe('the validator itself', () => {
  // Mutates a fresh copy of the real config so each negative case differs by exactly one mistake.
  const base = () => structuredClone(readYaml('envoy/envoy.yaml'));
  const hcmOf = (c: Obj) => c.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
  const extAuthzOf = (c: Obj) => hcmOf(c).http_filters[0].typed_config;
  const problemsOf = (c: Obj) => validator.validateBootstrap(c).problems;

  it('accepts the unmodified config', () => {
    expect(problemsOf(base())).toEqual([]);
  });

  it('accepts lowerCamel field names as Envoy does', () => {
    const c = base();
    const f = extAuthzOf(c);
    f.failureModeAllow = f.failure_mode_allow;
    delete f.failure_mode_allow;
    expect(problemsOf(c)).toEqual([]);
  });

  it('rejects an unknown field', () => {
    const c = base();
    extAuthzOf(c).timeout_ms = 250;
    expect(problemsOf(c)).toEqual([
      expect.objectContaining({ message: expect.stringContaining('unknown field "timeout_ms"') }),
    ]);
  });

  it('rejects a value of the wrong type', () => {
    const c = base();
    extAuthzOf(c).failure_mode_allow = 'no';
    c.static_resources.listeners[0].address.socket_address.port_value = 'three thousand';
    const problems = problemsOf(c);
    expect(problems).toHaveLength(2);
    expect(problems).toEqual(
      expect.arrayContaining([
        { path: expect.stringMatching(/\.failure_mode_allow$/), message: 'expected bool, got string "no"' },
        { path: expect.stringMatching(/\.port_value$/), message: 'expected uint32, got string "three thousand"' },
      ]),
    );
  });

  it('rejects a Duration written as a number and an enum value that does not exist', () => {
    const c = base();
    extAuthzOf(c).grpc_service.timeout = 0.25;
    extAuthzOf(c).transport_api_version = 'V4';
    const messages = problemsOf(c).map((p) => p.message);
    expect(messages).toHaveLength(2);
    expect(messages).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/Duration expects a string like "0.25s"/),
        expect.stringMatching(/"V4" is not a value of enum envoy.config.core.v3.ApiVersion/),
      ]),
    );
  });

  it('rejects an unknown @type', () => {
    const c = base();
    hcmOf(c).http_filters[0].typed_config['@type'] =
      'type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthorization';
    expect(problemsOf(c)).toEqual([
      expect.objectContaining({ message: expect.stringContaining('unknown @type') }),
    ]);
  });

  it('validates the fields of a typed_config against its @type', () => {
    const c = base();
    // A field of ExtAuthz placed on the Router: only resolving @type can catch it.
    hcmOf(c).http_filters[1].typed_config.failure_mode_allow = false;
    expect(problemsOf(c)).toEqual([
      expect.objectContaining({ message: 'unknown field "failure_mode_allow" on envoy.extensions.filters.http.router.v3.Router' }),
    ]);
  });

  it('rejects the deprecated append on a header option (our rule: append_action only)', () => {
    const c = base();
    const usage = hcmOf(c).route_config.virtual_hosts[0].routes.find((r: Obj) => r.match.prefix === '/v1/usage');
    usage.response_headers_to_add[0].append = false;
    expect(problemsOf(c)).toEqual([
      expect.objectContaining({ message: expect.stringContaining('HeaderValueOption.append is deprecated') }),
    ]);
  });

  it('rejects two members of a oneof and a missing required message', () => {
    const c = base();
    extAuthzOf(c).http_service = { path_prefix: '/check' };
    delete hcmOf(c).access_log[0].typed_config.common_config.grpc_service;
    const messages = problemsOf(c).map((p) => p.message);
    expect(messages).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/oneof services of ExtAuthz has 2 members set/),
        expect.stringMatching(/CommonGrpcAccessLogConfig.grpc_service is required/),
      ]),
    );
  });

  it('rejects a list where Envoy expects a single message', () => {
    const c = base();
    extAuthzOf(c).status_on_error = [{ code: 'ServiceUnavailable' }];
    expect(problemsOf(c)).toEqual([
      expect.objectContaining({ message: expect.stringContaining('expected a envoy.type.v3.HttpStatus object') }),
    ]);
  });
});

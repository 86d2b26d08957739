// The kustomize base and each proxy integration are rendered with `kubectl kustomize` (what `kubectl apply -k`
// sends) and every object is validated against its schema, then against the wiring that makes it work:
// probes on the right port, Services that reach the pods, policies that target what exists, and a
// NetworkPolicy that lets only Envoy call Check.
import { readFileSync } from 'node:fs';
import { Deployment } from 'kubernetes-models/apps/v1';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ConfigMap, Namespace, Secret, Service, ServiceAccount } from 'kubernetes-models/v1';
import { Gateway, HTTPRoute } from '@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1';
import {
  ClientTrafficPolicy,
  EnvoyProxy,
  SecurityPolicy,
} from '@kubernetes-models/envoy-gateway/gateway.envoyproxy.io/v1alpha1';
import { IstioOperator } from '@kubernetes-models/istio/install.istio.io/v1alpha1';
import {
  Gateway as IstioGateway,
  VirtualService,
} from '@kubernetes-models/istio/networking.istio.io/v1beta1';
import { AuthorizationPolicy } from '@kubernetes-models/istio/security.istio.io/v1';
import { Telemetry } from '@kubernetes-models/istio/telemetry.istio.io/v1alpha1';
import { describe, expect, it } from 'vitest';
import { byKind, KUSTOMIZE_TARGETS, kustomize, one, parseYaml, readYaml, repoPath, type Obj } from './support/repo.js';

type ModelClass = new (data: any) => { validate(): void };

// Every kind we ship must be here: an object without a schema fails the test rather than go unchecked.
const MODELS: Record<string, ModelClass> = {
  'v1/Namespace': Namespace,
  'v1/ServiceAccount': ServiceAccount,
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'gateway.networking.k8s.io/v1/Gateway': Gateway,
  'gateway.networking.k8s.io/v1/HTTPRoute': HTTPRoute,
  'gateway.envoyproxy.io/v1alpha1/SecurityPolicy': SecurityPolicy,
  'gateway.envoyproxy.io/v1alpha1/EnvoyProxy': EnvoyProxy,
  'gateway.envoyproxy.io/v1alpha1/ClientTrafficPolicy': ClientTrafficPolicy,
  'security.istio.io/v1/AuthorizationPolicy': AuthorizationPolicy,
  'telemetry.istio.io/v1alpha1/Telemetry': Telemetry,
  'networking.istio.io/v1beta1/Gateway': IstioGateway,
  'networking.istio.io/v1beta1/VirtualService': VirtualService,
};

// The server's environment contract (src/config/env.ts) plus Node's and OpenTelemetry's standard variables.
const KNOWN_ENV = new Set([
  'GRPC_HOST', 'GRPC_PORT', 'HTTP_HOST', 'HTTP_PORT', 'DATABASE_URL', 'DATA_DIR', 'REDIS_URL',
  'REDIS_KEY_PREFIX', 'LOG_LEVEL', 'APPLY_ON_START', 'MIGRATE_ON_START', 'CHECK_TIMEOUT_MS',
  'KEY_CACHE_TTL_SECONDS', 'KEY_CACHE_NEGATIVE_TTL_SECONDS', 'KEY_CACHE_MAX_ENTRIES', 'DIRECTORY_POLL_MS',
  'STRIPE_SECRET_KEY', 'STRIPE_WEBHOOK_SECRET', 'STRIPE_API_BASE', 'NODE_ENV', 'NODE_OPTIONS',
  'USAGE_API_TRUST_TENANT_HEADER', 'ALERT_WEBHOOK_URL', 'ALERT_WEBHOOK_SECRET',
]);

const NAMESPACE = 'usage-limiter';
const APP = 'usage-limiter';

const matches = (selector: Record<string, string> | undefined, labels: Record<string, string> | undefined) =>
  selector !== undefined &&
  Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);

/**
 * kustomize wraps long base64 Secret values across lines; the API server's decoder (Go's encoding/base64)
 * skips newlines, but the schema's `format: byte` check does not.
 */
function forSchema(obj: Obj): Obj {
  if (obj.kind !== 'Secret' || !obj.data) return obj;
  const data = Object.fromEntries(Object.entries<string>(obj.data).map(([k, v]) => [k, v.replace(/\n/g, '')]));
  return { ...obj, data };
}

const containersOf = (d: Obj): Obj[] => d.spec.template.spec.containers;
const server = (objects: Obj[]) => one(objects, 'Deployment', APP);
const serverContainer = (objects: Obj[]) => containersOf(server(objects)).find((c) => c.name === APP)!;

/** Resolves a probe's or Service's named port against a container's ports. */
function containerPort(container: Obj, port: number | string): number {
  if (typeof port === 'number') return port;
  const found = (container.ports as Obj[]).find((p) => p.name === port);
  if (!found) throw new Error(`container ${container.name} has no port named ${port}`);
  return found.containerPort as number;
}

/** The server's GRPC_PORT / HTTP_PORT as configured by the rendered ConfigMap. */
function serverEnv(objects: Obj[]): Record<string, string> {
  const c = serverContainer(objects);
  const env: Record<string, string> = {};
  for (const src of c.envFrom ?? []) {
    if (src.configMapRef) Object.assign(env, one(objects, 'ConfigMap', src.configMapRef.name).data);
    if (src.secretRef) {
      for (const k of Object.keys(one(objects, 'Secret', src.secretRef.name).data ?? {})) env[k] = '(secret)';
    }
  }
  for (const e of c.env ?? []) env[e.name] = e.value ?? '(ref)';
  return env;
}

describe.each(KUSTOMIZE_TARGETS)('kubectl kustomize %s', (target) => {
  const objects = kustomize(target);

  it('renders objects that all validate against their Kubernetes schemas', () => {
    expect(objects.length).toBeGreaterThan(5);
    for (const obj of objects) {
      const id = `${obj.apiVersion}/${obj.kind}`;
      const Model = MODELS[id];
      expect(Model, `no schema registered for ${id}`).toBeDefined();
      expect(() => new Model!(forSchema(obj)).validate(), `${id} ${obj.metadata?.name}`).not.toThrow();
    }
  });

  it('puts the server in its own namespace, with restricted pod security', () => {
    const ns = one(objects, 'Namespace', NAMESPACE);
    expect(ns.metadata.labels['pod-security.kubernetes.io/enforce']).toBe('restricted');
    for (const obj of objects.filter((o) => o.kind !== 'Namespace')) {
      // Istio policies for the ingress gateway must sit next to it.
      const expected = ['AuthorizationPolicy', 'Telemetry'].includes(obj.kind) ? 'istio-system' : NAMESPACE;
      expect(obj.metadata.namespace, `${obj.kind}/${obj.metadata.name}`).toBe(expected);
    }
  });

  it('probes /healthz (liveness) and /readyz (readiness) on the HTTP port', () => {
    const c = serverContainer(objects);
    const env = serverEnv(objects);
    const httpPort = Number(env.HTTP_PORT);
    expect(c.livenessProbe.httpGet.path).toBe('/healthz');
    expect(containerPort(c, c.livenessProbe.httpGet.port)).toBe(httpPort);
    expect(c.readinessProbe.httpGet.path).toBe('/readyz');
    expect(containerPort(c, c.readinessProbe.httpGet.port)).toBe(httpPort);
    if (c.startupProbe) expect(containerPort(c, c.startupProbe.httpGet.port)).toBe(httpPort);
    expect(c.lifecycle.preStop).toBeDefined();
  });

  it('declares container ports that match GRPC_PORT and HTTP_PORT, and only known variables', () => {
    const c = serverContainer(objects);
    const env = serverEnv(objects);
    expect(containerPort(c, 'grpc')).toBe(Number(env.GRPC_PORT));
    expect(containerPort(c, 'http')).toBe(Number(env.HTTP_PORT));
    for (const name of Object.keys(env)) {
      const ok = KNOWN_ENV.has(name) || name.startsWith('OTEL_') || ['POD_NAME', 'POD_NAMESPACE'].includes(name);
      expect(ok, `unknown variable ${name}`).toBe(true);
    }
    expect(env.DATABASE_URL).toBe('(secret)');
    expect(env.REDIS_URL).toBe('(secret)');
  });

  it('runs every container as non-root on a read-only root filesystem, without privileges', () => {
    for (const d of byKind(objects, 'Deployment')) {
      const pod = d.spec.template.spec;
      for (const c of containersOf(d)) {
        const where = `${d.metadata.name}/${c.name}`;
        expect(c.securityContext?.runAsNonRoot ?? pod.securityContext?.runAsNonRoot, where).toBe(true);
        expect(c.securityContext?.runAsUser ?? pod.securityContext?.runAsUser, where).toBeGreaterThan(0);
        expect(c.securityContext?.readOnlyRootFilesystem, where).toBe(true);
        expect(c.securityContext?.allowPrivilegeEscalation, where).toBe(false);
        expect(c.securityContext?.capabilities?.drop, where).toEqual(['ALL']);
        expect(pod.securityContext?.seccompProfile?.type, where).toBe('RuntimeDefault');
        expect(c.resources?.requests?.cpu, where).toBeDefined();
        expect(c.resources?.requests?.memory, where).toBeDefined();
        expect(c.resources?.limits?.memory, where).toBeDefined();
        // A read-only root still needs a writable /tmp.
        const tmp = (c.volumeMounts as Obj[]).find((m) => m.mountPath === '/tmp');
        expect(tmp, where).toBeDefined();
        expect((pod.volumes as Obj[]).find((v) => v.name === tmp!.name)?.emptyDir, where).toBeDefined();
      }
      expect(pod.automountServiceAccountToken, d.metadata.name).toBe(false);
    }
  });

  it('mounts the data volume where DATA_DIR points', () => {
    const c = serverContainer(objects);
    expect(c.volumeMounts.map((m: Obj) => m.mountPath)).toContain(serverEnv(objects).DATA_DIR);
  });

  it('has Services whose selectors reach pods and whose ports match container ports', () => {
    const deployments = byKind(objects, 'Deployment');
    for (const svc of byKind(objects, 'Service')) {
      const targets = deployments.filter((d) => matches(svc.spec.selector, d.spec.template.metadata.labels));
      expect(targets, `Service ${svc.metadata.name} selects no Deployment`).toHaveLength(1);
      const container = containersOf(targets[0]!)[0]!;
      for (const p of svc.spec.ports as Obj[]) {
        expect(() => containerPort(container, p.targetPort ?? p.port), `${svc.metadata.name}:${p.name}`).not.toThrow();
      }
    }
    const svc = one(objects, 'Service', APP);
    const c = serverContainer(objects);
    const ports = Object.fromEntries((svc.spec.ports as Obj[]).map((p) => [p.name, p]));
    expect(ports.grpc.port).toBe(containerPort(c, ports.grpc.targetPort));
    expect(ports.grpc.port).toBe(containerPort(c, 'grpc'));
    expect(ports.grpc.appProtocol).toBe('grpc');
    expect(ports.http.port).toBe(containerPort(c, 'http'));
  });

  it('keeps a PodDisruptionBudget and an autoscaler on the server Deployment', () => {
    const labels = server(objects).spec.template.metadata.labels;
    const pdb = one(objects, 'PodDisruptionBudget', APP);
    expect(matches(pdb.spec.selector.matchLabels, labels)).toBe(true);
    expect(pdb.spec.minAvailable ?? 0).toBeGreaterThanOrEqual(1);

    const hpa = one(objects, 'HorizontalPodAutoscaler', APP);
    expect(hpa.spec.scaleTargetRef).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: APP });
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(2);
    expect(hpa.spec.maxReplicas).toBeGreaterThan(hpa.spec.minReplicas);
    // CPU utilisation is relative to requests: without them the HPA cannot act.
    expect(serverContainer(objects).resources.requests.cpu).toBeDefined();
  });

  it('lets only selected peers (never everyone) reach the gRPC port', () => {
    const np = one(objects, 'NetworkPolicy', APP);
    expect(matches(np.spec.podSelector.matchLabels, server(objects).spec.template.metadata.labels)).toBe(true);
    expect(np.spec.policyTypes).toContain('Ingress');
    const grpcPort = containerPort(serverContainer(objects), 'grpc');
    const grpcRules = (np.spec.ingress as Obj[]).filter((r) =>
      (r.ports as Obj[] | undefined)?.some((p) => p.port === grpcPort || p.port === 'grpc'),
    );
    expect(grpcRules.length).toBeGreaterThan(0);
    // A rule without ports would open the gRPC port too.
    for (const r of np.spec.ingress as Obj[]) expect(r.ports?.length, 'ingress rule without ports').toBeGreaterThan(0);
    for (const rule of grpcRules) {
      expect(rule.from?.length).toBeGreaterThan(0);
      for (const peer of rule.from as Obj[]) {
        expect(peer.ipBlock).toBeUndefined();
        expect(Object.keys(peer.podSelector?.matchLabels ?? {}).length, JSON.stringify(peer)).toBeGreaterThan(0);
      }
    }
  });
});

/** The peers allowed on the gRPC port, for the integration-specific assertions below. */
function grpcPeers(objects: Obj[]): Obj[] {
  const np = one(objects, 'NetworkPolicy', APP);
  return (np.spec.ingress as Obj[]).filter((r) => (r.ports as Obj[]).some((p) => p.port === 9191)).flatMap((r) => r.from);
}

describe('overlays/plain-envoy', () => {
  const objects = kustomize('k8s/overlays/plain-envoy');
  const envoy = one(objects, 'Deployment', 'usage-limiter-envoy');
  const envoyContainer = containersOf(envoy)[0]!;
  const args = envoyContainer.args as string[];
  const configPath = args[args.indexOf('--config-path') + 1]!;
  const mount = (envoyContainer.volumeMounts as Obj[]).find((m) => configPath.startsWith(`${m.mountPath}/`))!;
  const volume = (envoy.spec.template.spec.volumes as Obj[]).find((v) => v.name === mount.name)!;
  const cm = one(objects, 'ConfigMap', volume.configMap.name);
  const key = configPath.slice(mount.mountPath.length + 1);
  const config = parseYaml(cm.data[key], 'envoy config');
  const clusters = new Map<string, Obj>(config.static_resources.clusters.map((c: Obj) => [c.name, c]));
  const address = (cluster: string) => {
    const sa = clusters.get(cluster)!.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address;
    return { address: sa.address as string, port: sa.port_value as number };
  };
  const hcm = config.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;

  it('mounts the generated Envoy ConfigMap at the path Envoy is started with', () => {
    expect(cm.data[key]).toBeDefined();
    expect(mount.readOnly).toBe(true);
  });

  it('exposes and probes the Envoy listener port', () => {
    const listenerPort = config.static_resources.listeners[0].address.socket_address.port_value;
    expect(containerPort(envoyContainer, 'http')).toBe(listenerPort);
    expect(envoyContainer.readinessProbe.httpGet.path).toBe('/healthz');
    expect(containerPort(envoyContainer, envoyContainer.readinessProbe.httpGet.port)).toBe(listenerPort);
    // /healthz is answered by Envoy itself, so the probe does not depend on the server or an API key.
    const healthz = hcm.route_config.virtual_hosts[0].routes.find((r: Obj) => r.match.path === '/healthz');
    expect(healthz.direct_response.status).toBe(200);
  });

  it('balances gRPC over the headless Service, and reaches /v1/usage through the ClusterIP Service', () => {
    const authzCluster = hcm.http_filters[0].typed_config.grpc_service.envoy_grpc.cluster_name;
    const grpc = address(authzCluster);
    const [grpcSvcName, grpcNs] = grpc.address.split('.');
    expect(grpcNs).toBe(NAMESPACE);
    const headless = one(objects, 'Service', grpcSvcName!);
    expect(headless.spec.clusterIP).toBe('None');
    expect(headless.spec.ports.map((p: Obj) => p.port)).toContain(grpc.port);
    expect(grpc.port).toBe(containerPort(serverContainer(objects), 'grpc'));

    const usageRoute = hcm.route_config.virtual_hosts[0].routes.find((r: Obj) => r.match.prefix === '/v1/usage');
    const http = address(usageRoute.route.cluster);
    expect(http.address).toBe(`${APP}.${NAMESPACE}.svc.cluster.local`);
    expect(one(objects, 'Service', APP).spec.ports.map((p: Obj) => p.port)).toContain(http.port);
    expect(http.port).toBe(containerPort(serverContainer(objects), 'http'));
  });

  it('admits only the Envoy pods on the gRPC port', () => {
    const peers = grpcPeers(objects);
    expect(peers).toHaveLength(1);
    expect(peers[0]!.namespaceSelector).toBeUndefined();
    expect(matches(peers[0]!.podSelector.matchLabels, envoy.spec.template.metadata.labels)).toBe(true);
  });
});

describe('overlays/envoy-gateway', () => {
  const objects = kustomize('k8s/overlays/envoy-gateway');
  const gateway = one(objects, 'Gateway', APP);
  const policy = one(objects, 'SecurityPolicy', 'usage-limiter-ext-auth');
  const svcPort = (name: string) => one(objects, 'Service', APP).spec.ports.find((p: Obj) => p.name === name).port;

  it('authorises the API route with extAuth.grpc to the server, failing closed', () => {
    expect(policy.spec.targetRefs).toEqual([{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', name: 'api' }]);
    one(objects, 'HTTPRoute', 'api');
    const ext = policy.spec.extAuth;
    expect(ext.http).toBeUndefined();
    expect(ext.grpc.backendRefs).toEqual([{ name: APP, port: svcPort('grpc') }]);
    expect(ext.failOpen).toBe(false);
    expect(ext.timeout).toMatch(/^\d+ms$/);
    expect(parseInt(ext.timeout, 10)).toBeGreaterThan(100);
    // Bodies are never sent to the server.
    expect(ext.bodyToExtAuth).toBeUndefined();
  });

  it('routes /v1/usage to the server HTTP port and keeps the Stripe webhook out of ext_authz', () => {
    const api = one(objects, 'HTTPRoute', 'api');
    const usage = api.spec.rules.find((r: Obj) => r.matches[0].path.value === '/v1/usage');
    expect(usage.backendRefs).toEqual([{ name: APP, port: svcPort('http') }]);
    const webhooks = one(objects, 'HTTPRoute', 'stripe-webhooks');
    expect(webhooks.spec.rules[0].matches[0].path).toEqual({ type: 'Exact', value: '/webhooks/stripe' });
    expect(webhooks.spec.rules[0].backendRefs).toEqual([{ name: APP, port: svcPort('http') }]);
    const targeted = byKind(objects, 'SecurityPolicy').flatMap((p) => p.spec.targetRefs.map((t: Obj) => t.name));
    expect(targeted).not.toContain('stripe-webhooks');
    for (const route of byKind(objects, 'HTTPRoute')) {
      expect(route.spec.parentRefs).toEqual([{ name: gateway.metadata.name }]);
    }
  });

  it('streams access logs to the server through the EnvoyProxy the Gateway uses', () => {
    const ref = gateway.spec.infrastructure.parametersRef;
    expect(ref.group).toBe('gateway.envoyproxy.io');
    const proxy = one(objects, ref.kind, ref.name);
    const sinks = proxy.spec.telemetry.accessLog.settings.flatMap((s: Obj) => s.sinks);
    const als = sinks.filter((s: Obj) => s.type === 'ALS');
    expect(als).toHaveLength(1);
    expect(als[0].als.type).toBe('HTTP');
    expect(als[0].als.logName).toBeTruthy();
    expect(als[0].als.backendRefs).toEqual([{ name: APP, namespace: NAMESPACE, port: svcPort('grpc') }]);
  });

  it('makes the proxies mint request ids and drop forged identity headers', () => {
    const ctp = one(objects, 'ClientTrafficPolicy', 'usage-limiter-edge');
    expect(ctp.spec.targetRefs).toEqual([{ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: gateway.metadata.name }]);
    expect(ctp.spec.headers.requestID).toBe('Generate');
    expect(ctp.spec.headers.earlyRequestHeaders.remove).toEqual(expect.arrayContaining(['x-tenant-id', 'x-tenant-tier']));
  });

  it("admits only this Gateway's Envoy pods on the gRPC port", () => {
    const peers = grpcPeers(objects);
    expect(peers).toHaveLength(1);
    expect(peers[0]!.namespaceSelector.matchLabels).toEqual({ 'kubernetes.io/metadata.name': 'envoy-gateway-system' });
    expect(peers[0]!.podSelector.matchLabels).toEqual({
      'app.kubernetes.io/managed-by': 'envoy-gateway',
      'gateway.envoyproxy.io/owning-gateway-name': gateway.metadata.name,
      'gateway.envoyproxy.io/owning-gateway-namespace': gateway.metadata.namespace,
    });
  });
});

describe('overlays/istio and the mesh config it needs', () => {
  const objects = kustomize('k8s/overlays/istio');
  const policy = one(objects, 'AuthorizationPolicy', 'usage-limiter-ext-authz');
  const telemetry = one(objects, 'Telemetry', 'usage-limiter-settlement');
  const svcPort = (name: string) => one(objects, 'Service', APP).spec.ports.find((p: Obj) => p.name === name).port;
  const meshConfigs = [
    { file: 'istiod-values.yaml', mesh: readYaml('k8s/components/istio/mesh-config/istiod-values.yaml').meshConfig },
    { file: 'istio-operator.yaml', mesh: readYaml('k8s/components/istio/mesh-config/istio-operator.yaml').spec.meshConfig },
  ];

  it('ships an IstioOperator that validates', () => {
    const op = readYaml('k8s/components/istio/mesh-config/istio-operator.yaml');
    expect(() => new IstioOperator(op as any).validate()).not.toThrow();
    // Both ways of installing Istio must declare the same providers.
    expect(meshConfigs[0]!.mesh).toEqual(meshConfigs[1]!.mesh);
  });

  it.each(meshConfigs)('$file declares the ext_authz provider the AuthorizationPolicy names', ({ mesh }) => {
    expect(policy.spec.action).toBe('CUSTOM');
    const provider = (mesh.extensionProviders as Obj[]).find((p) => p.name === policy.spec.provider.name);
    expect(provider, policy.spec.provider.name).toBeDefined();
    const grpc = provider!.envoyExtAuthzGrpc;
    expect(Object.keys(provider!)).toEqual(['name', 'envoyExtAuthzGrpc']);
    expect(grpc.service).toBe(`${APP}.${NAMESPACE}.svc.cluster.local`);
    expect(grpc.port).toBe(svcPort('grpc'));
    expect(grpc.timeout).toMatch(/^\d+(\.\d+)?s$/);
    expect(parseFloat(grpc.timeout)).toBeGreaterThan(0.1);
    expect(grpc.failOpen).toBe(false);
    expect(grpc.statusOnError).toBe('503');
    expect(grpc.includeRequestBodyInCheck).toBeUndefined();
    const known = ['service', 'port', 'timeout', 'failOpen', 'statusOnError', 'clearRouteCache',
      'includeRequestBodyInCheck', 'includeAdditionalHeadersInCheck', 'headersToUpstreamOnAllow'];
    for (const k of Object.keys(grpc)) expect(known, `unknown envoyExtAuthzGrpc field ${k}`).toContain(k);
  });

  it.each(meshConfigs)('$file declares the access-log provider the Telemetry names', ({ mesh }) => {
    const names = telemetry.spec.accessLogging.flatMap((a: Obj) => a.providers.map((p: Obj) => p.name));
    expect(names).toHaveLength(1);
    const provider = (mesh.extensionProviders as Obj[]).find((p) => p.name === names[0]);
    expect(provider?.envoyHttpAls).toEqual({
      service: `${APP}.${NAMESPACE}.svc.cluster.local`,
      port: svcPort('grpc'),
      logName: expect.any(String),
    });
  });

  it('applies ext_authz and the access log on the ingress gateway, except for the Stripe webhook', () => {
    expect(policy.spec.selector.matchLabels).toEqual({ istio: 'ingressgateway' });
    expect(telemetry.spec.selector.matchLabels).toEqual(policy.spec.selector.matchLabels);
    const ops = policy.spec.rules.flatMap((r: Obj) => r.to.map((t: Obj) => t.operation));
    expect(ops.every((o: Obj) => o.notPaths?.includes('/webhooks/stripe'))).toBe(true);
    // Scoped to the API's host, so other apps behind the same gateway are not sent to usage-limiter.
    expect(ops.every((o: Obj) => o.hosts?.length > 0)).toBe(true);
  });

  it('routes /v1/usage and the webhook to the server HTTP port', () => {
    const vs = one(objects, 'VirtualService', 'api');
    const gw = one(objects, 'Gateway', APP);
    expect(vs.spec.gateways).toEqual([gw.metadata.name]);
    expect(vs.spec.hosts).toEqual(gw.spec.servers[0].hosts);
    const dest = (name: string) => vs.spec.http.find((h: Obj) => h.name === name).route[0].destination;
    const serverDest = { host: `${APP}.${NAMESPACE}.svc.cluster.local`, port: { number: svcPort('http') } };
    expect(dest('tenant-usage')).toEqual(serverDest);
    expect(dest('stripe-webhooks')).toEqual(serverDest);
    expect(gw.spec.selector).toEqual(policy.spec.selector.matchLabels);
  });

  it('admits only the ingress gateway pods on the gRPC port', () => {
    const peers = grpcPeers(objects);
    expect(peers).toHaveLength(1);
    expect(peers[0]!.namespaceSelector.matchLabels).toEqual({ 'kubernetes.io/metadata.name': 'istio-system' });
    expect(peers[0]!.podSelector.matchLabels).toEqual(policy.spec.selector.matchLabels);
  });
});

describe('k8s/README.md', () => {
  it('documents how to apply each overlay', () => {
    const readme = readFileSync(repoPath('k8s/README.md'), 'utf8');
    for (const overlay of ['plain-envoy', 'envoy-gateway', 'istio']) {
      expect(readme).toContain(`kubectl apply -k k8s/overlays/${overlay}`);
    }
  });
});

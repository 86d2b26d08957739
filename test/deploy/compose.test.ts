// docker compose is how a newcomer first meets the whole path (client -> Envoy -> Check -> upstream). There
// is no Docker engine here, so the wiring is checked statically: the compose file against envoy/envoy.yaml
// and the server's environment contract, and the Dockerfile against what the compose file relies on.
import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { readYaml, repoPath, type Obj } from './support/repo.js';

const compose = readYaml('docker-compose.yml');
const envoy = readYaml('envoy/envoy.yaml');
const services = compose.services as Record<string, Obj>;
const limiter = services['usage-limiter']!;
const limiterEnv = limiter.environment as Record<string, string>;

// The server's documented environment (src/config/env.ts and the OTEL_* standard variables).
const KNOWN_ENV = new Set([
  'GRPC_HOST', 'GRPC_PORT', 'HTTP_HOST', 'HTTP_PORT', 'DATABASE_URL', 'DATA_DIR', 'REDIS_URL',
  'REDIS_KEY_PREFIX', 'LOG_LEVEL', 'APPLY_ON_START', 'MIGRATE_ON_START', 'CHECK_TIMEOUT_MS',
  'KEY_CACHE_TTL_SECONDS', 'KEY_CACHE_NEGATIVE_TTL_SECONDS', 'KEY_CACHE_MAX_ENTRIES', 'DIRECTORY_POLL_MS',
  'STRIPE_SECRET_KEY', 'STRIPE_WEBHOOK_SECRET', 'STRIPE_API_BASE', 'NODE_ENV', 'NODE_OPTIONS',
  'USAGE_API_TRUST_TENANT_HEADER', 'ALERT_WEBHOOK_URL', 'ALERT_WEBHOOK_SECRET',
]);

/** "127.0.0.1:9191:9191" / "3000:3000" -> { host, container }. */
function parsePort(spec: string | Obj): { host: number; container: number; ip?: string } {
  if (typeof spec !== 'string') return { host: Number(spec.published), container: Number(spec.target), ip: spec.host_ip };
  const parts = spec.split(':');
  const container = Number(parts.at(-1));
  const host = Number(parts.at(-2) ?? container);
  return parts.length === 3 ? { host, container, ip: parts[0] } : { host, container };
}

const clusters = new Map<string, Obj>(envoy.static_resources.clusters.map((c: Obj) => [c.name, c]));
const endpointOf = (clusterName: string) => {
  const sa = clusters.get(clusterName)!.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address;
  return { host: sa.address as string, port: sa.port_value as number };
};
const hcm = envoy.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
const extAuthzCluster = hcm.http_filters.find((f: Obj) => f.name === 'envoy.filters.http.ext_authz').typed_config
  .grpc_service.envoy_grpc.cluster_name as string;
const routeCluster = (prefixOrPath: string) =>
  hcm.route_config.virtual_hosts[0].routes.find(
    (r: Obj) => r.match.prefix === prefixOrPath || r.match.path === prefixOrPath,
  ).route.cluster as string;

describe('docker-compose.yml', () => {
  it('runs Envoy, the server, Redis, Postgres and a demo upstream', () => {
    expect(Object.keys(services).sort()).toEqual(['demo-upstream', 'envoy', 'postgres', 'redis', 'usage-limiter']);
  });

  it('publishes Envoy on port 3000, where the seed transcript sends its curl commands', () => {
    const ports = (services.envoy!.ports as string[]).map(parsePort);
    expect(ports).toContainEqual({ host: 3000, container: 3000 });
    const listenerPort = envoy.static_resources.listeners[0].address.socket_address.port_value;
    expect(listenerPort).toBe(3000);
  });

  it('keeps Envoy admin and the server ports off the public interfaces', () => {
    const exposed = Object.entries(services).flatMap(([name, s]) =>
      ((s.ports ?? []) as string[]).map((p) => ({ name, ...parsePort(p) })),
    );
    for (const p of exposed.filter((e) => e.host !== 3000)) expect(p.ip, `${p.name}:${p.host}`).toBe('127.0.0.1');
  });

  it('mounts envoy/envoy.yaml where the Envoy command reads it, read-only', () => {
    const command = services.envoy!.command as string[];
    const configPath = command[command.indexOf('--config-path') + 1];
    expect(services.envoy!.volumes).toContain(`./envoy/envoy.yaml:${configPath}:ro`);
    expect(services.envoy!.image).toMatch(/^envoyproxy\/envoy:v\d+\.\d+/);
  });

  it("points Envoy's clusters at compose services on the ports those services listen on", () => {
    const grpc = endpointOf(extAuthzCluster);
    expect(grpc.host).toBe('usage-limiter');
    expect(grpc.port).toBe(Number(limiterEnv.GRPC_PORT));

    const http = endpointOf(routeCluster('/v1/usage'));
    expect(http.host).toBe('usage-limiter');
    expect(http.port).toBe(Number(limiterEnv.HTTP_PORT));
    expect(endpointOf(routeCluster('/webhooks/stripe'))).toEqual(http);

    const upstream = endpointOf(routeCluster('/'));
    expect(Object.keys(services)).toContain(upstream.host);
    expect(upstream.port).toBe(Number((services[upstream.host]!.environment as Obj).PORT));
  });

  it('binds the server on all interfaces so Envoy can reach it', () => {
    expect(limiterEnv.GRPC_HOST).toBe('0.0.0.0');
    expect(limiterEnv.HTTP_HOST).toBe('0.0.0.0');
  });

  it('configures the server with Postgres, Redis, migrations and the demo tenants', () => {
    for (const name of Object.keys(limiterEnv)) {
      expect(KNOWN_ENV.has(name) || name.startsWith('OTEL_'), `unknown variable ${name}`).toBe(true);
    }
    const pg = services.postgres!.environment as Record<string, string>;
    const db = new URL(limiterEnv.DATABASE_URL!);
    expect(db.protocol).toBe('postgres:');
    expect(db.hostname).toBe('postgres');
    expect(decodeURIComponent(db.username)).toBe(pg.POSTGRES_USER);
    expect(decodeURIComponent(db.password)).toBe(pg.POSTGRES_PASSWORD);
    expect(db.pathname).toBe(`/${pg.POSTGRES_DB}`);

    const redis = new URL(limiterEnv.REDIS_URL!);
    expect(redis.protocol).toBe('redis:');
    expect(redis.hostname).toBe('redis');

    expect(limiterEnv.MIGRATE_ON_START).toBe('true');
    // The image's WORKDIR is /app and it copies config/ there (checked below).
    expect(limiterEnv.APPLY_ON_START).toBe('/app/config/demo-tenants.yaml');
    expect(Number(limiterEnv.CHECK_TIMEOUT_MS)).toBeGreaterThan(0);
  });

  it.skipIf(!existsSync(repoPath('config/demo-tenants.yaml')))(
    "applies a demo file that holds the seed transcript's keys",
    () => {
      const demo = readFileSync(repoPath('config/demo-tenants.yaml'), 'utf8');
      for (const s of ['tenant_C_789', 'vk_live_FREE_PLAN_KEY', 'tenant_E_111', 'vk_live_PRO_ALMOST_FULL_KEY']) {
        expect(demo).toContain(s);
      }
    },
  );

  it('starts each service only after what it needs is healthy', () => {
    const healthy = (svc: string) =>
      Object.fromEntries(Object.entries(services[svc]!.depends_on as Obj).map(([k, v]) => [k, (v as Obj).condition]));
    expect(healthy('envoy')).toEqual({ 'usage-limiter': 'service_healthy', 'demo-upstream': 'service_healthy' });
    expect(healthy('usage-limiter')).toEqual({ postgres: 'service_healthy', redis: 'service_healthy' });
  });

  it('gives every service a health check', () => {
    for (const [name, svc] of Object.entries(services)) {
      const test = svc.healthcheck?.test;
      expect(Array.isArray(test) && test.length > 1, name).toBe(true);
      expect(['CMD', 'CMD-SHELL'], name).toContain(test[0]);
    }
  });

  it("checks the server's readiness on its HTTP port with node (the slim image has no curl)", () => {
    const test = (limiter.healthcheck.test as string[]).join(' ');
    expect(test).toMatch(/^CMD node -e /);
    expect(test).toContain(`http://127.0.0.1:${limiterEnv.HTTP_PORT}/readyz`);
  });

  it('runs the server with a read-only root filesystem, writable /tmp and a data volume', () => {
    expect(limiter.read_only).toBe(true);
    expect(limiter.tmpfs).toContain('/tmp');
    expect(limiter.volumes).toContain(`usage-limiter-data:${limiterEnv.DATA_DIR}`);
    expect(Object.keys(compose.volumes)).toContain('usage-limiter-data');
    expect(limiter.build.dockerfile).toBe('Dockerfile');
  });

  it('serves the demo upstream from deploy/demo-upstream, which exists', () => {
    const upstream = services['demo-upstream']!;
    const mount = (upstream.volumes as string[]).find((v) => v.startsWith('./deploy/demo-upstream/'))!;
    expect(existsSync(repoPath(mount.split(':')[0]!))).toBe(true);
    expect((upstream.command as string[]).join(' ')).toContain(mount.split(':')[1]);
  });
});

describe('Dockerfile', () => {
  const text = readFileSync(repoPath('Dockerfile'), 'utf8');
  const lines = text.split('\n').filter((l) => !l.trimStart().startsWith('#'));
  const stages = lines.filter((l) => /^FROM\s/i.test(l));
  const runtime = lines.slice(lines.findIndex((l) => /^FROM .* AS runtime$/i.test(l))).join('\n');

  it('builds in one stage and ships only production dependencies and built output in another', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    expect(text).toMatch(/ARG NODE_IMAGE=node:20-[a-z]+-slim/);
    expect(text).toMatch(/RUN npm ci\b/);
    expect(text).toMatch(/RUN npm run build/);
    expect(text).toMatch(/npm ci --omit=dev/);
    for (const dir of ['dist', 'bin', 'drizzle', 'config']) expect(runtime).toMatch(new RegExp(`COPY .*\\b${dir}\\b`));
    expect(runtime).not.toMatch(/COPY (--from=build )?\/?app\/src|COPY src/);
  });

  it('copies into the build stage every file `npm run build` reads', () => {
    const pkg = JSON.parse(readFileSync(repoPath('package.json'), 'utf8')) as { scripts: Record<string, string> };
    const build = lines.slice(0, lines.findIndex((l) => /^FROM .* AS prod-deps$/i.test(l))).join('\n');
    const copied = [...build.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1]!.split(/\s+/));
    // Paths named in the build script (tsconfig files, helper scripts) and the sources tsc compiles.
    const needed = [...pkg.scripts.build!.matchAll(/[\w./-]+\.(?:json|mjs|js|ts)\b/g)].map((m) => m[0]).concat('src/');
    for (const file of needed) {
      const top = file.split('/')[0]!;
      expect(copied.includes(file) || copied.includes(top), file).toBe(true);
    }
  });

  it('puts the files where docker-compose.yml expects them', () => {
    expect(runtime).toMatch(/^WORKDIR \/app$/m);
    expect(runtime).toMatch(/COPY config \.\/config/);
    expect(runtime).toContain(`DATA_DIR=${limiterEnv.DATA_DIR}`);
  });

  it('runs as a non-root user with a node-based HEALTHCHECK on /healthz', () => {
    const user = runtime.match(/^USER (\S+)/m)?.[1];
    expect(user).toBeDefined();
    expect(user).not.toMatch(/^(root|0)(:|$)/);
    expect(runtime).toMatch(/HEALTHCHECK[\s\S]*CMD \["node", "-e", "fetch\('http:\/\/127\.0\.0\.1:'.*\/healthz'\)/);
    expect(runtime).toMatch(/ENTRYPOINT \[.*"node", "bin\/usage-limiter\.js"\]/);
    expect(runtime).toMatch(/CMD \["serve"\]/);
  });

  it('keeps the build context small without hiding what the build needs', () => {
    const ignored = readFileSync(repoPath('.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    expect(ignored).toEqual(expect.arrayContaining(['node_modules', 'dist', '.git', '.data']));
    for (const needed of ['src', 'bin', 'drizzle', 'config', 'package.json', 'package-lock.json', 'tsconfig.json']) {
      expect(ignored, needed).not.toContain(needed);
    }
  });
});

// The container and its neighbours, hardened (README "Threat model"): the image runs as a fixed non-root user
// that cannot change its own code, on a read-only root with no capabilities, in docker compose and in every
// kustomize target; the listeners are opened to the network only where a fence stands in front of them (the
// server itself defaults to loopback); and what is installed is exactly what the lock file pins.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { KUSTOMIZE_TARGETS, byKind, imageRuntimeStage, kustomize, readYaml, repoPath, type Obj } from './support/repo.js';

const dockerfile = readFileSync(repoPath('Dockerfile'), 'utf8');
const runtime = imageRuntimeStage();
const compose = readYaml('docker-compose.yml');
const limiter = compose.services['usage-limiter'] as Obj;

describe('the image', () => {
  it('runs as a fixed numeric non-root user, the one Kubernetes expects', () => {
    const user = /^USER (\d+):(\d+)$/m.exec(runtime);
    expect(user, 'USER uid:gid, numeric (runAsNonRoot can only verify a numeric user)').not.toBeNull();
    expect(Number(user![1])).toBeGreaterThan(0);
    const deployment = byKind(kustomize('k8s/base'), 'Deployment').find((d) => d.metadata.name === 'usage-limiter')!;
    const pod = deployment.spec.template.spec.securityContext;
    expect([pod.runAsUser, pod.runAsGroup]).toEqual([Number(user![1]), Number(user![2])]);
  });

  it('leaves its own code owned by root: the app user can change nothing but /data and /tmp', () => {
    const copies = runtime.split('\n').filter((l) => /^COPY /.test(l));
    expect(copies.length).toBeGreaterThan(3);
    for (const line of copies) expect(line, line).not.toMatch(/--chown|--chmod/);
    expect(runtime).toMatch(/chown usage-limiter:usage-limiter \/data/);
  });

  it('listens on all interfaces inside the container only because it says so (the server defaults to loopback)', () => {
    expect(runtime).toMatch(/^\s*GRPC_HOST=0\.0\.0\.0 \\$/m);
    expect(runtime).toMatch(/^\s*HTTP_HOST=0\.0\.0\.0 \\$/m);
  });

  it('installs exactly what the lock file says, in every stage and in CI', () => {
    const installs = dockerfile.split('\n').filter((l) => /\bnpm (ci|install|i)\b/.test(l));
    expect(installs.length).toBeGreaterThanOrEqual(2);
    for (const l of installs) expect(l, l).toMatch(/\bnpm ci\b/);
    expect(readFileSync(repoPath('.ci/run'), 'utf8')).toMatch(/^npm ci\b/m);
  });
});

describe('docker compose', () => {
  it('runs the server on a read-only root with a tmpfs, without capabilities or privilege escalation', () => {
    expect(limiter.read_only).toBe(true);
    expect(limiter.tmpfs).toContain('/tmp');
    expect(limiter.cap_drop).toEqual(['ALL']);
    expect(limiter.security_opt).toContain('no-new-privileges:true');
    expect(limiter.user ?? 'image default').toBe('image default'); // the image's USER, not root
  });

  it('opens the listeners inside the container and publishes them on the host loopback only', () => {
    expect(limiter.environment.GRPC_HOST).toBe('0.0.0.0');
    expect(limiter.environment.HTTP_HOST).toBe('0.0.0.0');
    for (const p of limiter.ports as string[]) expect(p).toMatch(/^127\.0\.0\.1:/);
  });
});

describe.each(KUSTOMIZE_TARGETS)('%s', (target) => {
  const objects = kustomize(target);

  it('opens the listeners inside the pod', () => {
    const cm = byKind(objects, 'ConfigMap').find((c) => String(c.metadata.name).startsWith('usage-limiter-config'));
    expect(cm?.data?.GRPC_HOST).toBe('0.0.0.0');
    expect(cm?.data?.HTTP_HOST).toBe('0.0.0.0');
  });

  it('lets only selected pods reach the gRPC port (Check and the access-log stream): no address ranges, no "everyone"', () => {
    const policies = byKind(objects, 'NetworkPolicy').filter((p) => p.spec.podSelector?.matchLabels?.['app.kubernetes.io/name'] === 'usage-limiter');
    expect(policies).toHaveLength(1);
    const spec = policies[0]!.spec;
    expect(spec.policyTypes).toContain('Ingress');
    const grpcRules = (spec.ingress as Obj[]).filter((r) => (r.ports ?? []).some((p: Obj) => p.port === 9191 || p.port === 'grpc'));
    expect(grpcRules.length).toBeGreaterThan(0);
    for (const rule of grpcRules) {
      expect(rule.from?.length, 'a rule without `from` admits everyone').toBeGreaterThan(0);
      for (const peer of rule.from as Obj[]) {
        expect(peer.ipBlock, 'an ipBlock admits whatever sits in the range').toBeUndefined();
        expect(peer.podSelector ?? peer.namespaceSelector).toBeDefined();
        // An empty selector selects every pod (or namespace).
        const selectors = [peer.podSelector, peer.namespaceSelector].filter(Boolean) as Obj[];
        for (const s of selectors) expect(Object.keys(s.matchLabels ?? {}).length + (s.matchExpressions ?? []).length).toBeGreaterThan(0);
      }
    }
    // Ingress rules that name no port open every port: there are none.
    for (const rule of spec.ingress as Obj[]) expect(rule.ports?.length, JSON.stringify(rule)).toBeGreaterThan(0);
  });
});

describe('the lock file', () => {
  const pkg = JSON.parse(readFileSync(repoPath('package.json'), 'utf8')) as Record<string, Record<string, string>>;
  const lock = JSON.parse(readFileSync(repoPath('package-lock.json'), 'utf8')) as {
    lockfileVersion: number;
    packages: Record<string, { version?: string; integrity?: string; link?: boolean; dependencies?: Record<string, string>; devDependencies?: Record<string, string> }>;
  };

  it('pins every package to one version with an integrity hash, and matches package.json', () => {
    expect(lock.lockfileVersion).toBeGreaterThanOrEqual(2);
    const root = lock.packages['']!;
    expect(root.dependencies).toEqual(pkg.dependencies);
    expect(root.devDependencies).toEqual(pkg.devDependencies);
    const entries = Object.entries(lock.packages).filter(([p, e]) => p !== '' && !e.link);
    expect(entries.length).toBeGreaterThan(100);
    for (const [p, e] of entries) {
      expect(e.version, p).toMatch(/^\d+\.\d+\.\d+/);
      expect(e.integrity, p).toMatch(/^sha(256|384|512)-/);
    }
  });
});

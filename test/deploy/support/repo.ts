// Shared by the deploy tests: where the artifacts are, and how to read them the way their tools do.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, parseDocument } from 'yaml';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export const repoPath = (...parts: string[]) => path.join(REPO_ROOT, ...parts);

export type Obj = Record<string, any>;

/** Parses one YAML document, failing loudly on YAML errors (duplicate keys, bad indentation...). */
export function readYaml(rel: string): Obj {
  return parseYaml(readFileSync(repoPath(rel), 'utf8'), rel);
}

export function parseYaml(text: string, origin: string): Obj {
  const doc = parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new Error(`${origin}: ${doc.errors.map((e) => e.message).join('; ')}`);
  }
  return doc.toJS() as Obj;
}

/** Every kustomize entry point we ship: the base alone and each proxy integration on top of it. */
export const KUSTOMIZE_TARGETS = [
  'k8s/base',
  'k8s/overlays/plain-envoy',
  'k8s/overlays/envoy-gateway',
  'k8s/overlays/istio',
] as const;

const rendered = new Map<string, Obj[]>();

/** Renders a kustomization exactly as `kubectl apply -k` would and returns its objects. */
export function kustomize(rel: string): Obj[] {
  const cached = rendered.get(rel);
  if (cached) return cached;
  const out = execFileSync('kubectl', ['kustomize', repoPath(rel)], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 20_000,
  });
  const objects = parseAllDocuments(out).map((d, i) => {
    if (d.errors.length > 0) throw new Error(`${rel} document ${i}: ${d.errors[0]?.message}`);
    return d.toJS() as Obj;
  });
  rendered.set(rel, objects);
  return objects;
}

export const byKind = (objects: readonly Obj[], kind: string) => objects.filter((o) => o.kind === kind);

export function one(objects: readonly Obj[], kind: string, name: string): Obj {
  const found = objects.filter((o) => o.kind === kind && o.metadata?.name === name);
  if (found.length !== 1) throw new Error(`expected exactly one ${kind}/${name}, found ${found.length}`);
  return found[0]!;
}

/** Envoy bootstraps embedded in ConfigMaps (any data value that parses to a config with static_resources). */
export function envoyConfigsInConfigMaps(objects: readonly Obj[]): Array<{ name: string; key: string; config: Obj }> {
  const found: Array<{ name: string; key: string; config: Obj }> = [];
  for (const cm of byKind(objects, 'ConfigMap')) {
    for (const [key, value] of Object.entries<string>(cm.data ?? {})) {
      if (!/\.ya?ml$/.test(key)) continue;
      const parsed = parseYaml(value, `ConfigMap ${cm.metadata.name} ${key}`);
      if (parsed && typeof parsed === 'object' && ('static_resources' in parsed || 'staticResources' in parsed)) {
        found.push({ name: cm.metadata.name as string, key, config: parsed });
      }
    }
  }
  return found;
}

/** The Dockerfile's runtime stage (from its `FROM … AS runtime` to the end): what the shipped image runs. */
export function imageRuntimeStage(): string {
  const dockerfile = readFileSync(repoPath('Dockerfile'), 'utf8');
  const at = dockerfile.search(/^FROM \S+ AS runtime$/m);
  if (at < 0) throw new Error('Dockerfile: no `FROM … AS runtime` stage');
  return dockerfile.slice(at);
}

/** The NODE_OPTIONS the runtime image sets (its ENV), as a list of flags. */
export function imageNodeOptions(): string[] {
  const value = /^\s*NODE_OPTIONS=("[^"]*"|\S+)/m.exec(imageRuntimeStage())?.[1]?.replace(/"/g, '');
  // Found nothing: fail, rather than let the deploy test compare against no flags and the bench run without them.
  if (value === undefined) throw new Error('Dockerfile: no NODE_OPTIONS in the ENV of the runtime stage');
  return value.split(' ').filter(Boolean);
}

/** Where Debian's libjemalloc2 (the package the image installs) put its library here, if it is installed. */
export function debianJemalloc(): string | undefined {
  try {
    return execFileSync('dpkg', ['-L', 'libjemalloc2'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split('\n')
      .find((l) => l.endsWith('/libjemalloc.so.2'));
  } catch {
    return undefined; // not a Debian machine, or the package is not installed
  }
}

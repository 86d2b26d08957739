# syntax=docker/dockerfile:1
# usage-limiter: Envoy ext_authz server. Multi-stage: compile with dev dependencies, ship only production
# dependencies and the compiled output on a slim Node runtime, as a non-root user.

ARG NODE_IMAGE=node:20-bookworm-slim

# ---- build: TypeScript -> dist/ -------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: the package's `prepare` hook builds, but the sources are not copied yet (copying them
# first would bust the dependency layer cache on every code change). We build explicitly below.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts ./scripts
COPY src ./src
COPY bin ./bin
RUN npm run build

# ---- prod-deps: node_modules without devDependencies -----------------------------------------------------
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

# ---- runtime ---------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
# tini reaps zombies and forwards SIGTERM so the server can drain (Node as PID 1 ignores default signals).
# jemalloc replaces glibc's malloc (LD_PRELOAD below): under load glibc kept about 200 MB of freed native
# memory (HTTP/2 sessions, sockets) resident, more after an overload; jemalloc returns it (README, "Memory and
# V8 flags"). The link gives it one path on every architecture.
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini libjemalloc2 \
  && rm -rf /var/lib/apt/lists/* \
  && ln -s "$(dpkg -L libjemalloc2 | grep '/libjemalloc\.so\.2$')" /usr/local/lib/libjemalloc.so.2 \
  && test -e /usr/local/lib/libjemalloc.so.2 \
  && groupadd --system --gid 10001 usage-limiter \
  && useradd --system --uid 10001 --gid usage-limiter --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin usage-limiter \
  && mkdir -p /data \
  && chown usage-limiter:usage-limiter /data

WORKDIR /app
# NODE_OPTIONS: 32 MB semi-spaces let a Check's objects die young instead of being promoted while it waits for
# Redis: about a quarter less CPU per Check than V8's default, measured (README, "Memory and V8 flags"). That
# default is 16 MB on a large machine and much less in a small container (Node sizes V8's heap by the memory
# limit it sees). Setting NODE_OPTIONS replaces this; keep the flag (k8s/base does).
ENV NODE_ENV=production \
    GRPC_HOST=0.0.0.0 \
    GRPC_PORT=9191 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8081 \
    DATA_DIR=/data \
    LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 \
    NODE_OPTIONS=--max-semi-space-size=32

# Owned by root and read-only to the app user: the root filesystem can be mounted read-only.
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY drizzle ./drizzle
COPY config ./config

# Embedded PGlite data (only when DATABASE_URL is unset). Mount a volume here; /tmp needs a tmpfs when the
# root filesystem is read-only.
VOLUME ["/data"]

USER 10001:10001
EXPOSE 9191 8081

# Slim images have no curl: ask Node itself. Liveness only (/healthz); orchestrators use /readyz for traffic.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.HTTP_PORT||8081)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

ENTRYPOINT ["/usr/bin/tini", "--", "node", "bin/usage-limiter.js"]
CMD ["serve"]

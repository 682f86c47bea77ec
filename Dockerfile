# syntax=docker/dockerfile:1
# The mtlsd container image: build the JavaScript in one stage, run it with production dependencies only.
#
#   docker build -t mtlsd:0.1.0 .
#   docker run --read-only -v ./certs:/var/run/mtlsd:ro -v ./mtlsd.yaml:/etc/mtlsd/mtlsd.yaml:ro mtlsd:0.1.0
#
# Node.js 26 is the Active LTS line (since 2026-10-28); mtlsd's own tests run on it.
ARG NODE_MAJOR=26

# --- build: the TypeScript compiler is a dev dependency, so it lives only here.
FROM node:${NODE_MAJOR}-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# --ignore-scripts: the `node` dev dependency would download a second Node runtime (the image has one), and
# `prepare` would compile before the sources are here; the build runs explicitly below instead.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# --- runtime: dist/, the production dependencies and the example config; no compiler, no tests, no sources.
FROM node:${NODE_MAJOR}-slim AS runtime
ENV NODE_ENV=production \
    MTLSD_CONFIG=/etc/mtlsd/mtlsd.yaml
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /src/dist ./dist
COPY config ./config
# The Workload API client's protocol definition, read at run time (dist/credentials/ → ../../proto).
COPY proto ./proto
COPY deploy/docker/healthcheck.mjs ./healthcheck.mjs
# Everything above is owned by root and read-only to mtlsd. mtlsd writes nothing but stdout, so the image
# runs with a read-only root file system (docker run --read-only, readOnlyRootFilesystem: true).
# A numeric user, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001
# inbound mTLS, outbound for the app, admin (/healthz /readyz /metrics /status).
EXPOSE 15006 15001 15000
# The admin listener is on 127.0.0.1:15000 by default, which this check (run inside the container) reaches.
# The slim image has no curl: a tiny Node script asks /healthz, exit 0 on 200 and 1 on anything else.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "/app/healthcheck.mjs"]
# Exec form: node is PID 1 and receives SIGTERM itself (no shell in between), and `mtlsd run` handles it by
# draining. mtlsd starts no child processes, so there are no zombies to reap and no init is needed.
ENTRYPOINT ["node", "/app/dist/cli/main.js"]
CMD ["run"]
